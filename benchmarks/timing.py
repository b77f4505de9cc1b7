"""What every benchmark shares: run a command under GNU time and read what it cost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
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


def machine_floor(threads: int = 1, *, fft_size: int = 1024, copy_mb: int = 256) -> dict:
    """This machine's throughput for the two things every kernel here is made of, with ``threads`` torch
    threads: a big batched real FFT (``rfft2`` of 8 frames of ``fft_size``², counted as
    ``2.5·N·log2(N)`` flops per real transform of N points) in GFLOP/s, and a memory copy (``copy_`` of
    ``copy_mb`` MB into a resident buffer, read + write counted) in GB/s. Best of 5; on shared cores the
    wall-clock rates are what the process got, not what the hardware can do, so the rates per second of
    CPU time (``*_per_cpu_s``: all threads' CPU summed) are given too: what one busy core delivers."""
    import math

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(8, fft_size, fft_size)
        n = fft_size * fft_size
        flops = 8 * 2.5 * n * math.log2(n)
        big = torch.empty(copy_mb * 2 ** 20 // 4).uniform_()
        dst = torch.zeros_like(big)  # touched once here, so the copies below do not page-fault
        fft_s = copy_s = fft_c = copy_c = float("inf")
        for _ in range(5):
            t, c = time.perf_counter(), time.process_time()
            torch.fft.rfft2(x)
            fft_s, fft_c = min(fft_s, time.perf_counter() - t), min(fft_c, time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            dst.copy_(big)
            copy_s, copy_c = min(copy_s, time.perf_counter() - t), min(copy_c, time.process_time() - c)
    finally:
        torch.set_num_threads(before)
    nbytes = 2 * big.numel() * 4
    return {"threads": threads, "fft_gflops": round(flops / fft_s / 1e9, 2),
            "copy_gbps": round(nbytes / copy_s / 1e9, 2),
            "fft_gflops_per_cpu_s": round(flops / max(fft_c, 1e-9) / 1e9, 2),
            "copy_gbps_per_cpu_s": round(nbytes / max(copy_c, 1e-9) / 1e9, 2),
            "load_1min": round(os.getloadavg()[0], 2)}


def alternate(commands: dict[str, tuple[list[str], dict | None]], cwd: Path, repeats: int,
              before: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
    """Time each named command ``repeats`` times, alternating which goes first (so that a shared machine's load
    drifts onto both alike): ``{name: [timed(...) + load_1min_before, ...]}``. ``commands``: name -> (argv, env);
    ``before(name)`` runs first each time (e.g. to clear the output folder)."""
    names = list(commands)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(max(1, repeats)):
        for name in (names if rep % 2 == 0 else names[::-1]):
            if before is not None:
                before(name)
            load = os.getloadavg()[0]
            cmd, env = commands[name]
            r = timed(cmd, cwd, env)
            r["load_1min_before"] = round(load, 2)
            runs[name].append(r)
            print(f"run {rep + 1} {name:<9} wall {r['wall_s']:6.2f} s  CPU {r['cpu_s']:6.2f} s  load {load:.2f}",
                  flush=True)
    return runs



def write_results(out: Path, results: dict) -> None:
    """Stamp ``results`` with the load at the end (``load_end``) and write them to ``out`` as JSON."""
    results["load_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
