"""Compute backends: map independent work units (micrographs, particle chunks) over workers.

One small interface for jobs and stages::

    with get_backend(spec) as backend:
        results = backend.map(fn, items, desc="ctf", progress=callback)

``results`` is in input order; ``fn`` and ``items`` must be picklable (``fn`` a
module-level function or a ``functools.partial`` of one). ``progress(done, total)``
is called as units finish. A task that raises :class:`cryolens.errors.InputError`
surfaces as that same error (same message), so the CLI exits with status 2.

``backend.map_shared(fn, shared, items)`` calls ``fn(shared, item)`` for every item, sending
``shared`` (e.g. an iteration's references) to each worker once where the backend allows:
in memory for in-process and threads, one scatter per worker for Dask; local processes
receive it with every unit. ``backend.n_workers`` is how many units run at once.

Backends (``get_backend(spec)``):

- ``None`` / ``"local"`` / ``"local:N"`` -> :class:`LocalProcesses` (default; a
  process pool, N workers, default one per core)
- ``"inprocess"`` -> :class:`InProcess` (tiny work, debugging, one GPU)
- ``"threads"`` / ``"threads:N"`` -> :class:`cryolens.compute.threads.Threads` (N units at once
  in threads of this process, one torch thread each; default one per core)
- ``"tcp://host:port"`` (any ``scheme://`` address) -> :class:`Dask` (a running
  ``distributed`` scheduler)
- ``"profile:NAME"`` or ``"NAME"`` -> :class:`JobQueue` (a dask-jobqueue cluster
  from a run profile, see :mod:`cryolens.compute.profiles`)

``retries`` bounds how often a unit is re-run after its worker *died* (killed,
out of memory, node lost); ordinary exceptions are not retried locally.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from cryolens.errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class BackendError(InputError):
    """A compute backend failed in a way the user can act on (workers dying, scheduler unreachable)."""


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def default_spec(backend: str | None, workers: int | None, n_units: int, device: str) -> str:
    """The backend spec a per-micrograph job uses for ``--backend``/``--j``: the one given; else on the CPU
    ``threads:N`` (N = cores, at most one per unit), or ``local:N`` processes when ``workers`` is given;
    ``inprocess`` on a GPU (one process owns it) or for a single unit.

    Raises:
        InputError: ``workers`` together with ``backend`` (``--j`` only sizes the local backend).
    """
    if backend is not None:
        if workers is not None:
            raise InputError(f"--j {workers} applies to the local backend only; drop it or drop --backend.")
        return backend.strip()
    n = max(1, min(workers or cpu_count(), n_units))
    if str(device).startswith("cuda") or n == 1:
        return "inprocess"
    return f"threads:{n}" if workers is None else f"local:{n}"


class Backend:
    """Maps a picklable function over picklable items; use as a context manager."""

    name = "backend"
    n_workers = 1
    #: ``shared`` of :meth:`map_shared` crosses a process boundary: once per worker (``"worker"``), with
    #: every unit (``"unit"``), or not at all (``"none"``, same memory).
    shared_copies = "none"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str | None = None,
            progress: Progress | None = None, retries: int = 2) -> list:
        raise NotImplementedError

    def map_shared(self, fn: Callable[[Any, Any], Any], shared: Any, items: Iterable[Any], *,
                   desc: str | None = None, progress: Progress | None = None, retries: int = 2) -> list:
        """``[fn(shared, item) for item in items]`` on the workers, ``shared`` sent once per worker where
        the backend allows (see the module docstring); otherwise as :meth:`map`."""
        return self.map(functools.partial(fn, shared), items, desc=desc, progress=progress, retries=retries)

    def close(self) -> None:
        """Release workers; the backend cannot be used afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# --------------------------------------------------------------------------- in-process
class InProcess(Backend):
    """Runs every unit in the calling process, one after the other."""

    name = "inprocess"

    def map(self, fn, items, *, desc=None, progress=None, retries=2) -> list:
        items = list(items)
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if progress is not None:
                progress(i + 1, len(items))
        return out


# --------------------------------------------------------------------------- local pool
def _init_worker(threads: int) -> None:
    # Before torch is imported in the worker: no oversubscription of the cores.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import sys
    if "torch" in sys.modules:  # pragma: no cover - preloaded interpreters only
        sys.modules["torch"].set_num_threads(threads)


def _run_marked(fn, item, marker: str):
    """Run one unit in a worker; the marker file exists exactly while the unit runs."""
    with open(marker, "w"):
        pass
    try:
        return fn(item)
    finally:
        try:
            os.unlink(marker)
        except OSError:
            pass


def _describe_exit(codes: Sequence[int]) -> str:
    parts = []
    for c in codes:
        if c < 0:
            try:
                name = signal.Signals(-c).name
            except ValueError:
                name = f"signal {-c}"
            parts.append(name + (", often the out-of-memory killer" if -c == signal.SIGKILL else ""))
        else:
            parts.append(f"exit code {c}")
    return "; ".join(dict.fromkeys(parts)) or "unknown cause"


class LocalProcesses(Backend):
    """A pool of local worker processes (spawned, so torch is safe).

    A worker that dies mid-unit breaks the pool; the units that were running are
    retried in a fresh pool, at most ``retries`` times each, then a
    :class:`BackendError` names them and the cause.
    """

    def __init__(self, n_workers: int | None = None, *, threads_per_worker: int | None = None,
                 start_method: str | None = None):
        cores = cpu_count()
        self.n_workers = max(1, int(n_workers or cores))
        self.threads_per_worker = max(1, threads_per_worker or cores // self.n_workers)
        # spawn, not fork (unsafe with torch's threads)
        self.start_method = start_method or "spawn"
        self.name = f"local:{self.n_workers}"
        self.shared_copies = "unit"
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is not None and getattr(self._pool, "_broken", False):
            log.warning("local pool found broken while idle (%s); starting a fresh one", self._pool._broken)
            self._drop_pool()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.n_workers, mp_context=multiprocessing.get_context(self.start_method),
                initializer=_init_worker, initargs=(self.threads_per_worker,))
            # Start all workers at the first submit: CPython 3.11 spawns them lazily inside
            # submit(), racing the pool's own clean-up when a worker dies ("dictionary
            # changed size during iteration", then a hang at exit).
            if hasattr(self._pool, "_safe_to_dynamically_spawn_children"):
                self._pool._safe_to_dynamically_spawn_children = False
        return self._pool

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, fn, items, *, desc=None, progress=None, retries=2) -> list:
        items = list(items)
        n = len(items)
        results: list = [None] * n
        pending = set(range(n))
        attempts = [0] * n
        done = 0
        tmp = tempfile.mkdtemp(prefix="cryolens-map-")
        markers = [os.path.join(tmp, str(i)) for i in range(n)]
        try:
            while pending:
                pool = self._get_pool()
                futs = {}
                procs: dict = {}  # worker processes seen, for their exit codes only
                broken = False
                for i in sorted(pending):
                    try:
                        futs[pool.submit(_run_marked, fn, items[i], markers[i])] = i
                    except BrokenProcessPool:  # a unit already killed its worker
                        broken = True
                        break
                    finally:
                        procs.update(getattr(pool, "_processes", None) or {})
                for f in as_completed(futs):
                    i = futs[f]
                    try:
                        results[i] = f.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except BaseException:
                        for g in futs:
                            g.cancel()
                        raise
                    pending.discard(i)
                    done += 1
                    if progress is not None:
                        progress(done, n)
                if not broken:
                    continue
                codes = [p.exitcode for p in procs.values() if p.exitcode not in (None, 0)]
                # the pool terminates the surviving workers itself (SIGTERM, 255): not the cause
                codes = [c for c in codes if c not in (-signal.SIGTERM, 255)] or codes
                self._drop_pool()
                suspects = [i for i in sorted(pending) if os.path.exists(markers[i])] or sorted(pending)
                for i in suspects:
                    attempts[i] += 1
                    if os.path.exists(markers[i]):
                        os.unlink(markers[i])
                log.warning("%s: a worker process died (%s) while running unit(s) %s; retrying in a fresh pool",
                            desc or "map", _describe_exit(codes), suspects)
                failed = [i for i in suspects if attempts[i] > retries]
                if failed:
                    which = ", ".join(str(i) for i in failed[:5]) + (" ..." if len(failed) > 5 else "")
                    raise BackendError(
                        f"{desc or 'work'}: a worker process died ({_describe_exit(codes)}) while running "
                        f"unit {which} of {n}, {attempts[failed[0]]} times (retries={retries}); "
                        f"use fewer workers or give them more memory")
            return results
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        self._drop_pool()


# --------------------------------------------------------------------------- dask
class _RaisedInputError:
    """An InputError caught on a Dask worker (returned, so Dask does not retry it)."""

    def __init__(self, exc: InputError):
        self.exc = exc


def _call_payload(payload: bytes):
    """Run one unit on a Dask worker. ``(fn, item)`` arrive pickled, so a module the
    worker cannot import fails this task (and surfaces) instead of the worker's
    message handler (where distributed only logs it and the map would wait forever)."""
    import pickle

    fn, item = pickle.loads(payload)
    try:
        return fn(item)
    except InputError as e:
        return _RaisedInputError(e)


def _check_listening(address: str, timeout: float) -> None:
    """Fail at once when nothing listens at a ``tcp://host:port`` address (the Dask client would retry for
    its whole timeout); other schemes and unparsable addresses are left to the client."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        return
    if parts.scheme != "tcp" or host is None or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        raise BackendError(f"cannot reach the Dask scheduler at {address} (connection refused: nothing listens "
                           f"there); start one with 'dask scheduler' and 'dask worker ADDRESS', or check the "
                           f"address") from None
    except OSError:
        return  # timeouts, unknown hosts: the client says what it finds


def _call_shared_payload(payload: bytes, shared: Any):
    """:func:`_call_payload` for :meth:`Dask.map_shared`: ``shared`` arrives resolved (scattered once)."""
    import pickle

    fn, item = pickle.loads(payload)
    try:
        return fn(shared, item)
    except InputError as e:
        return _RaisedInputError(e)


class Dask(Backend):
    """A ``distributed`` scheduler: an address (``tcp://host:port``) or a cluster object.

    Worker deaths are handled by the scheduler; task errors are retried ``retries``
    times through ``client.submit(..., retries=)``, except InputError (not retried).
    """

    shared_copies = "worker"

    @property
    def n_workers(self) -> int:
        """Worker threads of the cluster now (at least 1)."""
        info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.values()))

    def __init__(self, address: Any, *, timeout: float = 20.0):
        from distributed import Client

        self.name = str(getattr(address, "scheduler_address", address))
        if isinstance(address, str):
            _check_listening(address, min(timeout, 5.0))
        try:
            self.client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise BackendError(f"cannot reach the Dask scheduler at {self.name} ({e}); start one with "
                               f"'dask scheduler' and 'dask worker ADDRESS', or check the address") from None

    def map(self, fn, items, *, desc=None, progress=None, retries=2) -> list:
        import cloudpickle

        items = list(items)
        tag = f"{desc or getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
        futs = [self.client.submit(_call_payload, cloudpickle.dumps((fn, item)), key=f"{tag}-{i}", pure=False,
                                   retries=retries) for i, item in enumerate(items)]
        return self._gather(futs, desc=desc, progress=progress)

    def map_shared(self, fn, shared, items, *, desc=None, progress=None, retries=2) -> list:
        import cloudpickle

        items = list(items)
        tag = f"{desc or getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
        try:  # one copy per worker (a task on a worker without it fetches it from a peer)
            handle = self.client.scatter(shared, broadcast=True, hash=False)
        except (OSError, TimeoutError) as e:
            raise BackendError(f"{desc or 'work'}: cannot send the shared data to the Dask workers at {self.name} "
                               f"({e}); a worker died (often out of memory) or the cluster stopped: give the "
                               f"workers more memory or check their logs") from None
        try:
            futs = [self.client.submit(_call_shared_payload, cloudpickle.dumps((fn, item)), handle,
                                       key=f"{tag}-{i}", pure=False, retries=retries) for i, item in enumerate(items)]
            return self._gather(futs, desc=desc, progress=progress)
        finally:
            self.client.cancel([handle])

    def _gather(self, futs: list, *, desc: str | None, progress: Progress | None) -> list:
        from distributed import as_completed as dask_as_completed
        from distributed.scheduler import KilledWorker

        n = len(futs)
        ok = False
        try:
            done = 0
            for f in dask_as_completed(futs, loop=self.client.loop):
                r = f.result()
                if isinstance(r, _RaisedInputError):
                    raise r.exc
                done += 1
                if progress is not None:
                    progress(done, n)
            out = self.client.gather(futs)
            ok = True
            return out
        except ImportError as e:
            raise BackendError(f"{desc or 'work'}: the Dask workers cannot import what the task needs ({e}); "
                               f"run them with the same Python environment as this one (profile key "
                               f"'python', or the workers' PYTHONPATH)") from None
        except KilledWorker as e:
            raise BackendError(f"{desc or 'work'}: Dask workers kept dying while running a unit ({e}); "
                               f"give the workers more memory or check their logs") from None
        finally:
            if not ok:
                self.client.cancel(futs)

    def close(self) -> None:
        self.client.close()


class JobQueue(Dask):
    """A dask-jobqueue cluster (SLURM, SGE, PBS, LSF) started from a run profile; closed with the backend."""

    def __init__(self, profile, *, wait_timeout: float | None = None):
        from cryolens.compute.profiles import make_cluster, wait_for_workers

        self.profile = profile
        self.cluster = make_cluster(profile)
        try:
            self.cluster.scale(jobs=profile.n_workers)
            super().__init__(self.cluster)
            self.name = f"profile:{profile.name}"
            wait_for_workers(self.cluster, self.client, 1, profile=profile,
                             timeout=wait_timeout or profile.wait_timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        self.cluster.close()


# --------------------------------------------------------------------------- factory
def parse_count(spec: str, what: str, *, example: str) -> int | None:
    """The positive count after ``name:`` in a backend spec (``local:4`` -> 4, ``threads`` -> None);
    anything else raises InputError naming ``what`` is counted and an ``example``."""
    kind, colon, n = spec.partition(":")
    if not colon:
        return None
    if not n.isdigit() or int(n) < 1:
        raise InputError(f"backend '{spec}': the number of {what} after '{kind}:' must be a positive integer, "
                         f"e.g. {example}")
    return int(n)


def get_backend(spec: str | None = None, *, project_dir: str | Path | None = None) -> Backend:
    """The backend named by ``spec`` (see the module docstring); unknown names raise InputError."""
    s = (spec or "local").strip()
    if s in ("", "local"):
        return LocalProcesses()
    if s.startswith("local:"):
        return LocalProcesses(parse_count(s, "workers", example="local:4"))
    if s == "inprocess":
        return InProcess()
    if s == "threads" or s.startswith("threads:"):
        from cryolens.compute.threads import Threads  # threads.py builds on this module

        return Threads(parse_count(s, "threads", example="threads:2"))
    if "://" in s:
        return Dask(s)
    from cryolens.compute.profiles import get_profile

    name = s.split(":", 1)[1] if s.startswith("profile:") else s
    return JobQueue(get_profile(name, project_dir=project_dir, what=f"backend '{s}'"))
