"""What every benchmark shares: run a command under GNU time and read what it cost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None,
          timeout: float | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; return wall seconds, CPU seconds (user + system, children
    included: the fairer measure on a loaded machine) and peak RSS in MB (the largest process). The
    command's output goes to ``log`` when given; a failure stops the benchmark with its last lines.

    After ``timeout`` seconds the whole process group is killed and ``{"wall_s": timeout,
    "timed_out": True}`` is returned (CPU and memory are then unknown)."""
    t = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        if log is not None:
            log.write_text(out + "\n" + err)
        return {"wall_s": round(timeout, 2), "cpu_s": None, "peak_rss_mb": None, "timed_out": True}
    wall = time.perf_counter() - t
    if log is not None:
        log.write_text(out + "\n" + err)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}\n{err[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", err))
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None}
