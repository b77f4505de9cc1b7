"""Benchmark: ``cryolens abinitio`` success rate, resolution against the truth and cost, per random seed.

Simulates N particles (default 5 000) of a structure at box 64, SNR 0.05 with CTF (``cryolens simulate
particles``), then for each seed runs ``cryolens abinitio`` (as its own process under ``/usr/bin/time -v``,
``--threads`` torch threads) and ``cryolens align-maps`` of its map onto the truth (either hand), and
reports wall time, CPU time (user + system: the fairer measure on a shared machine), peak memory and
the FSC 0.5 / 0.143 resolutions against the truth after alignment. A seed succeeds when FSC 0.5 is at
<= ``--target`` Å (25). Structures:

* ``ribosome``: the 70S map in ``../shared/data/maps`` at 3.94 Å/px (C1);
* ``apoferritin``: an O 24-mer of the real chain ``models/7A4M_box.pdb`` (built as in
  ``benchmarks/refine.py``, 165 Å across) at 3 Å/px, run with ``--sym O`` and higher resolution limits.

RELION's SGD initial model is not run here yet (the issue's comparison is still to do).
Writes ``benchmarks/results/abinitio_<structure>.json``.

    python benchmarks/abinitio.py [--structure ribosome|apoferritin] [--n 5000] [--seeds 0 1 2 3 4]
                                  [--threads 2] [--work DIR] [--extra "--iterations 40"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

from timing import timed

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DATA = HERE.parent.parent / "shared" / "data"
CASES = {
    "ribosome": dict(structure=str(DATA / "maps" / "clean70SRibosome_vol_65p.mrc"), pixel_size=3.94, sym="C1",
                     options=[]),
    "apoferritin": dict(structure=None, pixel_size=3.0, sym="O",
                        options=["--ini-resolution", "20", "--final-resolution", "10"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--structure", choices=list(CASES), default="ribosome")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=25.0)
    ap.add_argument("--extra", default="", help="further abinitio options, one string")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    case = CASES[args.structure]
    work = args.work or Path(tempfile.mkdtemp(prefix="cryolens_abinitio_"))
    work.mkdir(parents=True, exist_ok=True)
    cryolens = str(BIN / "cryolens")
    structure = case["structure"]
    if structure is None:
        from refine import symmetric_assembly
        structure = str(symmetric_assembly(work, case["sym"]))
    sim = work / "sim"
    if not (sim / "particles.star").is_file():
        map_apix = ["--map-pixel-size", str(case["pixel_size"])] if structure.endswith(".mrc") else []
        timed([cryolens, "simulate", "particles", "--structure", structure, *map_apix,
               "--pixel-size", str(case["pixel_size"]), "--box", str(args.box), "--n", str(args.n), "--snr",
               str(args.snr), "--seed", "1", "--out", "sim", "--quiet", "--device", "cpu"], work)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    runs = []
    for seed in args.seeds:
        out = f"abinitio_s{seed}"
        r = timed([cryolens, "abinitio", "--in", str(sim / "particles.star"), "--sym", case["sym"], "--seed", str(seed),
                   *case["options"], *shlex.split(args.extra), "--out", out, "--quiet", "--device", "cpu"], work, env,
                  log=work / f"{out}.log")
        a = timed([cryolens, "align-maps", str(sim / "truth_map.mrc"), str(work / out / "map.mrc"), "--sym",
                   case["sym"], "--out", f"align_s{seed}", "--quiet", "--device", "cpu"], work, env)
        res = json.loads((work / f"align_s{seed}" / "job.json").read_text())["results"]
        own = json.loads((work / out / "job.json").read_text())["results"]
        r.update(seed=seed, fsc05_vs_truth_A=res["resolution_05_A"], fsc0143_vs_truth_A=res["resolution_0143_A"],
                 flipped=res["flipped"], own_half_map_resolution_A=own["resolution_0143_A"],
                 success=res["resolution_05_A"] <= args.target, align_wall_s=a["wall_s"])
        runs.append(r)
        print(json.dumps(r), flush=True)
    summary = dict(structure=args.structure, n=args.n, box=args.box, snr=args.snr, threads=args.threads,
                   load_average=os.getloadavg(), successes=sum(r["success"] for r in runs), runs=runs)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"abinitio_{args.structure}.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['successes']}/{len(runs)} seeds reach FSC 0.5 <= {args.target} Å against the truth")


if __name__ == "__main__":
    main()
