"""Live progress of a job, from what its folder already records (no help from the running process).

A running job writes ``run.log`` as it goes (iterative stages log each iteration, ab initio logs
``stage: done/total``), commits one ``run_itNNN_state/`` per finished iteration
(:mod:`cryolens.jobs.checkpoint`) and the project database gets its heartbeat. :func:`job_progress`
turns these into a fraction (when one can be told), a one-line message and ages in seconds.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from cryolens.jobs.checkpoint import finished_iterations

__all__ = ["job_progress", "last_log_line"]

_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")
_ITERATION_KEYS = ("max_iterations", "iterations")


def last_log_line(folder: str | os.PathLike, *, max_bytes: int = 4096) -> str:
    """The last non-empty line of ``folder/run.log`` without its time stamp ('' when none)."""
    path = Path(folder) / "run.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    if not lines:
        return ""
    parts = lines[-1].split(" ", 3)  # "2026-12-03 13:05:12,123 INFO message"
    return parts[3] if len(parts) == 4 and parts[2].isupper() else lines[-1]


def job_progress(folder: str | os.PathLike, *, params: dict | None = None, started: float | None = None,
                 heartbeat: float | None = None, now: float | None = None) -> dict[str, Any]:
    """What a running job shows: ``{"fraction": 0..1 or None, "message", "elapsed_s", "heartbeat_age_s",
    "iteration"}`` (times in seconds; None where unknown)."""
    now = time.time() if now is None else now
    message = last_log_line(folder)
    fraction = None
    its = finished_iterations(folder)
    total = next((int(params[k]) for k in _ITERATION_KEYS if params and isinstance(params.get(k), int)), None)
    if its and total:
        fraction = min(1.0, its[-1] / total)
    m = _FRACTION.search(message)
    if fraction is None and m and int(m.group(2)) > 0:
        fraction = min(1.0, int(m.group(1)) / int(m.group(2)))
    return {"fraction": None if fraction is None else round(fraction, 4), "message": message,
            "iteration": its[-1] if its else None,
            "elapsed_s": None if not started else round(now - started, 1),
            "heartbeat_age_s": None if not heartbeat else round(now - heartbeat, 1)}
