"""The job folder: ``job.json``, ``run.log``, exit markers, outputs written atomically and checked.

A job records its parameters, inputs, seed, package versions, host, timings,
results and status (``running`` -> ``finished`` | ``failed``; ``killed`` when
reconciled) in ``job.json``. The exit state is also visible as a marker file, as
RELION does: ``CRYOLENS_JOB_EXIT_SUCCESS``, ``CRYOLENS_JOB_EXIT_FAILURE`` or
``CRYOLENS_JOB_EXIT_ABORTED`` (RELION's ``RELION_JOB_EXIT_ABORTED``: written for a job
whose process ended without an exit, see :mod:`cryolens.jobs.folders`).

Before SUCCESS every recorded output (:meth:`Job.add_output`) is checked
(:mod:`cryolens.jobs.output_checks`: maps and stacks finite and of their header's
size, particle/micrograph/movie tables not empty); a failed check makes the job end
FAILURE with the reason in ``job.json`` and raises :class:`cryolens.errors.OutputError`.
After the checks pass, ``report.html`` gets its verdict line, class counts and (simulated data)
truth panels (:mod:`cryolens.jobs.report_panels`; seconds in ``timings_s.report_panels``).

A job folder is a transaction (:mod:`cryolens.jobs.folders`). The CLI refuses a folder
that holds a finished job unless ``--overwrite``; with it the job is built in a sibling
staging folder and swapped in by :meth:`Job.__exit__` only on success, so a failure
leaves the old job byte for byte. Choice made for the paths that outputs record
(STAR files name stacks and micrographs relative to the current folder, RELION's
convention, so the job folder's own name is part of them): the job writes its files
into the staging folder but names them under the final folder
(:func:`cryolens.io.paths.star_name`), and ``job.json``/the observer get the
final paths; after the swap every recorded path is right, and no output needs
rewriting. A job started in a folder whose previous job was killed first removes
that job's temporary files. A folder that holds an unfinished job (no marker,
FAILURE, killed) is reused in place: the per-micrograph stages resume there.

An optional *observer* hears about the job's life (the project database records
jobs this way, without this layer knowing about projects): ``started(job)`` once
``job.json`` says running, ``heartbeat(job)`` every ``heartbeat_s`` seconds from a
daemon thread, then ``finished(job)`` (after the swap, with the final paths) or
``failed(job, error)`` after the marker is written. An observer error in
``heartbeat``/``finished``/``failed`` is logged, never raised: the job's files stay
the truth.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cryolens import __version__
from cryolens.errors import InputError, OutputError
from cryolens.io.atomic import write_json_atomic
from cryolens.io.paths import final_path
from cryolens.jobs.folders import (ABORTED_MARKER, FAILURE_MARKER, MARKERS, SUCCESS_MARKER, commit,
                                   folder_state, remove_temporaries, staging_of)
from cryolens.jobs.output_checks import check_outputs

__all__ = ["Job", "check_params", "JobObserver", "SUCCESS_MARKER", "FAILURE_MARKER", "ABORTED_MARKER",
           "package_versions"]


def check_params(command: str, *params) -> None:
    """Run each params dataclass's ``validate()``; an impossible value becomes a one-sentence InputError."""
    try:
        for p in params:
            p.validate()
    except ValueError as e:
        raise InputError(f"{command}: {e}.") from None


def package_versions() -> dict[str, str]:
    """Versions of cryolens, Python and the numeric libraries (for provenance)."""
    import numpy
    import torch
    out = {"cryolens": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__}
    for mod in ("scipy", "pandas", "mrcfile", "starfile"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is not an error here
            pass
    return out


class JobObserver(Protocol):
    """What a :class:`Job` tells an observer (every method is called with the job)."""

    def started(self, job: "Job") -> None: ...

    def heartbeat(self, job: "Job") -> None: ...

    def finished(self, job: "Job") -> None: ...

    def failed(self, job: "Job", error: str) -> None: ...


class Job:
    """Context manager around one run of a stage in its output folder.

    Example::

        with Job("reconstruct", out_dir, params=p, inputs={"particles": star}) as job:
            ...
            job.add_output("map", out_dir / "map.mrc")
            job.results["resolution_A"] = 3.2
    """

    def __init__(self, stage: str, out_dir: str | os.PathLike, *, params: Any, inputs: dict[str, Any],
                 seed: int | None = None, device: str | None = None, observer: JobObserver | None = None,
                 heartbeat_s: float = 30.0) -> None:
        self.stage = stage
        self.dir = Path(out_dir)
        self.staging = staging_of(self.dir)  # an --overwrite: self.dir is swapped onto staging.final on success
        self.folder = self.staging.final if self.staging is not None else self.dir
        self.params = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params)
        self.inputs = {k: str(v) for k, v in inputs.items()}
        self.seed, self.device = seed, device
        self.outputs: dict[str, str] = {}
        self.results: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.log = logging.getLogger(f"cryolens.{stage}")
        self._handler: logging.Handler | None = None
        self._t0 = 0.0
        self.observer = observer
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.check_error: str | None = None
        self.empty_ok: set[str] = set()

    def _record(self, status: str, error: str | None = None) -> None:
        write_json_atomic(self.dir / "job.json", {
            "stage": self.stage, "status": status, "command": sys.argv, "params": self.params,
            "inputs": self.inputs, "outputs": self.outputs, "results": self.results, "seed": self.seed,
            "device": self.device, "versions": package_versions(), "host": socket.gethostname(),
            "pid": os.getpid(), "started": self._t0, "ended": time.time() if status != "running" else None,
            "timings_s": self.timings, "error": error,
        })

    def __enter__(self) -> "Job":
        if folder_state(self.dir) == "killed":
            remove_temporaries(self.dir)  # the previous job's half-written files
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for marker in MARKERS:
                (self.dir / marker).unlink(missing_ok=True)
            self._handler = logging.FileHandler(self.dir / "run.log")
        except OSError as e:
            raise InputError(f"{self.dir}: cannot write the job folder here ({e.strerror}); choose a writable "
                             "folder with --out (or --project).") from None
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._handler)
        self.log.setLevel(logging.INFO)
        self._t0 = time.time()
        self.log.info("cryolens %s %s -> %s", __version__, self.stage, self.folder)
        self._record("running")
        if self.observer is not None:
            try:
                self.observer.started(self)
            except BaseException as e:
                self._close("failed", f"{type(e).__name__}: {e}")
                raise
            self._beat = threading.Thread(target=self._heartbeats, name=f"cryolens-heartbeat-{self.stage}", daemon=True)
            self._beat.start()
        return self

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._notify("heartbeat")

    def _notify(self, method: str, *args: Any) -> None:
        try:
            getattr(self.observer, method)(self, *args)
        except Exception as e:  # noqa: BLE001 - the job's own files stay the record
            self.log.warning("job observer %s failed: %s: %s", method, type(e).__name__, e)

    @contextmanager
    def timed(self, name: str):
        """Time a block; the seconds land in ``job.json`` under ``timings_s``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t, 4)
            self.log.info("%s took %.2f s", name, self.timings[name])

    def add_output(self, name: str, path: str | os.PathLike, *, rows: bool = True) -> Path:
        """Record an output file (already written atomically) under a name; it is checked before SUCCESS
        (:mod:`cryolens.jobs.output_checks`). ``rows=False``: a STAR file whose tables may legitimately be
        empty (rejections, a selection that kept nothing)."""
        self.outputs[name] = str(path)
        if not rows:
            self.empty_ok.add(name)
        return Path(path)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close("finished" if exc_type is None else "failed",
                    None if exc_type is None else f"{exc_type.__name__}: {exc}")
        if exc_type is None and self.check_error is not None:
            raise OutputError(f"{self.stage}: {self.check_error}; the job ended FAILURE.")

    def _final_outputs(self) -> dict[str, str]:
        """The recorded outputs named in the final folder (unchanged unless the job is staged)."""
        out = {}
        for name, value in self.outputs.items():
            mapped = final_path(value)
            out[name] = value if mapped is value else (str(mapped) if Path(value).is_absolute()
                                                       else os.path.relpath(mapped))
        return out

    def _close(self, status: str, error: str | None) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.timings["total"] = round(time.time() - self._t0, 4)
        if status == "finished":
            self.check_error = check_outputs(self.outputs, empty_ok=self.empty_ok)
            if self.check_error is not None:
                if self.staging is not None:  # name the files where the user looks for them
                    for a, b in ((self.dir, self.folder), (os.path.relpath(self.dir), os.path.relpath(self.folder))):
                        self.check_error = self.check_error.replace(str(a), str(b))
                status, error = "failed", f"OutputError: {self.check_error}"
        if status == "finished":
            self._complete_report()
            self.log.info("finished in %.2f s", self.timings["total"])
            self.outputs = self._final_outputs()
            self._record("finished")
            (self.dir / SUCCESS_MARKER).touch()
            if self.staging is not None:
                self.dir = commit(self.staging)
        else:
            self.log.error("failed: %s", error)
            self._record("failed", error=error)
            (self.dir / FAILURE_MARKER).touch()
        if self.observer is not None:
            if status == "finished":
                self._notify("finished")
            else:
                self._notify("failed", error)
        self._close_log()

    def _complete_report(self) -> None:
        """The verdict line, class counts and truth panels into ``report.html`` (:mod:`cryolens.jobs.report_panels`);
        a failure there is logged and leaves the report as the stage wrote it."""
        t = time.perf_counter()
        try:
            from cryolens.jobs.report_panels import complete_report
            complete_report(self.dir, stage=self.stage, results=self.results, params=self.params)
        except Exception as e:  # noqa: BLE001 - the job's outputs are done; the report extras are not essential
            self.log.warning("report panels skipped: %s: %s", type(e).__name__, e)
        self.timings["report_panels"] = round(time.perf_counter() - t, 4)

    def _close_log(self) -> None:
        if self._handler is not None:
            self.log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
