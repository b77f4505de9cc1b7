"""Benchmark: ``cryolens abinitio`` success rate, resolution against the truth and cost, per random seed.

Simulates N particles (default 5 000) of a structure at box 64, SNR 0.05 with CTF (``cryolens simulate
particles``), then for each seed runs ``cryolens abinitio`` (as its own process under ``/usr/bin/time -v``,
``--threads`` torch threads) and ``cryolens align-maps`` of its map onto the truth (either hand), and
reports wall time, CPU time (user + system: the fairer measure on a shared machine), peak memory and
the FSC 0.5 / 0.143 resolutions against the truth after alignment. A seed succeeds when FSC 0.5 is at
<= ``--target`` Å (25). Structures:

* ``ribosome``: the 70S map in ``../shared/data/maps`` at 3.94 Å/px (C1);
* ``apoferritin``: an O 24-mer of the real chain ``models/7A4M_box.pdb`` (built as in
  ``benchmarks/refine.py``, 165 Å across) at 3 Å/px, run with ``--sym O``.

Both run with abinitio's default options (the defaults must work without tuning).

``--relion`` also runs RELION 3.1's SGD initial model (``relion_refine --denovo_3dref --sgd`` with
the GUI's default schedule, ``--j`` = ``--threads``, ``--random_seed 1``: 0 would not shuffle) on
the same particles, stopped after ``--relion-timeout`` s (900): its last written map is aligned to
the truth the same way.

``--refine-seed S`` then runs ``cryolens refine`` twice, side by side, on the same particles (the
first ``--refine-n``, default all): from seed S's ab-initio map and from the truth low-passed to
40 Å (the refine benchmark's start), and reports the gold-standard resolution and FSC 0.5 / 0.143
with the truth after alignment of each.

``--seeds`` may be empty (only ``--relion`` or ``--refine-seed``, reusing the finished ab-initio
jobs in ``--work``). Writes ``benchmarks/results/abinitio_<structure>.json`` (or ``--out``).

    python benchmarks/abinitio.py [--structure ribosome|apoferritin] [--n 5000] [--seeds 0 1 2 3 4]
                                  [--threads 2] [--work DIR] [--extra "--iterations 40"]
                                  [--relion [--relion-timeout 900]] [--refine-seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from refine import symmetric_assembly, write_reference
from timing import timed

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DATA = HERE.parent.parent / "shared" / "data"
CASES = {
    "ribosome": dict(structure=str(DATA / "maps" / "clean70SRibosome_vol_65p.mrc"), pixel_size=3.94, sym="C1",
                     options=[], diameter=230.0),
    "apoferritin": dict(structure=None, pixel_size=3.0, sym="O", options=[], diameter=170.0),
}


def versus_truth(work: Path, truth: Path, volume: Path, sym: str, out: str, env: dict) -> dict:
    """FSC 0.5 / 0.143 (Å) of ``volume`` with ``truth`` after ``cryolens align-maps`` (either hand)."""
    timed([str(BIN / "cryolens"), "align-maps", str(truth), str(volume), "--sym", sym, "--out", out, "--overwrite",
           "--quiet", "--device", "cpu"], work, env)
    res = json.loads((work / out / "job.json").read_text())["results"]
    return dict(fsc05_vs_truth_A=res["resolution_05_A"], fsc0143_vs_truth_A=res["resolution_0143_A"],
                flipped=res["flipped"])


def run_relion_sgd(work: Path, sim: Path, case: dict, args, env: dict) -> dict:
    """RELION 3.1's SGD initial model (the GUI's defaults), stopped after ``args.relion_timeout`` s."""
    d = work / "relion_sgd"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    cmd = ["relion_refine", "--o", "relion_sgd/run", "--sgd_ini_iter", "50", "--sgd_inbetween_iter", "200",
           "--sgd_fin_iter", "50", "--sgd_write_iter", "10", "--sgd_ini_resol", "35", "--sgd_fin_resol", "15",
           "--sgd_ini_subset", "100", "--sgd_fin_subset", "500", "--sgd", "--denovo_3dref",
           "--i", str(sim / "particles.star"), "--ctf", "--K", "1", "--sym", case["sym"], "--flatten_solvent",
           "--zero_mask", "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "1", "--skip_gridding",
           "--particle_diameter", str(case["diameter"]), "--oversampling", "1", "--healpix_order", "1",
           "--offset_range", "6", "--offset_step", "2", "--random_seed", "1", "--j", str(args.threads)]
    r = timed(cmd, work, env, log=work / "relion_sgd.log", timeout=args.relion_timeout)
    maps = sorted(d.glob("run_it*_class001.mrc"))
    log = (work / "relion_sgd.log").read_text(errors="replace")
    started = re.findall(r"Stochastic Gradient Descent iteration (\d+) of", log)
    r.update(tool="relion_refine --sgd", last_iteration=None, finished=(d / "run_it300_class001.mrc").exists(),
             iterations_started=int(started[-1]) if started else 0)
    if maps:
        r["last_iteration"] = int(re.search(r"_it(\d+)_", maps[-1].name).group(1))
        r.update(versus_truth(work, sim / "truth_map.mrc", maps[-1], case["sym"], "align_relion", env))
    return r


def first_particles(sim: Path, n: int | None) -> Path:
    """``sim/particles.star``, or a STAR of its first ``n`` particles beside it."""
    if n is None:
        return sim / "particles.star"
    from cryolens.io import read_particles, write_particles
    optics, parts = read_particles(sim / "particles.star")
    path = sim / f"first{n}.star"
    write_particles(path, optics, parts.iloc[:n])
    return path


def refine_from(work: Path, sim: Path, star: Path, ref: Path, case: dict, out: str, env: dict) -> dict:
    """``cryolens refine`` of ``star`` from ``ref``: own FSC 0.143 and FSC with the truth."""
    r = timed([str(BIN / "cryolens"), "refine", "--in", str(star), "--ref", str(ref), "--sym",
               case["sym"], "--particle-diameter", str(case["diameter"]), "--out", out, "--overwrite", "--quiet",
               "--device", "cpu"], work, env, log=work / f"{out}.log")
    own = json.loads((work / out / "job.json").read_text())["results"]
    r.update(start=str(ref.relative_to(work)), particles=own["n_particles_half1"] + own["n_particles_half2"],
             own_resolution_0143_A=own["resolution_0143_A"],
             iterations=own["iterations"], converged=own["converged"])
    r.update(versus_truth(work, sim / "truth_map.mrc", work / out / "map.mrc", case["sym"], f"align_{out}", env))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--structure", choices=list(CASES), default="ribosome")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=25.0)
    ap.add_argument("--extra", default="", help="further abinitio options, one string")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--relion", action="store_true", help="also RELION 3.1's SGD initial model")
    ap.add_argument("--relion-timeout", type=float, default=900.0)
    ap.add_argument("--refine-seed", type=int, default=None,
                    help="refine from this seed's map and from the truth at 40 Å")
    ap.add_argument("--refine-n", type=int, default=None, help="refine only the first N particles")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    case = CASES[args.structure]
    work = args.work or Path(tempfile.mkdtemp(prefix="cryolens_abinitio_"))
    work.mkdir(parents=True, exist_ok=True)
    cryolens = str(BIN / "cryolens")
    structure = case["structure"]
    if structure is None:
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
                   *case["options"], *shlex.split(args.extra), "--out", out, "--overwrite", "--quiet", "--device",
                   "cpu"], work, env, log=work / f"{out}.log")
        own = json.loads((work / out / "job.json").read_text())["results"]
        r.update(seed=seed, own_half_map_resolution_A=own["resolution_0143_A"])
        r.update(versus_truth(work, sim / "truth_map.mrc", work / out / "map.mrc", case["sym"], f"align_s{seed}", env))
        r["success"] = r["fsc05_vs_truth_A"] <= args.target
        runs.append(r)
        print(json.dumps(r), flush=True)
    summary = dict(structure=args.structure, n=args.n, box=args.box, snr=args.snr, threads=args.threads,
                   successes=sum(r["success"] for r in runs), runs=runs)
    if args.relion:
        summary["relion_sgd"] = run_relion_sgd(work, sim, case, args, env)
        print(json.dumps(summary["relion_sgd"]), flush=True)
    if args.refine_seed is not None:
        truth40 = work / "truth_40A.mrc"
        write_reference(sim / "truth_map.mrc", truth40, 40.0)
        star = first_particles(sim, args.refine_n)
        starts = [(work / f"abinitio_s{args.refine_seed}" / "map.mrc", f"refine_from_s{args.refine_seed}"),
                  (truth40, "refine_from_truth40")]
        with ThreadPoolExecutor(2) as pool:  # two processes side by side: the same load for both
            summary["refine"] = list(pool.map(lambda a: refine_from(work, sim, star, a[0], case, a[1], env), starts))
        for r in summary["refine"]:
            print(json.dumps(r), flush=True)
    summary["load_average"] = os.getloadavg()
    out_file = args.out or HERE / "results" / f"abinitio_{args.structure}.json"
    out_file.parent.mkdir(exist_ok=True)
    out_file.write_text(json.dumps(summary, indent=1))
    if runs:
        print(f"{summary['successes']}/{len(runs)} seeds reach FSC 0.5 <= {args.target} Å against the truth")


if __name__ == "__main__":
    main()
