"""Benchmark: cryolens pickers against ``relion_autopick --LoG`` on the same simulated micrographs.

Simulates micrographs (carbon hole edge, two contaminant clusters, ice thickness variation;
no aggregates) of three particle shapes (the phantom, 150 Å, at 1.75 Å/px; ASPIRE's 70S
ribosome map clamped at 0, ~220 Å, at 2.5 Å/px; the apoferritin 24-mer, a hollow shell of
180 Å, at 1.75 and 1.2 Å/px), writes them as MRC files with a RELION 3.1
``micrographs.star`` per case, then

* cryolens: reads each MRC and runs ``cryolens.picking.pick_micrograph`` with the matched
  filter (default), LoG and templates (projections of the true map), timed per micrograph;
* RELION 3.1: ``relion_autopick --LoG`` over the diameter range 0.8-1.0 × d on the same STAR
  (whole run timed under GNU time, divided by the number of micrographs), its
  ``*_autopick.star`` read back;
* ASPIRE's APPLE picker (``aspire.apple.apple.Apple``, ASPIRE 0.14, GPL, so not a cryolens
  dependency: it runs in a subprocess with the interpreter of its own virtual environment,
  ``--apple-python``), one run per micrograph, timed under GNU time. APPLE's sizes are in
  pixels (``particle_size`` = d / pixel size); it drops a margin (99-100 px) on each side and
  keeps only the largest square left, so it picks nothing outside it (recall is capped). Its
  tau1/tau2 (windows taken as particle / as possibly particle) are set as fractions of the
  micrograph's query windows, 0.1/0.4 by default: APPLE's 0.03/0.3, meant for a sparse 4k
  micrograph, pick almost nothing on these crowded 1k ones, and the result is sensitive to them
  (first micrograph, F1: phantom 0.31 at 0.1/0.4, 0.55 at 0.15/0.5, 0.6 at 0.25/0.6; ribosome
  0.33 at 0.1/0.4, 0 picks at 0.15/0.5 and above). ``--apple-sweep`` gives it a fair chance: a grid
  of tau1 × tau2 × particle size (``particle_size`` as a fraction of the diameter) on each case's
  micrographs, reported as ``apple_best_of_sweep`` next to the default row ``apple`` (the best is
  chosen on the same micrographs it is scored on: tuned on the test data). Its centres come back as
  (x, y) = (column, row) in full-size micrograph pixels, with APPLE's own +1 offset (taken off here); the
  JSON also scores them swapped (``f1_if_row_col``) and gives the median offset of matched
  picks from the truth (``median_offset_xy_px``) to show the convention is right.

Accuracy: precision, recall and F1 with a match within 0.2 × diameter
(:func:`cryolens.picking.match_picks`), pooled over the micrographs of a case, twice: on all
true particles, and on the "clean" ones (disc not touching the carbon; picks matched to the
others ignored), the picker being asked to avoid the rims of carbon. Start-up is reported apart
(``startup``): RELION LoG run again on the first micrograph alone gives its fixed start-up and
marginal CPU per micrograph; the CPU time of a fresh Python importing torch and the picker is what
a cryolens job pays once (cryolens' per-micrograph times exclude it). Writes
``benchmarks/results/picking.json``::

    .venv/bin/python benchmarks/picking.py [--n 3] [--size 1024] [--height H] [--threads 2] [--no-relion]
        [--apple-python /work/aspire-venv/bin/python] [--apple-n N] [--apple-tau1 0.1] [--apple-tau2 0.4]
        [--apple-sweep [--apple-sweep-tau1 ...] [--apple-sweep-tau2 ...] [--apple-sweep-size ...]]
        [--pickers matched log template relion apple]

(``--size 3838 --height 3710`` gives micrographs of a K3 camera's shape.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
RIBOSOME = SHARED / "maps" / "clean70SRibosome_vol_65p.mrc"
sys.path.insert(0, str(HERE))
from timing import timed, write_results  # noqa: E402

#: case name -> (structure, pixel size Å)
CASES = {"phantom": ("phantom", 1.75), "ribosome": ("ribosome", 2.5), "apoferritin": ("apoferritin", 1.75),
         "apoferritin_1.2": ("apoferritin", 1.2)}
APPLE_PYTHON = Path("/work/aspire-venv/bin/python")
# argv: micrograph, particle size (px), output dir, threads, JSON path, tau1, tau2 (fractions);
# writes [[x, y], ...] (x = column, y = row)
# ASPIRE 0.14.3's APPLE opens the micrograph with no pixel size, which fails on an MRC whose
# header has one ("Mismatched pixel size"): the script hands it the header's. Its default tau1 and
# tau2 (3 % and 30 % of the query windows, the windows assumed to hold particles and those that
# may) count the windows of a 4000-px micrograph and overrun those of a smaller one (IndexError):
# they are given here as fractions of this micrograph's windows (--apple-tau1, --apple-tau2).
APPLE_SCRIPT = """
import json, sys
import aspire.apple.picking as picking
from aspire.apple.apple import Apple
from aspire.image import Image
mic, size, odir, threads, out, tau1, tau2 = sys.argv[1:]
source = picking.DiskMicrographSource
picking.DiskMicrographSource = lambda path, **kw: source(path, pixel_size=Image.load(path).pixel_size, **kw)
apple = Apple(particle_size=int(size), output_dir=odir, conv_map_nthreads=int(threads))
h, w = Image.load(mic).asnumpy().shape[-2:]
side = min(h - apple.mrc_margin_top - apple.mrc_margin_bottom, w - apple.mrc_margin_left - apple.mrc_margin_right)
windows = (side / apple.query_image_size) ** 2 * 4
apple.tau1, apple.tau2 = int(float(tau1) * windows), int(float(tau2) * windows)
centers = apple.process_micrograph_centers(mic)
with open(out, "w") as f:
    json.dump([[float(x), float(y)] for x, y in centers], f)
"""
METHODS = ("matched", "log", "template")


def structure(name: str, apix: float):
    """(volume, diameter Å, units) as in tests/test_picking.py."""
    from cryolens.jobs.structures import load_structures
    from cryolens.simulate.structures import phantom_structure

    if name == "phantom":
        box = int(round(150 / apix * 1.4 / 2)) * 2
        return phantom_structure(box, apix, diameter=150.0).volume, 150.0, "scattering"
    if name == "apoferritin":  # the shipped 24-mer (a shell of radii ~50-90 Å; ~30 s to build)
        s = load_structures(["apoferritin"], pixel_size=apix, box=int(round(225 / apix / 2)) * 2)[0]
        return s.volume, 180.0, s.units
    s = load_structures([f"{RIBOSOME}:apix=3.94"], pixel_size=apix, box=None)[0]
    return s.volume.clamp_min(0), 220.0, "arbitrary"  # negative background would read as lighter than ice


def simulate_case(name: str, apix: float, n: int, size: int, seed: int, work: Path, height: int | None = None) -> dict:
    """Write n micrographs + micrographs.star; return truth, CTFs and the volume."""
    import pandas as pd
    import starfile

    from cryolens.io import write_mrc
    from cryolens.simulate.micrographs import MicrographParams, simulate_micrograph

    vol, d, units = structure(name, apix)
    p = MicrographParams(n_micrographs=n, width=size, height=height or size, particles_per_micrograph=10_000, carbon=True,
                         contaminants=2, aggregates=0, defocus_min=8000, defocus_max=25000, seed=seed,
                         structure_units=units)
    (work / "Micrographs").mkdir(parents=True, exist_ok=True)
    mics = []
    for i in range(n):
        img, truth = simulate_micrograph([vol], None, pixel_size=apix, params=p, index=i)
        path = work / "Micrographs" / f"mic_{i:03d}.mrc"
        write_mrc(path, img.numpy(), apix)
        xy = truth.particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        e = truth.extras["carbon"]
        clean = (e.radius - np.hypot(xy[:, 0] - e.x, xy[:, 1] - e.y)) >= d / 2 / apix
        mics.append(dict(path=path, xy=xy, clean=clean, ctf=truth.ctf))
    c = mics[0]["ctf"]
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [apix], "rlnVoltage": [c["voltage"]],
                           "rlnSphericalAberration": [c["cs"]], "rlnAmplitudeContrast": [c["amplitude_contrast"]]})
    table = pd.DataFrame({"rlnMicrographName": [f"Micrographs/{m['path'].name}" for m in mics],
                          "rlnOpticsGroup": 1,
                          "rlnDefocusU": [m["ctf"]["defocus_u"] for m in mics],
                          "rlnDefocusV": [m["ctf"]["defocus_v"] for m in mics],
                          "rlnDefocusAngle": [m["ctf"]["defocus_angle"] for m in mics]})
    starfile.write({"optics": optics, "micrographs": table}, work / "micrographs.star", overwrite=True)
    return dict(mics=mics, diameter=d, volume=vol, apix=apix)


def accuracy(picks: list[np.ndarray], case: dict) -> dict:
    """Pooled precision/recall/F1 on all particles and on the clean ones."""
    from cryolens.picking import match_picks

    r = 0.2 * case["diameter"] / case["apix"]
    out = {}
    for label in ("all", "clean"):
        tp = fp = fn = 0
        for p, m in zip(picks, case["mics"]):
            p = np.asarray(p, dtype=float).reshape(-1, 2)
            if label == "clean":
                mm = match_picks(p, m["xy"], r)
                drop = np.zeros(len(p), dtype=bool)
                drop[mm.pairs[:, 0][~m["clean"][mm.pairs[:, 1]]]] = True
                res = match_picks(p[~drop], m["xy"][m["clean"]], r)
            else:
                res = match_picks(p, m["xy"], r)
            tp, fp, fn = tp + res.tp, fp + res.fp, fn + res.fn
        prec, rec = tp / max(1, tp + fp), tp / max(1, tp + fn)
        out[label] = dict(tp=tp, fp=fp, fn=fn, precision=round(prec, 3), recall=round(rec, 3),
                          f1=round(2 * tp / max(1, 2 * tp + fp + fn), 3))
    return out


def run_cryolens(case: dict, method: str) -> dict:
    import torch

    from cryolens.core.ctf import CTFParams
    from cryolens.io import read_mrc
    from cryolens.picking import PickParams, pick_micrograph

    times, cpu, picks = [], [], []
    for m in case["mics"]:
        c = m["ctf"]
        ctf = CTFParams(defocus_u=c["defocus_u"], defocus_v=c["defocus_v"], defocus_angle=c["defocus_angle"],
                        voltage=c["voltage"], cs=c["cs"], amplitude_contrast=c["amplitude_contrast"])
        t, c0 = time.perf_counter(), time.process_time()
        data, apix = read_mrc(m["path"])
        res = pick_micrograph(torch.from_numpy(np.array(data, dtype=np.float32)), pixel_size=case["apix"],
                              params=PickParams(diameter=case["diameter"], method=method), ctf=ctf,
                              volume=case["volume"], volume_pixel_size=case["apix"])
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c0)
        picks.append(res.xy().numpy())
    # median: the template picker's first micrograph also builds its template bank (first_micrograph_seconds)
    return dict(seconds_per_micrograph=round(float(np.median(times)), 3),
                cpu_seconds_per_micrograph=round(float(np.median(cpu)), 3),
                first_micrograph_seconds=round(times[0], 3), n_picks=int(sum(len(p) for p in picks)),
                **accuracy(picks, case))


def run_relion(case: dict, work: Path, threads: int, star: str = "micrographs.star") -> dict:
    import starfile

    d = case["diameter"]
    odir = work / "AutoPick"
    shutil.rmtree(odir, ignore_errors=True)
    cmd = ["relion_autopick", "--i", star, "--odir", "AutoPick/", "--pickname", "autopick", "--LoG",
           "--LoG_diam_min", f"{0.8 * d:g}", "--LoG_diam_max", f"{d:g}", "--angpix", f"{case['apix']:g}",
           "--shrink", "0", "--lowpass", "20", "--LoG_adjust_threshold", "0"]
    if threads > 1:
        cmd += ["--j", str(threads)]
    cost = timed(cmd, cwd=work, log=work / "relion_autopick.log", timeout=1800)
    picks = []
    for m in case["mics"]:
        found = list(odir.rglob(f"{m['path'].stem}_autopick.star"))
        if not found:
            picks.append(np.zeros((0, 2)))
            continue
        t = starfile.read(found[0], always_dict=True)
        t = next(iter(t.values()))
        picks.append(t[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float) if len(t) else np.zeros((0, 2)))
    n = len(case["mics"])
    return dict(seconds_per_micrograph=round(cost["wall_s"] / n, 3),
                cpu_seconds_per_micrograph=round(cost["cpu_s"] / n, 3) if cost.get("cpu_s") else None,
                peak_rss_mb=cost.get("peak_rss_mb"), n_picks=int(sum(len(p) for p in picks)),
                files_found=sum(1 for p in picks if len(p)), **accuracy(picks, case))


def startup(case: dict, work: Path, threads: int, full: dict) -> dict:
    """Fixed start-up against per-micrograph cost: RELION LoG again on the first micrograph alone (a line
    through the one- and n-micrograph runs, CPU s), and the CPU time of a fresh Python importing torch and the
    picker (what a cryolens job pays once before its first micrograph)."""
    import starfile

    t = starfile.read(work / "micrographs.star", always_dict=True)
    starfile.write({"optics": t["optics"], "micrographs": t["micrographs"].iloc[:1]}, work / "micrographs_1.star",
                   overwrite=True)
    one = run_relion(dict(case, mics=case["mics"][:1]), work, threads, star="micrographs_1.star")
    n = len(case["mics"])
    out = {}
    if one.get("cpu_seconds_per_micrograph") is not None and full.get("cpu_seconds_per_micrograph") is not None:
        total = full["cpu_seconds_per_micrograph"] * n
        marginal = (total - one["cpu_seconds_per_micrograph"]) / max(1, n - 1)
        out["relion_cpu_s_per_micrograph_marginal"] = round(marginal, 4)
        out["relion_cpu_s_startup"] = round(one["cpu_seconds_per_micrograph"] - marginal, 3)
    code = "import time; t = time.process_time(); import torch, cryolens.picking.picker; print(time.process_time() - t)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    out["cryolens_cpu_s_import"] = round(float(r.stdout.strip() or "nan"), 3)
    return out


def run_apple(case: dict, work: Path, python: Path, threads: int, tau: tuple[float, float],
              size_factor: float = 1.0) -> dict:
    """APPLE on each micrograph in its own process: median wall time, CPU and peak RSS per micrograph.
    ``tau``: APPLE's tau1, tau2 as fractions of the micrograph's query windows; ``size_factor``: APPLE's
    ``particle_size`` as a fraction of the diameter (its query window, 2/3 of it, and its min/max
    blob sizes, 1/4 and 2 × it, follow)."""
    size = int(round(size_factor * case["diameter"] / case["apix"]))
    odir = work / "Apple"
    shutil.rmtree(odir, ignore_errors=True)
    odir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)
    costs, picks, failed = [], [], []
    for m in case["mics"]:
        out = odir / f"{m['path'].stem}.json"
        try:
            cost = timed([str(python), "-c", APPLE_SCRIPT, str(m["path"]), str(size), str(odir), str(threads), str(out),
                          str(tau[0]), str(tau[1])],
                         cwd=work, env=env, log=odir / f"{m['path'].stem}.log", timeout=1800)
        except SystemExit as e:  # e.g. APPLE's MemoryError at large particle sizes: no picks on that micrograph
            last = [line for line in str(e).splitlines() if "Error" in line]
            failed.append(f"{m['path'].name}: {last[-1].strip() if last else 'failed'}")
            picks.append(np.zeros((0, 2)))
            continue
        costs.append(cost)
        xy = np.array(json.loads(out.read_text()), dtype=float).reshape(-1, 2) if out.exists() else np.zeros((0, 2))
        picks.append(xy - 1.0)  # APPLE adds 1 (1-based, RELION style); ours are 0-based
    swapped = accuracy([p[:, ::-1] for p in picks], case)
    from cryolens.picking import match_picks

    r = 0.2 * case["diameter"] / case["apix"]
    d = [p[mm.pairs[:, 0]] - m["xy"][mm.pairs[:, 1]]
         for p, m in zip(picks, case["mics"]) for mm in [match_picks(p, m["xy"], r)] if len(mm.pairs)]
    offset = np.median(np.concatenate(d), axis=0).round(2).tolist() if d else None
    if not costs:
        raise SystemExit("APPLE failed on every micrograph: " + "; ".join(failed))
    return dict(seconds_per_micrograph=round(float(np.median([c["wall_s"] for c in costs])), 3),
                cpu_seconds_per_micrograph=round(float(np.median([c["cpu_s"] or np.nan for c in costs])), 3),
                peak_rss_mb=max((c["peak_rss_mb"] or 0) for c in costs), particle_size_px=size, failed=failed,
                n_picks=int(sum(len(p) for p in picks)), **accuracy(picks, case),
                f1_if_row_col=dict(all=swapped["all"]["f1"], clean=swapped["clean"]["f1"]),
                median_offset_xy_px=offset, tau1=tau[0], tau2=tau[1], size_factor=size_factor)


def sweep_apple(case: dict, work: Path, python: Path, threads: int, tau1s: list[float], tau2s: list[float],
                size_factors: list[float]) -> dict:
    """APPLE over a grid of tau1 × tau2 × particle-size factor on this case's micrographs; the best F1
    (particles clear of the carbon) is chosen on these same micrographs, i.e. tuned on the test data."""
    grid, best = [], None
    for f in size_factors:
        for t1 in tau1s:
            for t2 in tau2s:
                if t2 <= t1:
                    continue
                try:
                    r = run_apple(case, work, python, threads, (t1, t2), f)
                except SystemExit as e:  # e.g. APPLE's IndexError when tau overruns the windows
                    grid.append(dict(tau1=t1, tau2=t2, size_factor=f, failed=str(e).splitlines()[-1][:200]))
                    print("  APPLE sweep", json.dumps(grid[-1]), flush=True)
                    continue
                grid.append(dict(tau1=t1, tau2=t2, size_factor=f, f1_all=r["all"]["f1"], f1_clean=r["clean"]["f1"],
                                 n_picks=r["n_picks"], seconds_per_micrograph=r["seconds_per_micrograph"]))
                print("  APPLE sweep", json.dumps(grid[-1]), flush=True)
                if best is None or r["clean"]["f1"] > best["clean"]["f1"]:
                    best = r
    if best is None:
        return dict(best=dict(note="every APPLE run of the sweep failed"), grid=grid)
    return dict(best=dict(best, note="best of the sweep, chosen on these same micrographs (tuned on the test data)"),
                grid=grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="micrographs per case")
    ap.add_argument("--size", type=int, default=1024, help="micrograph width (px)")
    ap.add_argument("--height", type=int, default=None, help="micrograph height (px; default: the width)")
    ap.add_argument("--seed", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--apple-python", type=Path, default=APPLE_PYTHON if APPLE_PYTHON.exists() else None,
                    help="Python interpreter with ASPIRE 0.14 installed, for APPLE (default: /work/aspire-venv/bin/python"
                         " if it exists; without one APPLE is skipped)")
    ap.add_argument("--apple-tau1", type=float, default=0.1,
                    help="APPLE's tau1, fraction of query windows taken as particles (APPLE: 0.03, for a sparse 4k"
                         " micrograph)")
    ap.add_argument("--apple-tau2", type=float, default=0.4,
                    help="APPLE's tau2, fraction of query windows that may hold particles (APPLE: 0.3)")
    ap.add_argument("--apple-n", type=int, default=None,
                    help="run APPLE on the first N micrographs of each case only (it takes minutes each; default: all);"
                         " its precision/recall/F1 are then over those micrographs")
    ap.add_argument("--apple-sweep", action="store_true",
                    help="also run APPLE over a grid of tau1 × tau2 × particle size and report the best (tuned on the"
                         " test data) next to the default row")
    ap.add_argument("--apple-sweep-tau1", type=float, nargs="+", default=[0.03, 0.1, 0.2, 0.3])
    ap.add_argument("--apple-sweep-tau2", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--apple-sweep-size", type=float, nargs="+", default=[0.8, 1.0],
                    help="APPLE particle_size as fractions of the diameter")
    ap.add_argument("--pickers", nargs="+", default=[*METHODS, "relion", "apple"], choices=[*METHODS, "relion", "apple"],
                    help="which pickers to run (default: all)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "picking.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    have_relion = shutil.which("relion_autopick") is not None and not args.no_relion and "relion" in args.pickers
    if "apple" not in args.pickers:
        args.apple_python = None
    elif args.apple_python is None:
        print("no --apple-python (ASPIRE) given and /work/aspire-venv/bin/python missing: skipping APPLE", flush=True)
    results = dict(n_micrographs=args.n, size=args.size, height=args.height or args.size, seed=args.seed, threads=args.threads,
                   load_start=os.getloadavg()[0], cases={})
    with tempfile.TemporaryDirectory(prefix="cryolens-pick-bench-") as tmp:
        for name in args.cases:
            work = Path(tmp) / name
            case = simulate_case(*CASES[name], args.n, args.size, args.seed, work, args.height)
            row = dict(pixel_size=case["apix"], diameter=case["diameter"],
                       n_true=int(sum(len(m["xy"]) for m in case["mics"])),
                       n_clean=int(sum(m["clean"].sum() for m in case["mics"])))
            for method in [m for m in METHODS if m in args.pickers]:
                row[f"cryolens_{method}"] = run_cryolens(case, method)
                print(name, method, json.dumps(row[f"cryolens_{method}"]), flush=True)
            if have_relion:
                row["relion_log"] = run_relion(case, work, args.threads)
                print(name, "relion LoG", json.dumps(row["relion_log"]), flush=True)
                row["startup"] = startup(case, work, args.threads, row["relion_log"])
                print(name, "start-up", json.dumps(row["startup"]), flush=True)
                rel = row["relion_log"]["seconds_per_micrograph"]
                for method in [m for m in METHODS if m in args.pickers]:
                    row[f"time_ratio_relion_over_cryolens_{method}"] = round(
                        rel / max(1e-9, row[f"cryolens_{method}"]["seconds_per_micrograph"]), 2)
            if args.apple_python is not None:
                few = dict(case, mics=case["mics"][:args.apple_n]) if args.apple_n else case
                try:
                    row["apple"] = dict(run_apple(few, work, args.apple_python, args.threads,
                                                 (args.apple_tau1, args.apple_tau2)), n_micrographs=len(few["mics"]))
                except SystemExit as e:
                    row["apple"] = dict(error=str(e)[:500], n_micrographs=len(few["mics"]))
                print(name, "APPLE", json.dumps(row["apple"]), flush=True)
                if args.apple_sweep:
                    sw = sweep_apple(few, work, args.apple_python, args.threads, args.apple_sweep_tau1,
                                     args.apple_sweep_tau2, args.apple_sweep_size)
                    row["apple_best_of_sweep"], row["apple_sweep"] = sw["best"], sw["grid"]
                    print(name, "APPLE best of sweep", json.dumps(sw["best"]), flush=True)
            results["cases"][name] = row
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))  # after every case: a later failure keeps these
    write_results(args.out, results)


if __name__ == "__main__":
    main()
