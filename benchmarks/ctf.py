"""Benchmark: cryolens CTF estimation against ASPIRE's ``CtfEstimator`` on the same micrographs.

Simulates N micrographs with ``cryolens simulate micrographs`` (the benchmark preset, known
defocus in micrographs.star) and adds the two real micrographs of ../shared/data
(epu2.9_example.mrc, fei-extended.mrc; nominal defocus only). cryolens runs in this process
(read + power spectrum + fit, per micrograph); ASPIRE (PyPI ``aspire``) runs in a subprocess
of its own virtual environment, this same file in ``--aspire-worker`` mode, replaying the
steps of ``aspire.ctf.estimate_ctf`` per micrograph (multitaper PSD, background, 1-D defocus,
PCA astigmatism, gradient descent from 6 angles) so that each micrograph is timed on its
own; the Fourier-Bessel basis built once per pixel size is timed apart (``setup_s``).

Reports time per micrograph, median relative errors |ΔU|/U and |ΔV|/V and the median angle
error (micrographs with |U − V| > 200 Å) against the truth, the time ratio, and the values
on the real micrographs and on RELION's real beta-gal power spectrum (ASPIRE from the same
spectrum, its PSD step skipped). Writes ``benchmarks/results/ctf.json``; with ``--docs`` also
``docs/ctf_epu.png``, ``docs/ctf_fei.png`` (diagnostics), ``docs/ctf_betagal_ps.png`` and
``docs/ctf_{epu,fei}_candidates.png`` (the rings of competing defocus values over the raw spectrum)
and ``docs/ctf_betagal_ps_fit.png``; ``--docs-only`` writes just those.

Times are wall-clock and CPU seconds (process time, all threads) per micrograph, median over
the simulated ones (cryolens's also split into read, spectrum and fit); CPU time is the steadier
measure on a shared machine, and the 1-minute load average at the start and end is recorded.
Both programs get the same thread count (``--threads``: torch threads, OMP/MKL/OpenBLAS
threads of the ASPIRE process); cryolens's fit itself runs on one of them (latency-bound, see
``cryolens.ctf.scoring.one_cpu_thread``), its power spectrum on all. ASPIRE lives in its own venv, so the project's stays clean::

    python3 -m venv .venv-aspire && .venv-aspire/bin/pip install torch==2.13.0 && .venv-aspire/bin/pip install aspire
    .venv/bin/python benchmarks/ctf.py [--n 6] [--size 2048 2048] [--threads 2] [--docs]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ASPIRE_PY = ROOT / ".venv-aspire" / "bin" / "python"
SHARED = ROOT.parent / "shared" / "data"
BETAGAL_PS = SHARED / "metadata/relion5_betagal_project/MotionCorr/job002/Movies/20170629_00021_frameImage_PS.mrc"
#: The real micrographs: (name, file, pixel size Å, nominal defocus Å); Titan Krios, 300 kV, Cs 2.7 mm assumed.
REAL = [("epu", SHARED / "micrographs/epu2.9_example.mrc", 0.6666, 18000.0),
        ("fei", SHARED / "micrographs/fei-extended.mrc", 0.8538, 9000.0)]
BETAGAL = dict(pixel_size=1.3996, voltage=200.0, cs=1.4, amplitude_contrast=0.1)
CANDIDATES = [("rotational-average candidate", 10700.0, 10700.0, 0.0), ("CTFFIND 4.1.14", 37034.9, 35846.5, -14.85)]


# ----------------------------------------------------------------------------- ASPIRE (its own venv)


def aspire_worker(job_path: Path) -> None:
    """Run in .venv-aspire: fit every micrograph (or given PS) of the job JSON; print JSON results."""
    import mrcfile
    import numpy as np
    from aspire.basis import FFBBasis2D
    from aspire.ctf.ctf_estimator import CtfEstimator
    from aspire.image import Image
    from aspire.utils import voltage_to_wavelength

    job = json.loads(job_path.read_text())
    out = {"results": {}, "setup_s": {}}
    dtype = np.float32
    for group in job["groups"]:
        t = time.perf_counter()
        psd, ntap = group["psd_size"], 2
        q = group["amplitude_contrast"]
        amp_phase = float(np.arctan(q / np.sqrt(1 - q * q)))  # estimate_ctf passes the phase, not Q0
        est = CtfEstimator(group["pixel_size"], group["cs"], amp_phase, group["voltage"], psd, ntap, dtype=dtype)
        basis = FFBBasis2D((psd, psd), 2, dtype=dtype)
        lmbd = voltage_to_wavelength(group["voltage"]) / 10  # nm
        tapers = est.tapers(psd, ntap / 2, ntap)
        from aspire.utils import grid_2d
        grid = grid_2d(psd, normalized=True, indexing="yx", dtype=dtype)
        r_ctf, theta = grid["r"] / 2 * (10 / group["pixel_size"]), grid["phi"]
        out["setup_s"][group["name"]] = time.perf_counter() - t
        for item in group["items"]:
            t, c = time.perf_counter(), time.process_time()
            if item.get("is_ps"):
                with mrcfile.open(item["path"], permissive=True) as m:
                    observed = Image(np.asarray(m.data, dtype=dtype).reshape(1, psd, psd))
            else:
                with mrcfile.open(item["path"], permissive=True) as m:
                    mic = np.asarray(m.data).astype(dtype)
                observed = est.estimate_psd(est.preprocess_micrograph(mic, psd), tapers)
            amp, _ = est.elliptical_average(basis, observed, True)
            s1d, bg1d = est.background_subtract_1d(amp, linprog_method="highs")
            mean_df, _ = est.opt1d(s1d, group["pixel_size"], group["cs"], lmbd, amp_phase, observed.shape[-1])
            signal, bg2d = est.background_subtract_2d(observed, bg1d, 12)
            ratio = est.pca(observed, group["pixel_size"], group["g_min"], group["g_max"])
            signal, _ = est.elliptical_average(basis, signal.sqrt(), False)
            df1 = mean_df * 2 / (1 + ratio)
            df2 = mean_df * 2 - df1
            best = None
            for a in range(6):
                d1, d2, ang, p = est.gd(signal, df1, df2, -5 / 12 * np.pi + a * np.pi / 6, r_ctf, theta,
                                        group["pixel_size"], group["g_min"], group["g_max"], amp_phase, lmbd,
                                        group["cs"])
                if best is None or p > best[3]:
                    best = (d1, d2, ang, p)
            out["results"][item["key"]] = {"u": float(best[0]) * 10, "v": float(best[1]) * 10,
                                           "angle_deg": math.degrees(float(best[2])),
                                           "seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    print(json.dumps(out))


def run_aspire(groups: list[dict], work: Path, threads: int) -> dict | None:
    """ASPIRE's results per key (RELION form: U ≥ V, angle in degrees) or None without its venv."""
    if not ASPIRE_PY.is_file():
        print(f"ASPIRE's venv {ASPIRE_PY.parent.parent} is absent; create it to compare:\n"
              "  python3 -m venv .venv-aspire && .venv-aspire/bin/pip install torch==2.13.0 && "
              ".venv-aspire/bin/pip install aspire\nrunning cryolens alone.")
        return None
    job = work / "aspire_job.json"
    job.write_text(json.dumps({"groups": groups}))
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    cwd = work / "aspire_cwd"  # ASPIRE writes logs/ where it is imported
    cwd.mkdir(exist_ok=True)
    t = time.perf_counter()
    p = subprocess.run([str(ASPIRE_PY), str(Path(__file__).resolve()), "--aspire-worker", str(job)], cwd=cwd,
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"ASPIRE worker failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    for r in res["results"].values():
        # ASPIRE's angle is mirrored about the diagonal relative to RELION's (its PSD is transposed
        # somewhere in its pipeline): measured on the simulated micrographs, RELION = 90° - ASPIRE.
        r["angle_raw_deg"] = r["angle_deg"]
        r["angle_deg"] = 90.0 - r["angle_deg"]
        if r["u"] < r["v"]:
            r["u"], r["v"], r["angle_deg"] = r["v"], r["u"], r["angle_deg"] + 90.0
        r["angle_deg"] = (r["angle_deg"] + 90.0) % 180.0 - 90.0
    return res


# ----------------------------------------------------------------------------- cryolens (this process)


def cryolens_fit(path: Path, *, pixel_size: float, voltage: float, cs: float, amplitude_contrast: float, params,
                 is_ps: bool = False, stages: dict | None = None):
    """(fit, seconds, cpu seconds): read + power spectrum + fit, as one unit of ``cryolens ctf`` without
    the plots; ``stages`` (if given) receives the CPU seconds of ``read``, ``spectrum`` and ``fit``."""
    import numpy as np
    import torch
    from cryolens.ctf import fit_ctf, power_spectrum
    from cryolens.io import read_mrc

    t, c = time.perf_counter(), time.process_time()
    img, _ = read_mrc(path)
    x = torch.from_numpy(np.require(img, requirements="W"))
    c_read = time.process_time()
    spec = x if is_ps else power_spectrum(x, box=params.box, overlap=params.overlap)
    c_spec = time.process_time()
    fit = fit_ctf(spec, pixel_size=pixel_size, voltage=voltage, cs_mm=cs, amplitude_contrast=amplitude_contrast,
                  params=params)
    c_end = time.process_time()
    if stages is not None:
        stages.update(read=c_read - c, spectrum=c_spec - c_read, fit=c_end - c_spec)
    return fit, time.perf_counter() - t, c_end - c


def angle_error(a: float, b: float) -> float:
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


def errors(rows: list[dict], est: dict[str, dict]) -> dict:
    """Median relative |ΔU|/U, |ΔV|/V and median angle error (astigmatic micrographs) against the truth."""
    import numpy as np
    du = [abs(est[r["key"]]["u"] - r["u"]) / r["u"] for r in rows]
    dv = [abs(est[r["key"]]["v"] - r["v"]) / r["v"] for r in rows]
    da = [angle_error(est[r["key"]]["angle_deg"], r["angle"]) for r in rows if r["u"] - r["v"] > 200]
    mean = [abs((est[r["key"]]["u"] + est[r["key"]]["v"]) - (r["u"] + r["v"])) / 2 for r in rows]
    return {"median_rel_err_U": float(np.median(du)), "median_rel_err_V": float(np.median(dv)),
            "max_rel_err_U": float(np.max(du)), "median_abs_err_mean_defocus_A": float(np.median(mean)),
            "median_angle_err_deg": float(np.median(da)) if da else None, "n_astigmatic": len(da)}


def simulate(work: Path, n: int, size: tuple[int, int], seed: int) -> Path:
    sim = work / "sim"
    if not (sim / "micrographs.star").is_file():
        subprocess.run([str(Path(sys.executable).parent / "cryolens"), "simulate", "micrographs", "--preset", "benchmark",
                        "--n-micrographs", str(n), "--size", str(size[0]), str(size[1]), "--defocus", "6000", "30000",
                        "--astigmatism", "1500", "--seed", str(seed), "--out", str(sim), "--quiet"], check=True, cwd=work)
    return sim


def _raw_power(path: Path, box: int):
    import numpy as np
    import torch
    from cryolens.ctf import power_spectrum
    from cryolens.io import read_mrc
    img, _ = read_mrc(path)
    return power_spectrum(torch.from_numpy(np.require(img, requirements="W")), box=box, overlap=0.5).numpy()


def write_docs(ps_fit, params, aspire: dict | None) -> list[str]:
    """docs/ctf_epu.png, docs/ctf_fei.png (diagnostics; the real micrographs refitted with a 1024 box, whose
    rings stay apart to 5 Å at these fine pixels) and docs/ctf_betagal_ps.png (fit + candidates)."""
    import dataclasses

    from cryolens.jobs.ctf_plots import plot_ctf_diagnostic, plot_defocus_candidates
    docs = ROOT / "docs"
    written = []
    big = dataclasses.replace(params, box=1024)
    for name, path, apix, nominal in REAL:
        fit, _, _ = cryolens_fit(path, params=big, pixel_size=apix, voltage=300.0, cs=2.7, amplitude_contrast=0.07)
        cands = [("cryolens", fit.defocus_u_A, fit.defocus_v_A, fit.angle_deg)]
        if aspire and name in aspire:
            cands.append(("ASPIRE", aspire[name]["u"], aspire[name]["v"], aspire[name]["angle_deg"]))
        cands.append(("nominal", nominal, nominal, 0.0))
        written.append(str(plot_defocus_candidates(
            _raw_power(path, 1024), docs / f"ctf_{name}_candidates.png", pixel_size=apix, voltage=300.0, cs=2.7,
            amplitude_contrast=0.07, candidates=cands, res_low_A=params.res_low_A, res_high_A=params.res_high_A,
            title=f"{path.name}: which defocus do the Thon rings support? (raw 1024-px power spectrum flattened "
                  f"without any CTF model)")))
        p = plot_ctf_diagnostic(fit, docs / f"ctf_{name}.png", pixel_size=apix, voltage=300.0, cs=2.7,
                                amplitude_contrast=0.07, res_low_A=params.res_low_A, res_high_A=params.res_high_A,
                                title=f"{path.name} ({apix} Å/px, 300 kV, Cs 2.7 mm assumed, nominal defocus "
                                      f"{nominal / 1e4:.1f} µm; box 1024)")
        written.append(str(p))
    b = BETAGAL
    p = plot_ctf_diagnostic(ps_fit, docs / "ctf_betagal_ps_fit.png", pixel_size=b["pixel_size"], voltage=b["voltage"],
                            cs=b["cs"], amplitude_contrast=b["amplitude_contrast"], res_low_A=params.res_low_A,
                            res_high_A=params.res_high_A, title="RELION PS of beta-gal micrograph 00021 (200 kV)")
    written.append(str(p))
    cands = [("cryolens fit", float(ps_fit.defocus_u_A), float(ps_fit.defocus_v_A), float(ps_fit.angle_deg))]
    cands += [c for c in CANDIDATES]
    from cryolens.io import read_mrc
    raw, _ = read_mrc(BETAGAL_PS)
    p = plot_defocus_candidates(raw, docs / "ctf_betagal_ps.png", pixel_size=b["pixel_size"],
                                voltage=b["voltage"], cs=b["cs"], amplitude_contrast=b["amplitude_contrast"],
                                candidates=cands, res_low_A=params.res_low_A, res_high_A=params.res_high_A,
                                title="beta-gal PS (RELION MotionCorr, 1.3996 Å/px, 200 kV, Cs 1.4): which defocus "
                                      "do the Thon rings support? (raw PS flattened without any CTF model)")
    written.append(str(p))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="simulated micrographs")
    ap.add_argument("--size", type=int, nargs=2, default=(2048, 2048), help="simulated micrograph W H (px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--search", nargs="+", default=["exhaustive", "fast"], help="cryolens search modes to time")
    ap.add_argument("--no-real", action="store_true", help="skip the real micrographs and PS")
    ap.add_argument("--docs", action="store_true", help="write docs/ctf_*.png from the real data")
    ap.add_argument("--docs-only", action="store_true", help="only write the docs PNGs (ASPIRE's values from --out)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ctf.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from cryolens.ctf import CTFFitParams
    from cryolens.io import read_micrographs

    torch.set_num_threads(args.threads)
    if args.docs_only:
        old = json.loads(args.out.read_text()) if args.out.is_file() else {}
        ps_fit, _, _ = cryolens_fit(BETAGAL_PS, params=CTFFitParams(), is_ps=True, **BETAGAL)
        print("\n".join(write_docs(ps_fit, CTFFitParams(), old.get("aspire"))))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryolens-ctf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sim = simulate(work, args.n, tuple(args.size), args.seed)
    optics, mics = read_micrographs(sim / "micrographs.star")
    o = optics.iloc[0]
    sim_optics = dict(pixel_size=float(o["rlnMicrographPixelSize"]), voltage=float(o["rlnVoltage"]),
                      cs=float(o["rlnSphericalAberration"]), amplitude_contrast=float(o["rlnAmplitudeContrast"]))
    rows = [{"key": f"sim{i}", "path": str((work / m["rlnMicrographName"]).resolve()), "u": float(m["rlnDefocusU"]),
             "v": float(m["rlnDefocusV"]), "angle": float(m["rlnDefocusAngle"])} for i, (_, m) in enumerate(mics.iterrows())]
    real = [] if args.no_real or not SHARED.is_dir() else REAL

    report: dict = {"conditions": {"n_simulated": len(rows), "size": list(args.size), "threads": args.threads,
                                   "load_average_1min_at_start": os.getloadavg()[0],
                                   "sim_optics": sim_optics, "host_cpus": os.cpu_count(),
                                   "note": "wall-clock on a shared machine; compare ratios, not absolute seconds"},
                    "cryolens": {}, "aspire": None}
    ps_fit = None
    for search in args.search:
        params = CTFFitParams(search=search)
        est, secs, cpus = {}, [], []
        for r in rows:
            stages: dict = {}
            fit, s, c = cryolens_fit(Path(r["path"]), params=params, stages=stages, **sim_optics)
            est[r["key"]] = {"u": fit.defocus_u_A, "v": fit.defocus_v_A, "angle_deg": fit.angle_deg, "cc": fit.cc,
                             "fit_res_A": fit.max_resolution_A, "seconds": s, "cpu_s": c,
                             **{f"cpu_s_{k}": v for k, v in stages.items()}}
            secs.append(s)
            cpus.append(c)
        entry = {"seconds_per_micrograph": float(np.median(secs)), "cpu_s_per_micrograph": float(np.median(cpus)),
                 **{f"cpu_s_{k}_per_micrograph": float(np.median([e[f"cpu_s_{k}"] for e in est.values()]))
                    for k in ("read", "spectrum", "fit")},
                 "errors": errors(rows, est), "per_micrograph": est}
        for name, path, apix, nominal in real:
            fit, s, _ = cryolens_fit(path, params=params, pixel_size=apix, voltage=300.0, cs=2.7,
                                     amplitude_contrast=0.07)
            entry[name] = {"u": fit.defocus_u_A, "v": fit.defocus_v_A, "angle_deg": fit.angle_deg, "cc": fit.cc,
                           "fit_res_A": fit.max_resolution_A, "seconds": s, "nominal_A": nominal,
                           "warnings": fit.warnings}
        if real:
            fit, s, _ = cryolens_fit(BETAGAL_PS, params=params, is_ps=True, **BETAGAL)
            entry["betagal_ps"] = {"u": fit.defocus_u_A, "v": fit.defocus_v_A, "angle_deg": fit.angle_deg,
                                   "cc": fit.cc, "fit_res_A": fit.max_resolution_A, "seconds": s}
            ps_fit = ps_fit or fit
        report["cryolens"][search] = entry
        print(f"cryolens ({search}): {entry['seconds_per_micrograph']:.2f} s/micrograph (CPU: spectrum "
              f"{entry['cpu_s_spectrum_per_micrograph']:.2f} s, fit {entry['cpu_s_fit_per_micrograph']:.2f} s), "
              f"errors {entry['errors']}")

    groups = [{"name": "sim", "psd_size": 512, "g_min": 30.0, "g_max": 5.0, **sim_optics,
               "items": [{"key": r["key"], "path": r["path"]} for r in rows]}]
    for name, path, apix, _ in real:
        groups.append({"name": name, "psd_size": 512, "g_min": 30.0, "g_max": 5.0, "pixel_size": apix,
                       "voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.07,
                       "items": [{"key": name, "path": str(path)}]})
    if real:
        groups.append({"name": "betagal_ps", "psd_size": 512, "g_min": 30.0, "g_max": 5.0, **BETAGAL,
                       "items": [{"key": "betagal_ps", "path": str(BETAGAL_PS), "is_ps": True}]})
    asp = run_aspire(groups, work, args.threads)
    if asp is not None:
        res = asp["results"]
        secs = [res[r["key"]]["seconds"] for r in rows]
        report["aspire"] = {"seconds_per_micrograph": float(np.median(secs)),
                            "cpu_s_per_micrograph": float(np.median([res[r["key"]]["cpu_s"] for r in rows])),
                            "setup_s": asp["setup_s"],
                            "process_s": asp["process_s"], "errors": errors(rows, res),
                            "per_micrograph": {r["key"]: res[r["key"]] for r in rows},
                            **{k: res[k] for k in ("epu", "fei", "betagal_ps") if k in res}}
        for search, entry in report["cryolens"].items():
            entry["speedup_vs_aspire"] = report["aspire"]["seconds_per_micrograph"] / entry["seconds_per_micrograph"]
            entry["cpu_speedup_vs_aspire"] = (report["aspire"]["cpu_s_per_micrograph"]
                                              / entry["cpu_s_per_micrograph"])
        print(f"ASPIRE: {report['aspire']['seconds_per_micrograph']:.2f} s/micrograph (+ setup "
              f"{sum(asp['setup_s'].values()):.1f} s), errors {report['aspire']['errors']}")
    if args.docs and real and ps_fit is not None:
        report["docs"] = write_docs(ps_fit, CTFFitParams(), report["aspire"])
    report["conditions"]["load_average_1min_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"-> {args.out}")
    for search, entry in report["cryolens"].items():
        if "speedup_vs_aspire" in entry:
            print(f"cryolens {search}: {entry['speedup_vs_aspire']:.1f}x faster than ASPIRE (wall; CPU time "
                  f"{entry['cpu_speedup_vs_aspire']:.1f}x); median |ΔU|/U "
                  f"{entry['errors']['median_rel_err_U']:.4f} vs {report['aspire']['errors']['median_rel_err_U']:.4f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--aspire-worker":
        aspire_worker(Path(sys.argv[2]))
    else:
        main()
