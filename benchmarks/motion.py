"""Benchmark: ``cryolens motion`` against ``relion_run_motioncorr --use_own`` on the same movies.

Simulates N movies (default 24 of 1024² × 24 frames, 2 e⁻/Å² per frame, 15 Å global
drift, no local motion, gain reference, hot and dead pixels) with ``cryolens simulate
movies``, then runs both programs on the same ``movies.star`` (global alignment, dose
weighting, the simulator's gain) as separate processes under ``/usr/bin/time -v`` and
reports wall time, peak memory and each tool's shift error against the simulator's
truth STAR (RMSE over all frames of all movies of the ``rlnMicrographShiftX/Y``
correction shifts, in movie pixels). Writes ``benchmarks/results/motion.json``.

    python benchmarks/motion.py [--n 24] [--size 1024] [--frames 24] [--threads 2] [--repeats 2]

Each repeat runs both programs, alternating which goes first; the JSON keeps every run, the
median wall/CPU time per tool, the load average (1 min) before each run, and the ratio of the
median wall times.

Two more measurements, reported (not asserted): the alignment kernel alone,
``cryolens.motion.align_movie`` in this process with ``--kernel-threads`` torch threads on
synthetic frames (``--kernel SIZExFRAMES[:PXxPY]``, repeatable; default 1024x24 and 1024x24:5x5,
add e.g. 4096x40 and 4096x40:5x5 for full-size movies), and with ``--preset-movie`` the time
to simulate one ``--preset benchmark`` movie (3710x3838x40) per format (target: 20 s on 2 cores).
``--kernel-only`` runs just these (no RELION needed) and writes ``results/motion_kernel.json``.

    python benchmarks/motion.py --kernel-only --kernel 1024x24 --kernel 4096x40:5x5 --preset-movie

It also measures this machine's FFT and memory-copy throughput (:func:`timing.machine_floor`) and
estimates from them the floor of motion correction per movie (:func:`floor_estimate`), reported
with the measured seconds per movie.

RELION gets ``--j threads`` (threads per movie, one movie at a time); cryolens gets the same
number of cores through ``OMP_NUM_THREADS`` and its default backend (in-process threads for a
few movies, local worker processes for many), or ``--backend`` / ``--cryolens-j`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import math

from timing import alternate, machine_floor, timed

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SHIFT = ["rlnMicrographShiftX", "rlnMicrographShiftY"]


def shift_errors(work: Path, n: int, folder: str) -> dict:
    """RMSE (px) of the global shifts in ``folder``'s per-movie STARs against the truth, overall and per movie."""
    import starfile

    per, sq = [], []
    for k in range(1, n + 1):
        name = f"movie_{k:04d}.star"
        truth = starfile.read(work / "sim" / "Movies" / name, always_dict=True)["global_shift"][SHIFT].to_numpy()
        found = list((work / folder).rglob(name))
        if not found:
            raise SystemExit(f"{folder}: no {name} written")
        est = starfile.read(found[0], always_dict=True)["global_shift"][SHIFT].to_numpy()
        d2 = ((est - truth) ** 2).sum(1)
        per.append(round(float(np.sqrt(d2.mean())), 3))
        sq.append(d2)
    return {"shift_rmse_px": round(float(np.sqrt(np.concatenate(sq).mean())), 3), "shift_rmse_px_per_movie": per}


def floor_estimate(size: int, frames: int, floor: dict) -> dict:
    """CPU seconds per movie below which motion correction cannot go on this machine: the
    full-size rfft2 of every frame and the two inverse transforms of the sums (``2.5·N·log2 N / 2``
    flops each; the alignment itself runs on a binned grid and is left out), and the memory passes
    over each frame pixel: 2 bytes read from the file, 4 written and read as float32, 8 written and
    read as a spectrum, 8 read and written when shifted into the sums (~42 bytes per pixel per
    frame). FFT GFLOP/s stands for the attainable flop rate, the copy rate for the bandwidth (both per
    second of CPU time, see :func:`timing.machine_floor`)."""
    npx = size * size
    flops = (frames + 2) * 2.5 * npx * math.log2(npx) / 2
    nbytes = frames * npx * 42
    t_flop = flops / (floor["fft_gflops_per_cpu_s"] * 1e9)
    t_mem = nbytes / (floor["copy_gbps_per_cpu_s"] * 1e9)
    return {"gflop": round(flops / 1e9, 2), "gbytes": round(nbytes / 1e9, 2), "flop_floor_cpu_s": round(t_flop, 3),
            "memory_floor_cpu_s": round(t_mem, 3), "floor_cpu_s_per_movie": round(max(t_flop, t_mem), 3)}


def kernel_timings(cases: list[str], threads: int) -> list[dict]:
    """Seconds per movie of ``align_movie`` in this process with ``threads`` torch threads, one case
    ``SIZExFRAMES`` or ``SIZExFRAMES:PXxPY`` (patches) each: a still Poisson image (1.5 counts/px)
    plus per-frame shot noise (1 count/px), 1 Å/px, 1 e⁻/Å² per frame. On shared cores extra
    threads mostly spin, so the default is one thread per movie and movies in parallel processes."""
    import torch

    from cryolens.motion import MotionParams, align_movie

    out = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for case in cases:
            dims, _, patch = case.partition(":")
            size, n_frames = (int(v) for v in dims.split("x"))
            patches = tuple(int(v) for v in patch.split("x")) if patch else None
            g = torch.Generator().manual_seed(0)
            base = torch.poisson(torch.full((size, size), 1.5), generator=g)
            frames = base.expand(n_frames, -1, -1) + torch.poisson(torch.full((n_frames, size, size), 1.0),
                                                                   generator=g)
            t = time.perf_counter()
            r = align_movie(frames, pixel_size=1.0, params=MotionParams(patches=patches), dose_per_frame=1.0)
            dt = time.perf_counter() - t
            out.append({"case": case, "size": size, "frames": n_frames, "patches": list(patches) if patches else None,
                        "threads": threads, "seconds": round(dt, 2), "rounds": r.iterations})
            print(f"align_movie {size}x{size}x{n_frames} patches={patches} ({threads} thread(s)): {dt:.2f} s, "
                  f"{r.iterations} rounds", flush=True)
    finally:
        torch.set_num_threads(before)
    return out


def preset_movie_timings(cryolens: str, formats: list[str]) -> list[dict]:
    """Seconds to simulate one ``--preset benchmark`` movie (3710x3838x40) per output format: the job's
    own time for the movie and the wall time of the whole command (start-up and writing included)."""
    out = []
    for fmt in formats:
        work = Path(tempfile.mkdtemp(prefix="cryolens-bench-preset-movie-"))
        try:
            r = timed([cryolens, "simulate", "movies", "--preset", "benchmark", "--n-movies", "1", "--format", fmt,
                       "--device", "cpu", "--quiet", "--out", "bench"], work)
            job = json.loads((work / "bench" / "job.json").read_text())
            r = {"format": fmt, "movie_seconds": job["timings_s"]["movie_0001"], **r}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out.append(r)
        print(f"benchmark movie ({fmt}): {r['movie_seconds']:.1f} s in the job, {r['wall_s']:.1f} s for the command",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24,
                    help="movies (24: enough that the ~2 s Python + torch start does not dominate, as on real data)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--dose-per-frame", type=float, default=2.0)
    ap.add_argument("--drift", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=2, help="RELION --j; cryolens OMP_NUM_THREADS")
    ap.add_argument("--backend", default=None, help="cryolens --backend (default: the job's choice)")
    ap.add_argument("--cryolens-j", type=int, default=None, help="cryolens --j (movies at once in worker processes)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tool, alternating which goes first")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temporary folder)")
    ap.add_argument("--kernel", action="append", default=None, metavar="SIZExFRAMES[:PXxPY]",
                    help="align_movie kernel case (repeatable; default 1024x24 and 1024x24:5x5)")
    ap.add_argument("--kernel-threads", type=int, default=1, help="torch threads for the kernel cases")
    ap.add_argument("--preset-movie", action="store_true",
                    help="also time simulating one --preset benchmark movie (mrc and tiff)")
    ap.add_argument("--kernel-only", action="store_true",
                    help="only the kernel cases (and --preset-movie); no RELION run")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default results/motion.json; results/motion_kernel.json with --kernel-only)")
    args = ap.parse_args()
    if not args.kernel_only and shutil.which("relion_run_motioncorr") is None:
        raise SystemExit("relion_run_motioncorr not found: apt-get install relion (or run --kernel-only)")
    cryolens = str(BIN / "cryolens")
    kernel = kernel_timings(args.kernel or ["1024x24", "1024x24:5x5"], args.kernel_threads)
    preset = preset_movie_timings(cryolens, ["mrc", "tiff"]) if args.preset_movie else None
    if args.kernel_only:
        out = args.out or HERE / "results" / "motion_kernel.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"benchmark": "motion_kernel", "align_movie": kernel, "preset_movie": preset,
                                   "load_average_after": [round(x, 2) for x in os.getloadavg()]}, indent=2) + "\n")
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryolens-bench-motion-"))
    work.mkdir(parents=True, exist_ok=True)
    dose = str(args.dose_per_frame)
    if not (work / "sim" / "movies.star").is_file():
        sim = timed([cryolens, "simulate", "movies", "--preset", "tutorial", "--n-movies", str(args.n),
                     "--frames", str(args.frames), "--size", str(args.size), str(args.size), "--dose-per-frame", dose,
                     "--drift", str(args.drift), "--no-local-motion", "--gain", "--hot-pixels", "8",
                     "--dead-pixels", "4", "--seed", str(args.seed), "--quiet", "--device", "cpu", "--out", "sim"],
                    work)
    else:
        sim = {"reused": True}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    ours_cmd = [cryolens, "motion", "--in", "sim/movies.star", "--out", "mc", "--dose-per-frame", dose,
                "--quiet", "--device", "cpu"]
    if args.cryolens_j:
        ours_cmd += ["--j", str(args.cryolens_j)]
    if args.backend:
        ours_cmd += ["--backend", args.backend]
    rel_cmd = ["relion_run_motioncorr", "--i", "sim/movies.star", "--o", "relion/", "--first_frame_sum", "1",
               "--last_frame_sum", "-1", "--use_own", "--j", str(args.threads), "--bin_factor", "1",
               "--bfactor", "150", "--dose_per_frame", dose, "--preexposure", "0", "--patch_x", "1",
               "--patch_y", "1", "--gainref", "sim/gain.mrc", "--gain_rot", "0", "--gain_flip", "0",
               "--dose_weighting"]
    runs = alternate({"cryolens": (ours_cmd, env), "relion": (rel_cmd, None)}, work, args.repeats,
                     before=lambda tool: shutil.rmtree(work / ("mc" if tool == "cryolens" else "relion"),
                                                       ignore_errors=True))

    def summary(tool: str, folder: str) -> dict:
        rs = runs[tool]
        out = {"wall_s": round(float(np.median([r["wall_s"] for r in rs])), 2),
               "cpu_s": round(float(np.median([r["cpu_s"] for r in rs])), 2),
               "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in rs), "runs": rs}
        out.update(shift_errors(work, args.n, folder))  # the last run's outputs (deterministic)
        return out

    ours, rel = summary("cryolens", "mc"), summary("relion", "relion")
    floor = machine_floor(1)
    est = floor_estimate(args.size, args.frames, floor)
    job = json.loads((work / "mc" / "job.json").read_text())
    ours["job_seconds"] = job["timings_s"].get("total")
    ours["seconds_per_movie"] = job["results"].get("seconds_per_movie")
    ours["backend"] = job["results"].get("backend")
    result = {
        "benchmark": "motion", "n_movies": args.n, "size": args.size, "frames": args.frames,
        "dose_per_frame": args.dose_per_frame, "drift_A": args.drift, "threads": args.threads,
        "repeats": args.repeats, "simulate": sim, "cryolens": ours, "relion_run_motioncorr": rel,
        "cryolens_shift_rmse_px": ours["shift_rmse_px"], "relion_shift_rmse_px": rel["shift_rmse_px"],
        "time_ratio_relion_over_cryolens": round(rel["wall_s"] / ours["wall_s"], 2),
        "cpu_ratio_relion_over_cryolens": round(rel["cpu_s"] / max(ours["cpu_s"], 1e-9), 2),
        "rmse_ratio_cryolens_over_relion": round(ours["shift_rmse_px"] / max(rel["shift_rmse_px"], 1e-9), 3),
        "time_ratio_cryolens_over_relion": round(ours["wall_s"] / rel["wall_s"], 2),
        "cpu_ratio_cryolens_over_relion": round(ours["cpu_s"] / max(rel["cpu_s"], 1e-9), 2),
        "machine": floor, "floor": est,
        "align_movie_kernel": kernel, "preset_movie": preset,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": "median of the runs; wall times on shared cores are noisy (see load_1min_before per run); "
                "both tools ran in the same session on the same files",
        "workdir": str(work),
    }
    out = args.out or HERE / "results" / "motion.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'tool (median)':<24}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}{'RMSE px':>9}")
    for name, r in (("cryolens motion", ours), ("relion_run_motioncorr", rel)):
        print(f"{name:<24}{r['wall_s']:>8.2f}{r['cpu_s']:>8.2f}{r['peak_rss_mb'] or 0:>9.0f}{r['shift_rmse_px']:>9.3f}")
    print(f"RELION / cryolens wall time: {result['time_ratio_relion_over_cryolens']}; "
          f"CPU time: {result['cpu_ratio_relion_over_cryolens']}; shift RMSE cryolens "
          f"{ours['shift_rmse_px']:.3f} px, RELION {rel['shift_rmse_px']:.3f} px "
          f"(ratio {result['rmse_ratio_cryolens_over_relion']}); load average {result['load_average_after']}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
