"""The threads backend: work units in threads of this process, one torch thread each.

Torch releases the GIL inside its kernels, so ``N`` threads with one torch thread each
use ``N`` cores without the start-up of worker processes (a Python + torch import each):
on 2 cores, 12 movies were motion-corrected in 12 s this way against 20 s in worker
processes. Any per-micrograph stage can use it (``--backend threads[:N]``).

A unit function may come in two phases, as a :class:`Staged` object: ``load(item)``
reads (file I/O, mostly GIL-bound) and ``run(item, loaded)`` computes. :class:`Threads`
then reads ahead with one reader thread while the workers compute, keeping at most
``N + 1`` loaded items in memory. ``load`` may return :class:`Ready` (e.g. a unit done by
an earlier run) to skip ``run``. Calling a Staged object does both phases, so every
other backend maps it as a plain function.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from cryolens.compute.backends import Backend, Progress, cpu_count

__all__ = ["Ready", "Staged", "Threads"]


@dataclass(frozen=True)
class Ready:
    """What :meth:`Staged.load` returns when the unit's result is known without ``run``."""

    value: Any


class Staged:
    """A unit function in two phases (subclass it; instances must be picklable for process backends).

    ``load(item)`` returns the loaded data or :class:`Ready`; ``run(item, loaded)`` returns the
    unit's result. ``unit(item)`` does both in the calling thread.
    """

    def load(self, item: Any) -> Any:
        raise NotImplementedError

    def run(self, item: Any, loaded: Any) -> Any:
        raise NotImplementedError

    def __call__(self, item: Any) -> Any:
        loaded = self.load(item)
        return loaded.value if isinstance(loaded, Ready) else self.run(item, loaded)


class Threads(Backend):
    """``n_workers`` units at once in threads of this process (default one per core), each with one
    torch thread; :class:`Staged` units are read ahead by one more thread.

    The torch thread count is restored after each map. Results come back in input order; the
    first error is raised after the running units finish (units not started are dropped).
    ``retries`` is ignored (a thread does not die on its own).
    """

    def __init__(self, n_workers: int | None = None):
        self.n_workers = max(1, int(n_workers or cpu_count()))
        self.name = f"threads:{self.n_workers}"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str | None = None,
            progress: Progress | None = None, retries: int = 2) -> list:
        import torch

        items = list(items)
        if not items:
            return []
        workers = min(self.n_workers, len(items))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        stop = threading.Event()
        reader = ThreadPoolExecutor(1, thread_name_prefix=f"{desc or 'map'}-read") if isinstance(fn, Staged) \
            else None
        pool = ThreadPoolExecutor(workers, thread_name_prefix=desc or "map")
        try:
            if reader is None:
                futures = [pool.submit(fn, item) for item in items]
            else:
                load, run = _read_ahead(fn, workers, stop)
                futures = [pool.submit(run, item, reader.submit(load, item)) for item in items]
            done = 0
            for fut in as_completed(futures):
                fut.result()  # raise the first error at once
                done += 1
                if progress is not None:
                    progress(done, len(items))
            return [f.result() for f in futures]
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            if reader is not None:
                reader.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)


def _read_ahead(unit: Staged, workers: int, stop: threading.Event):
    """(load, run) wrappers sharing ``workers + 1`` memory slots: a slot is taken before a load and
    given back when the unit ran (or at once when the load returned :class:`Ready`)."""
    slots = threading.Semaphore(workers + 1)
    stopped = object()

    def load(item: Any) -> Any:
        while not slots.acquire(timeout=0.2):
            if stop.is_set():
                return stopped  # another unit failed: nothing more is read
        try:
            loaded = unit.load(item)
        except BaseException:
            slots.release()
            raise
        if isinstance(loaded, Ready):
            slots.release()
        return loaded

    def run(item: Any, loaded: Future) -> Any:
        data = loaded.result()
        if data is stopped or isinstance(data, Ready):
            return None if data is stopped else data.value
        try:
            return unit.run(item, data)
        finally:
            del data
            slots.release()

    return load, run
