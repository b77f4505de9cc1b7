"""Benchmark: ``cryolens refine`` against ``relion_refine_mpi --auto_refine`` on the same particles.

Simulates N particles (default 2 000) of the 70S ribosome map in ``../shared/data/maps`` at box 64,
4 Å/px, SNR 0.05 with CTF (``cryolens simulate particles``), writes the truth low-passed to 40 Å
as the common starting reference, then runs both refinements on the same ``particles.star`` as
separate processes under ``/usr/bin/time -v`` (RELION: ``mpirun -n 3`` for its two half-set
ranks plus the leader; cryolens with ``--threads`` torch threads) and reports, for each:

* wall time and peak memory;
* gold-standard resolution: FSC 0.143 between the half maps (one FSC code for both, soft
  spherical mask of the particle diameter), and FSC 0.5/0.143 of the final map against the truth;
* median/mean angular error of the refined poses against the true poses (modulo symmetry) and
  the median origin error.

RELION needs about an hour per 1 000 of these particles on 2 cores: ``--relion-timeout S`` stops
it after S seconds and scores its last finished iteration (the mean of its two half maps then
stands in for the final map).

``--sym-cases`` adds two assemblies of the real apoferritin chain (``models/7A4M_box.pdb``)
made with cryolens's O and D7 operators, refined by cryolens with the right symmetry and with
C1 (what symmetry buys), and checks the operators against RELION's: ``relion_reconstruct --sym``
and ``cryolens reconstruct --sym`` on the refined STAR must give the same map (``--sym-n``
particles each). ``--quick`` is a small run (300 particles, cap of 8 iterations). Writes
``benchmarks/results/refine.json`` (or ``refine_quick.json``).

    python benchmarks/refine.py [--quick] [--n 2000] [--threads 2] [--no-relion] [--relion-timeout S]
                                [--sym-cases [--sym-n N] [--skip-ribosome]] [--box 64] [--pixel-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from timing import timed

from cryolens.refine.params import RefineParams

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DATA = HERE.parent.parent / "shared" / "data"
RIBOSOME = DATA / "maps" / "clean70SRibosome_vol_65p.mrc"
APOFERRITIN = DATA / "models" / "7A4M_box.pdb"


def write_reference(truth: Path, out: Path, resolution: float) -> None:
    from cryolens.core.fourier import bandpass
    import numpy as np
    import torch
    from cryolens.io import read_mrc, write_mrc
    vol, apix = read_mrc(truth)
    write_mrc(out, bandpass(torch.as_tensor(np.array(vol)), pixel_size=apix, high_res=resolution, ndim=3).numpy(), apix)


def evaluate(star: Path, half1: Path, half2: Path, full: Path, truth_star: Path, truth_map: Path, *, sym: str,
             diameter: float) -> dict:
    """Resolutions (same FSC code for every program) and pose errors against the simulation's truth."""
    import numpy as np
    import torch
    from cryolens.core.fsc import fsc
    from cryolens.core.masks import soft_sphere
    from cryolens.core.rotations import geodesic_distance
    from cryolens.core.symmetry import symmetry_matrices
    from cryolens.io import read_mrc, read_particles
    from cryolens.particles import origins_px_from_table, rotations_from_table
    from cryolens.io import merge_optics

    h1, apix = read_mrc(half1)
    h2, _ = read_mrc(half2)
    m, _ = read_mrc(full)
    t, _ = read_mrc(truth_map)
    n = h1.shape[0]
    mask = soft_sphere(n, radius=diameter / 2 / apix, edge_width=5)
    T = lambda a: torch.as_tensor(np.array(a, dtype=np.float32))  # noqa: E731
    gold = fsc(T(h1), T(h2), pixel_size=apix, mask=mask)
    vs_truth = fsc(T(m), T(t), pixel_size=apix, mask=mask)
    o1, p1 = read_particles(star)
    o2, p2 = read_particles(truth_star)
    a, b = merge_optics(o1, p1), merge_optics(o2, p2)
    b = b.set_index("rlnImageName").loc[a["rlnImageName"]].reset_index()
    g = symmetry_matrices(sym)
    ang = geodesic_distance(rotations_from_table(a)[:, None] @ g[None], rotations_from_table(b)[:, None]).amin(1)
    sh = (origins_px_from_table(a) - origins_px_from_table(b)).norm(dim=1) * apix
    return {"gold_fsc_0.143_A": round(gold.resolution_at(0.143), 2),
            "fsc_truth_0.5_A": round(vs_truth.resolution_at(0.5), 2),
            "fsc_truth_0.143_A": round(vs_truth.resolution_at(0.143), 2),
            "median_angle_error_deg": round(float(ang.median()), 2), "mean_angle_error_deg": round(float(ang.mean()), 2),
            "fraction_angle_error_over_10deg": round(float((ang > 10).float().mean()), 3),
            "median_origin_error_A": round(float(sh.median()), 2)}


def simulate(work: Path, name: str, structure: str, args, *, seed: int = 1) -> Path:
    cryolens = str(BIN / "cryolens")
    timed([cryolens, "simulate", "particles", "--structure", structure, "--map-pixel-size", str(args.pixel_size),
           "--pixel-size", str(args.pixel_size), "--box", str(args.box), "--n", str(args.n), "--snr", str(args.snr),
           "--defocus", "10000", "25000", "--max-shift", "4", "--seed", str(seed), "--out", name, "--overwrite", "--quiet",
           "--device", "cpu"], work)
    write_reference(work / name / "truth_map.mrc", work / name / "ref_40A.mrc", args.ini_high)
    return work / name


def run_cryolens(work: Path, sim: Path, out: str, args, *, sym: str = "C1", eval_sym: str | None = None) -> dict:
    """Refine with ``sym``; pose errors are taken modulo ``eval_sym`` (the structure's true symmetry)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    r = timed([str(BIN / "cryolens"), "refine", "--in", str(sim / "particles.star"), "--ref", str(sim / "ref_40A.mrc"),
               "--ini-high", str(args.ini_high), "--sym", sym, "--particle-diameter", str(args.diameter),
               "--max-iter", str(args.max_iter), "--out", out, "--overwrite", "--quiet", "--device", "cpu"], work, env,
              log=work / f"{out}.log")
    job = json.loads((work / out / "job.json").read_text())
    r.update(iterations=job["results"]["iterations"], converged=job["results"]["converged"],
             own_resolution_A=job["results"]["resolution_0143_A"])
    r.update(evaluate(work / out / "particles.star", work / out / "half1.mrc", work / out / "half2.mrc",
                      work / out / "map.mrc", sim / "particles.star", sim / "truth_map.mrc", sym=eval_sym or sym,
                      diameter=args.diameter))
    return r


def relion_outputs(work: Path) -> tuple[dict, int | None, bool]:
    """RELION's final files, or, for a run stopped early, its last finished iteration's.

    Per-iteration maps are the two half reconstructions only; their mean stands in for the full map.
    Returns ``(paths, iteration, finished)``.
    """
    d = work / "relion"
    its = sorted(d.glob("run_it*_data.star"))
    last = int(re.search(r"_it(\d+)_", its[-1].name).group(1)) if its else None
    if (d / "run_data.star").exists():
        return ({"star": d / "run_data.star", "half1": d / "run_half1_class001_unfil.mrc",
                 "half2": d / "run_half2_class001_unfil.mrc", "full": d / "run_class001.mrc"}, last, True)
    if last is None:
        raise SystemExit("RELION finished no iteration: nothing to score")
    import numpy as np
    from cryolens.io import read_mrc, write_mrc
    stem = d / f"run_it{last:03d}"
    (h1, apix), (h2, _) = (read_mrc(f"{stem}_half{h}_class001.mrc") for h in (1, 2))
    full = d / f"run_it{last:03d}_mean_of_halves.mrc"
    write_mrc(full, ((np.asarray(h1) + np.asarray(h2)) / 2).astype(np.float32), apix)
    return ({"star": Path(f"{stem}_data.star"), "half1": Path(f"{stem}_half1_class001.mrc"),
             "half2": Path(f"{stem}_half2_class001.mrc"), "full": full}, last, False)


def run_relion(work: Path, sim: Path, args) -> dict:
    """``relion_refine_mpi --auto_refine`` (3 ranks); stopped after ``args.relion_timeout`` s when given."""
    (work / "relion").mkdir(exist_ok=True)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", "relion_refine_mpi",
           "--o", "relion/run", "--auto_refine", "--split_random_halves", "--i", str(sim / "particles.star"),
           "--ref", str(sim / "ref_40A.mrc"), "--firstiter_cc", "--ini_high", str(args.ini_high),
           "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "2", "--ctf",
           "--particle_diameter", str(args.diameter), "--flatten_solvent", "--zero_mask", "--oversampling", "1",
           "--healpix_order", "2", "--auto_local_healpix_order", "4", "--offset_range", "5", "--offset_step", "2",
           "--sym", "C1", "--low_resol_join_halves", "40", "--norm", "--scale", "--j", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = timed(cmd, work, env, log=work / "relion.log", timeout=args.relion_timeout)
    files, r["iterations"], r["finished"] = relion_outputs(work)
    r.update(evaluate(files["star"], files["half1"], files["half2"], files["full"], sim / "particles.star",
                      sim / "truth_map.mrc", sym="C1", diameter=args.diameter))
    return r


def symmetric_assembly(work: Path, sym: str) -> Path:
    """A ``sym`` assembly of the real apoferritin chain (``models/7A4M_box.pdb``), written as a PDB
    (:func:`cryolens.simulate.assembly.symmetric_assembly`: O gives a 24-mer like apoferritin, D7 a
    double heptameric ring)."""
    import gemmi

    from cryolens.simulate.assembly import symmetric_assembly as assemble
    path = work / f"apoferritin_{sym}.pdb"
    st = assemble(gemmi.read_structure(str(APOFERRITIN)), sym)
    st.write_pdb(str(path))
    print(f"{sym}: {len(st[0])} apoferritin chains", flush=True)
    return path


def relion_symmetry_check(work: Path, refined: str, sym: str, pixel_size: float) -> dict:
    """``relion_reconstruct --sym`` and ``cryolens reconstruct --sym`` on cryolens's refined STAR: same map?"""
    import mrcfile
    import numpy as np
    import torch
    from cryolens.core.fsc import fsc
    star = f"{refined}/particles.star"
    timed(["relion_reconstruct", "--i", star, "--o", f"{refined}_relion_{sym}.mrc", "--ctf", "--sym", sym], work,
          log=work / f"{refined}_relion_reconstruct.log")
    timed([str(BIN / "cryolens"), "reconstruct", "--in", star, "--sym", sym, "--out", f"{refined}_rec", "--overwrite", "--quiet",
           "--device", "cpu"], work)
    a = torch.tensor(mrcfile.read(work / f"{refined}_rec" / "map.mrc"))
    b = torch.tensor(mrcfile.read(work / f"{refined}_relion_{sym}.mrc"))
    curve = fsc(a, b, pixel_size=pixel_size)
    corr = float(np.corrcoef(a.reshape(-1).numpy(), b.reshape(-1).numpy())[0, 1])
    return {"real_space_correlation": round(corr, 4), "fsc_0.9_A": round(curve.resolution_at(0.9), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 particles, at most 8 iterations")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--pixel-size", type=float, default=4.0)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--ini-high", type=float, default=RefineParams().ini_high,
                    help="initial low-pass (Å) for both tools; default cryolens refine's")
    ap.add_argument("--diameter", type=float, default=220.0, help="particle (mask) diameter, Å")
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--relion-timeout", type=float, default=None,
                    help="stop RELION after this many seconds and score its last finished iteration")
    ap.add_argument("--sym-cases", action="store_true", help="also O and D7 assemblies, right symmetry vs C1")
    ap.add_argument("--sym-n", type=int, default=None, help="particles of the symmetric cases (default: --n)")
    ap.add_argument("--skip-ribosome", action="store_true", help="only the symmetric cases")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.n = args.n or (300 if args.quick else 2000)
    args.max_iter = args.max_iter or (8 if args.quick else 15)
    out = args.out or HERE / "results" / ("refine_quick.json" if args.quick else "refine.json")
    if not args.no_relion and shutil.which("relion_refine_mpi") is None:
        raise SystemExit("relion_refine_mpi not found: apt-get install relion (or pass --no-relion)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryolens-bench-refine-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "refine", "n_particles": args.n, "box": args.box, "pixel_size_A": args.pixel_size,
              "snr": args.snr, "ini_high_A": args.ini_high, "threads": args.threads, "workdir": str(work),
              "note": "wall times on a shared 2-core machine are noisy; compare ratios from one run"}
    if not args.skip_ribosome:
        sim = simulate(work, "sim", str(RIBOSOME), args)
        result["cryolens"] = run_cryolens(work, sim, "cryolens", args)
        print(json.dumps(result["cryolens"], indent=2), flush=True)
    if not args.no_relion and not args.skip_ribosome:
        result["relion"] = run_relion(work, sim, args)
        c, r = result["cryolens"], result["relion"]
        result["time_ratio_relion_over_cryolens"] = round(r["wall_s"] / c["wall_s"], 2)
        result["gold_resolution_ratio_cryolens_over_relion"] = round(c["gold_fsc_0.143_A"] / r["gold_fsc_0.143_A"], 3)
        result["truth_resolution_ratio_cryolens_over_relion"] = round(c["fsc_truth_0.143_A"] / r["fsc_truth_0.143_A"], 3)
        if r["cpu_s"] is not None:
            result["cpu_ratio_relion_over_cryolens"] = round(r["cpu_s"] / max(c["cpu_s"], 1e-3), 2)
    if args.sym_cases:
        cases = {}
        sym_args = argparse.Namespace(**{**vars(args), "n": args.sym_n or args.n})
        result["symmetric_n_particles"] = sym_args.n
        for sym in ("O", "D7"):
            s = simulate(work, f"sim_{sym}", str(symmetric_assembly(work, sym)), sym_args, seed=2)
            right = run_cryolens(work, s, f"cryolens_{sym}", args, sym=sym)
            if shutil.which("relion_reconstruct"):
                right["relion_reconstruct_same_star"] = relion_symmetry_check(work, f"cryolens_{sym}", sym,
                                                                              args.pixel_size)
            cases[sym] = {"right_symmetry": right,
                          "C1": run_cryolens(work, s, f"cryolens_{sym}_c1", args, sym="C1", eval_sym=sym)}
            print(json.dumps(cases[sym], indent=2), flush=True)
        result["symmetric"] = cases
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
