"""Whether a recorded process still runs (jobs marked running, workflow steps)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_alive"]


def process_alive(pid: int, since: float | None) -> bool:
    """Whether ``pid`` is a live process on this host started no later than ``since`` (epoch seconds;
    guards against pid reuse; None: any start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True  # no /proc (macOS): trust os.kill
    if fields[0] in ("Z", "X"):  # zombie: exited, not yet reaped
        return False
    if since is not None:
        try:
            ticks = os.sysconf("SC_CLK_TCK")
            boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                        if line.startswith("btime"))
            if boot + int(fields[19]) / ticks > since + 5.0:
                return False  # the pid now belongs to a process started after the job
        except (OSError, ValueError, StopIteration, IndexError):
            pass
    return True
