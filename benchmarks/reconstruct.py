"""Benchmark: ``cryolens reconstruct`` against ``relion_reconstruct`` on the same STAR file.

Simulates N particles (default 10 000, box 128, CTF, SNR 0.05) of the built-in
phantom with ``cryolens simulate particles``, then runs both programs on the same
``particles.star`` as separate processes under ``/usr/bin/time -v`` and reports wall
time, peak memory (max RSS) and the FSC-vs-truth resolution (0.5 and 0.143) of each
full map. Writes ``benchmarks/results/reconstruct.json``.

    python benchmarks/reconstruct.py [--n 10000] [--box 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from timing import timed

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def fsc_vs_truth(map_path: Path, truth: Path) -> dict:
    from cryolens.jobs.fsc_maps import fsc_between_files
    r = fsc_between_files(map_path, truth)
    return {"fsc_truth_0.5_A": round(r.resolution_at(0.5), 3), "fsc_truth_0.143_A": round(r.resolution_at(0.143), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pixel-size", type=float, default=1.5)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for cryolens (RELION's reconstruct is serial)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reconstruct.json")
    args = ap.parse_args()
    if shutil.which("relion_reconstruct") is None:
        raise SystemExit("relion_reconstruct not found: apt-get install relion")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryolens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cryolens = str(BIN / "cryolens")
    sim = timed([cryolens, "simulate", "particles", "--out", "sim", "--overwrite", "--n", str(args.n), "--box", str(args.box),
                 "--pixel-size", str(args.pixel_size), "--snr", str(args.snr), "--quiet", "--device", "cpu"], work)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    ours = timed([cryolens, "reconstruct", "--in", "sim/particles.star", "--out", "rec", "--overwrite", "--quiet", "--device", "cpu"],
                 work, env)
    # Both read the same STAR; RELION reconstructs all particles into one map.
    rel = timed(["relion_reconstruct", "--i", "sim/particles.star", "--o", "relion.mrc", "--ctf"], work)
    truth = work / "sim" / "truth_map.mrc"
    ours.update(fsc_vs_truth(work / "rec" / "map.mrc", truth))
    rel.update(fsc_vs_truth(work / "relion.mrc", truth))
    job = json.loads((work / "rec" / "job.json").read_text())
    ours["half_map_fsc_0.143_A"] = job["results"]["resolution_0143_A"]
    result = {
        "benchmark": "reconstruct", "n_particles": args.n, "box": args.box, "pixel_size_A": args.pixel_size,
        "snr": args.snr, "threads": args.threads, "simulate": sim, "cryolens": ours, "relion_reconstruct": rel,
        "time_ratio_relion_over_cryolens": round(rel["wall_s"] / ours["wall_s"], 2),
        "resolution_ratio_cryolens_over_relion": round(ours["fsc_truth_0.143_A"] / rel["fsc_truth_0.143_A"], 3),
        "workdir": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
