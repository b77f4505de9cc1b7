"""Benchmark: ``cryolens reconstruct`` against ``relion_reconstruct`` on the same STAR file.

Simulates N particles (default 10 000, box 128, CTF, SNR 0.05) of the built-in
phantom with ``cryolens simulate particles``, then runs both programs on the same
``particles.star`` as separate processes under ``/usr/bin/time -v`` and reports wall
time, peak memory (max RSS) and the FSC-vs-truth resolution (0.5 and 0.143) of each
full map. Writes ``benchmarks/results/reconstruct.json``.

    python benchmarks/reconstruct.py [--n 10000] [--box 128] [--threads 2] [--repeats 2]

Each repeat runs both programs, alternating which goes first; the JSON keeps every run, the load
average before each, the median wall and CPU times and their ratios (CPU time is the fairer measure
on a shared machine). It also measures this machine's FFT and memory-copy throughput
(:func:`timing.machine_floor`) and estimates the floor of the reconstruction from them: the flops of
the image FFTs, CTFs and trilinear insertions and the bytes of the images and of the accumulator
updates, divided by those rates (see :func:`floor_estimate`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import math

import numpy as np

from timing import alternate, machine_floor, timed

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def fsc_vs_truth(map_path: Path, truth: Path) -> dict:
    from cryolens.jobs.fsc_maps import fsc_between_files
    r = fsc_between_files(map_path, truth)
    return {"fsc_truth_0.5_A": round(r.resolution_at(0.5), 3), "fsc_truth_0.143_A": round(r.resolution_at(0.143), 3)}


def floor_estimate(n_particles: int, box: int, pad: int, floor: dict) -> dict:
    """CPU seconds below which a reconstruction cannot go on this machine, counted per particle:
    the image rfft2 (``2.5·N·log2 N / 2`` flops), the CTF (~40 flops per Fourier pixel), and the
    trilinear insertion of the ``M ≈ π(box/2)²/2`` kept frequencies into 8 corners each (~12 flops per
    corner for index, weight and values; 12 bytes of complex data + weight read and written per corner);
    plus the images themselves (4 bytes per pixel). FFT GFLOP/s stands for the machine's attainable
    flop rate (generous: elementwise code is slower) and the copy rate for its memory bandwidth (the
    accumulator, ~(pad·box)³/2·12 bytes, does not fit the caches); both per second of CPU time, so the
    floors are CPU seconds (halve them for the wall time of two busy cores)."""
    npx = box * box
    m = math.pi * (box / 2) ** 2 / 2
    flops = n_particles * (2.5 * npx * math.log2(npx) / 2 + 40 * box * (box // 2 + 1) + 8 * 12 * m)
    nbytes = n_particles * (4 * npx + 8 * m * 12 * 2)
    t_flop = flops / (floor["fft_gflops_per_cpu_s"] * 1e9)
    t_mem = nbytes / (floor["copy_gbps_per_cpu_s"] * 1e9)
    return {"gflop": round(flops / 1e9, 2), "gbytes": round(nbytes / 1e9, 2), "flop_floor_cpu_s": round(t_flop, 2),
            "memory_floor_cpu_s": round(t_mem, 2), "floor_cpu_s": round(max(t_flop, t_mem), 2), "pad": pad}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pixel-size", type=float, default=1.5)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for cryolens (RELION's reconstruct is serial)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each program, alternating which goes first")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reconstruct.json")
    args = ap.parse_args()
    if shutil.which("relion_reconstruct") is None:
        raise SystemExit("relion_reconstruct not found: apt-get install relion")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryolens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cryolens = str(BIN / "cryolens")
    if not (work / "sim" / "particles.star").is_file():
        sim = timed([cryolens, "simulate", "particles", "--out", "sim", "--overwrite", "--n", str(args.n), "--box",
                     str(args.box), "--pixel-size", str(args.pixel_size), "--snr", str(args.snr), "--quiet", "--device",
                     "cpu"], work)
    else:
        sim = {"reused": True}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    ours_cmd = [cryolens, "reconstruct", "--in", "sim/particles.star", "--out", "rec", "--overwrite", "--quiet",
                "--device", "cpu"]
    # Both read the same STAR; RELION reconstructs all particles into one map.
    rel_cmd = ["relion_reconstruct", "--i", "sim/particles.star", "--o", "relion.mrc", "--ctf"]
    runs = alternate({"cryolens": (ours_cmd, env), "relion": (rel_cmd, None)}, work, args.repeats)

    def summary(tool: str) -> dict:
        rs = runs[tool]
        return {"wall_s": round(float(np.median([r["wall_s"] for r in rs])), 2),
                "cpu_s": round(float(np.median([r["cpu_s"] for r in rs])), 2),
                "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in rs), "runs": rs}

    ours, rel = summary("cryolens"), summary("relion")
    truth = work / "sim" / "truth_map.mrc"
    ours.update(fsc_vs_truth(work / "rec" / "map.mrc", truth))
    rel.update(fsc_vs_truth(work / "relion.mrc", truth))
    job = json.loads((work / "rec" / "job.json").read_text())
    ours["half_map_fsc_0.143_A"] = job["results"]["resolution_0143_A"]
    ours["job_timings_s"] = job["timings_s"]
    floor = machine_floor(args.threads)
    est = floor_estimate(args.n, args.box, 2, floor)
    result = {
        "benchmark": "reconstruct", "n_particles": args.n, "box": args.box, "pixel_size_A": args.pixel_size,
        "snr": args.snr, "threads": args.threads, "repeats": args.repeats, "simulate": sim, "cryolens": ours,
        "relion_reconstruct": rel,
        "time_ratio_relion_over_cryolens": round(rel["wall_s"] / ours["wall_s"], 2),
        "time_ratio_cryolens_over_relion": round(ours["wall_s"] / rel["wall_s"], 2),
        "cpu_ratio_cryolens_over_relion": round(ours["cpu_s"] / max(rel["cpu_s"], 1e-9), 2),
        "resolution_ratio_cryolens_over_relion": round(ours["fsc_truth_0.143_A"] / rel["fsc_truth_0.143_A"], 3),
        "machine": floor, "floor": est,
        "cpu_over_floor": round(ours["cpu_s"] / max(est["floor_cpu_s"], 1e-9), 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "workdir": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
