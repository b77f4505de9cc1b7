"""What every benchmark shares: run a command under GNU time and read what it cost."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; return wall seconds, CPU seconds (user + system, children
    included: the fairer measure on a loaded machine) and peak RSS in MB (the largest process). The
    command's output goes to ``log`` when given; a failure stops the benchmark with its last lines."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if log is not None:
        log.write_text(p.stdout + "\n" + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", p.stderr))
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None}
