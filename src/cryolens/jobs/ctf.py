"""``cryolens ctf``: CTF estimation per micrograph (or of one given power spectrum).

Outputs in the job folder:

* ``micrographs_ctf.star``: RELION 3.1 ``data_optics`` + ``data_micrographs``, the input
  columns kept and the fit added (replacing earlier values): rlnDefocusU/V (Å, U ≥ V),
  rlnDefocusAngle (degrees), rlnPhaseShift (degrees, 0 unless fitted), rlnCtfAstigmatism
  (Å), rlnCtfFigureOfMerit (CC), rlnCtfMaxResolution (Å). With patches (``--patches 5x5``)
  also the defocus plane ``cryolensDefocusPlaneC0`` (Å at the centre) and
  ``cryolensDefocusGradientX/Y`` (Å per pixel), the simulator's convention: the defocus at
  pixel (x, y) is ``rlnDefocusU/V + gx (x - W/2) + gy (y - H/2)``.
* ``diagnostics/<micrograph>_ctf.png``: the spectrum with the fitted CTF² in one quadrant and
  the fit's zeros as rings, next to CTFFIND's 1-D plot (spectrum, fit, quality of fit).
* ``diagnostics/<micrograph>_ctf.json``: the numbers of one micrograph, written last; a rerun with
  the same parameters and an unchanged micrograph reuses it (the job resumes where it stopped;
  :mod:`cryolens.jobs.units`). ``<micrograph>`` is the file stem, with its folder's name in front
  where two micrographs share a stem.
* ``summary.png`` (defocus, astigmatism, fit resolution, CC over micrographs), ``report.html``,
  ``job.json`` (results: medians, warnings), ``run.log``.

Each micrograph is one unit of work for the compute backend (``--backend``/``--j``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.compute.backends import Backend, InProcess, LocalProcesses, get_backend
from cryolens.ctf import CTFFitParams, fit_ctf, fit_ctf_patches, looks_like_power_spectrum, power_spectrum
from cryolens.errors import InputError
from cryolens.io import merge_optics, read_micrographs, read_mrc, read_star, require_columns, write_micrographs
from cryolens.io.paths import resolve_path, star_name
from cryolens.jobs.ctf_plots import plot_ctf_diagnostic, plot_ctf_summary
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.units import UnitRecord, check_micrograph_header, check_pixel_size, fingerprint, unique_stems

__all__ = ["run_ctf", "run_ctf_power_spectrum", "MicrographUnit", "fit_micrograph", "CTF_COLUMNS", "PLANE_COLUMNS"]

#: Columns the job writes (RELION names); input values of these are replaced.
CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfAstigmatism",
               "rlnCtfFigureOfMerit", "rlnCtfMaxResolution")
#: Patch-CTF plane columns (only with patches; stale input values are dropped otherwise).
PLANE_COLUMNS = ("cryolensDefocusPlaneC0", "cryolensDefocusGradientX", "cryolensDefocusGradientY")
_PLOT_LOCK = threading.Lock()  # pyplot is not thread-safe (backend threads:N): one diagnostic at a time
_SUBSUM_DOSE = 4.5  # e-/Å² per movie-frame sub-sum (Thon rings show best at ~4-5, McMullan et al. 2015)


@dataclass(frozen=True)
class MicrographUnit:
    """Everything one worker needs to fit one micrograph (picklable).

    Attributes:
        index: row in the input table (0-based); name: rlnMicrographName as given.
        path: the resolved micrograph file; movie: the movie file for ``--from-movies`` (else None),
        frames_per_subsum: movie frames summed into one sub-sum; gain: gain reference or None.
        stem: the per-micrograph output name; out_dir: the job folder.
        pixel_size (Å), voltage (kV), cs (mm), amplitude_contrast: the optics of its group.
        params: the fit options; device: torch device name; key: fingerprint for resuming.
    """

    index: int
    name: str
    path: str
    stem: str
    out_dir: str
    pixel_size: float
    voltage: float
    cs: float
    amplitude_contrast: float
    params: CTFFitParams
    device: str
    movie: str | None = None
    frames_per_subsum: int = 1
    gain: str | None = None
    key: str = ""


def _fingerprint(unit: MicrographUnit) -> str:
    """Parameters, optics and the input file's size and modification time, hashed."""
    d = dict(params=dataclasses.asdict(unit.params), optics=[unit.pixel_size, unit.voltage, unit.cs,
             unit.amplitude_contrast], frames=unit.frames_per_subsum, gain=unit.gain)
    return fingerprint(d, files=[unit.movie or unit.path])


def _record(unit: MicrographUnit) -> UnitRecord:
    return UnitRecord(str(Path(unit.out_dir) / "diagnostics" / f"{unit.stem}_ctf.json"), unit.key)


def _read_image(unit: MicrographUnit) -> np.ndarray:
    """The micrograph ``(H, W)`` or, from a movie, gain-corrected frame sub-sums ``(S, H, W)``."""
    if unit.movie is not None:
        from cryolens.io.movies import read_gain, read_movie
        frames = read_movie(unit.movie)  # a memory map for MRC movies: summed group by group
        g = min(max(1, unit.frames_per_subsum), frames.shape[0])
        img = np.stack([frames[i * g:(i + 1) * g].sum(axis=0, dtype=np.float32)
                        for i in range(frames.shape[0] // g)])  # trailing frames short of a group are left out
        if unit.gain:
            img *= read_gain(unit.gain)[None]  # corrected = raw × gain, linear: applied to the sums
        what = f"movie {unit.movie}"
    else:
        img, header_apix = read_mrc(unit.path)
        what = f"micrograph {unit.path}"
        if img.ndim != 2:
            raise InputError(f"{unit.path}: holds {img.shape[0]} images, not one micrograph; give single-image "
                             "micrographs in rlnMicrographName.")
        check_pixel_size(unit.path, header_apix, unit.pixel_size)
    if not np.isfinite(img).all():
        raise InputError(f"{what}: contains NaN or infinite values; repair or remove it from the STAR file.")
    if not float(np.ptp(img)) > 0:
        raise InputError(f"{what}: every pixel holds the same value ({float(img.flat[0]):g}): there is no image to "
                         "fit; check the file (a failed export or motion correction?) or remove it from the STAR file.")
    if unit.movie is None and looks_like_power_spectrum(torch.tensor(img)):
        raise InputError(f"{unit.path}: is a power spectrum (point-symmetric about its centre), not a micrograph; "
                         "fit it with `cryolens ctf --power-spectrum` (the spectrum of a spectrum has no Thon rings).")
    if min(img.shape[-2:]) < unit.params.box:
        raise InputError(f"{what}: {img.shape[-1]}x{img.shape[-2]} px is smaller than the spectrum box "
                         f"{unit.params.box}; use a smaller --box.")
    return img


def fit_micrograph(unit: MicrographUnit) -> dict:
    """Fit one micrograph (a unit of work): spectrum, fit, optional patches, diagnostic PNG.

    Returns the numbers as a dict (``reused`` True when an earlier run's result was taken);
    the PNG is written first and the JSON last, so a JSON on disk means a complete unit.
    """
    record = _record(unit)
    old = record.done()
    if old is not None:
        return {**old, "reused": True}
    img = _read_image(unit)
    dev = torch.device(unit.device)
    p = unit.params
    optics = dict(pixel_size=unit.pixel_size, voltage=unit.voltage, cs_mm=unit.cs,
                  amplitude_contrast=unit.amplitude_contrast)
    x = torch.as_tensor(np.require(img, requirements="W"), device=dev)
    spec = power_spectrum(x, box=p.box, overlap=p.overlap)
    fit = fit_ctf(spec, **optics, params=p)
    patch = None
    if p.patches is not None:
        patch = fit_ctf_patches(x if x.ndim == 2 else x.sum(0), fit, **optics, params=p)
    h, w = img.shape[-2:]
    png = Path(record.path).parent / f"{unit.stem}_ctf.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    with _PLOT_LOCK:
        plot_ctf_diagnostic(fit, png, pixel_size=unit.pixel_size, voltage=unit.voltage, cs=unit.cs,
                            amplitude_contrast=unit.amplitude_contrast, res_low_A=p.res_low_A,
                            res_high_A=p.res_high_A, title=unit.name, patch=patch, image_size=(w, h))
    out = {"name": unit.name, "png": png.name, "width": int(w), "height": int(h),
           "rlnDefocusU": float(fit.defocus_u_A), "rlnDefocusV": float(fit.defocus_v_A),
           "rlnDefocusAngle": float(fit.angle_deg), "rlnPhaseShift": float(fit.phase_shift_deg),
           "rlnCtfAstigmatism": float(fit.astigmatism_A), "rlnCtfFigureOfMerit": float(fit.cc),
           "rlnCtfMaxResolution": float(fit.max_resolution_A),
           "aliasing_resolution_A": None if fit.aliasing_resolution_A is None else float(fit.aliasing_resolution_A),
           "warnings": [str(m) for m in fit.warnings]}
    if patch is not None:
        c0, gx, gy = (float(v) for v in patch.plane)
        out.update(cryolensDefocusPlaneC0=c0, cryolensDefocusGradientX=gx, cryolensDefocusGradientY=gy,
                   patch_defocus_A=[float(d) for d in np.asarray(torch.as_tensor(patch.defocus_A).cpu())])
    return {**record.finish(out, outputs=[png]), "reused": False}


# ------------------------------------------------------------------------------ inputs


def _resolve(name: str, star: Path, row: int, what: str) -> Path:
    try:
        return resolve_path(name, star, row=row)
    except InputError:
        raise InputError(f"{star}: {what} {name} (row {row}) was not found in {Path.cwd()} or next to the STAR "
                         "file; check the path or run from the project folder.") from None


def _movie_source(row: pd.Series, star: Path, i: int) -> tuple[Path, Path | None, float | None]:
    """(movie, gain, dose per frame e-/Å²) for ``--from-movies`` from rlnMicrographMetadata or the row."""
    gain, dose = None, None
    if "rlnMicrographMetadata" in row and isinstance(row["rlnMicrographMetadata"], str):
        meta = _resolve(row["rlnMicrographMetadata"], star, i + 1, "motion metadata")
        gen = read_star(meta).get("general")
        if not isinstance(gen, dict) or "rlnMicrographMovieName" not in gen:
            raise InputError(f"{meta}: has no data_general block with rlnMicrographMovieName; give motion "
                             "metadata written by motion correction, or drop --from-movies.")
        movie = _resolve(str(gen["rlnMicrographMovieName"]), meta, i + 1, "movie")
        if gen.get("rlnMicrographGainName"):
            gain = _resolve(str(gen["rlnMicrographGainName"]), meta, i + 1, "gain reference")
        dose = float(gen["rlnMicrographDoseRate"]) if "rlnMicrographDoseRate" in gen else None
        return movie, gain, dose
    if "rlnMicrographMovieName" in row:
        return _resolve(str(row["rlnMicrographMovieName"]), star, i + 1, "movie"), None, None
    raise InputError(f"{star}: --from-movies needs rlnMicrographMetadata or rlnMicrographMovieName per micrograph; "
                     "give the micrographs.star written by motion correction, or drop --from-movies.")


def _units(star: Path, out: Path, params: CTFFitParams, device: str, from_movies: bool,
           frame_dose: float | None) -> tuple[pd.DataFrame, pd.DataFrame, list[MicrographUnit]]:
    optics, mics = read_micrographs(star)
    name_col = "rlnMicrographName"
    if from_movies and name_col not in mics.columns and "rlnMicrographMovieName" in mics.columns:
        name_col = "rlnMicrographMovieName"  # a movies.star: the movies themselves
    require_columns(mics, [name_col], star, "micrographs")
    require_columns(optics, ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"], star, "optics")
    if len(mics) == 0:
        raise InputError(f"{star}: data_micrographs has no rows; give a STAR file listing micrographs.")
    rows = merge_optics(optics, mics)
    names = [str(n) for n in mics[name_col]]
    stems = unique_stems(names)
    units = []
    for i, (name, stem) in enumerate(zip(names, stems)):
        r = rows.iloc[i]
        apix = float(r["rlnMicrographPixelSize"])
        movie = gain = None
        group = 1
        if from_movies:
            movie_p, gain_p, dose = _movie_source(r, star, i)
            dose = frame_dose or dose
            if dose is None or not dose > 0:
                raise InputError(f"{star}: the dose per frame of micrograph {name} is unknown; give --frame-dose "
                                 "(e-/Å² per frame).")
            group = max(1, int(round(_SUBSUM_DOSE / dose)))
            movie, gain = str(movie_p), None if gain_p is None else str(gain_p)
            path = movie
            if "rlnMicrographOriginalPixelSize" in r and pd.notna(r["rlnMicrographOriginalPixelSize"]):
                apix = float(r["rlnMicrographOriginalPixelSize"])  # movies are at the original pixel size
        else:
            path = str(_resolve(name, star, i + 1, "micrograph"))
            ny, nx = check_micrograph_header(Path(path), apix)  # header and file size: before any job starts
            if min(ny, nx) < params.box:
                raise InputError(f"micrograph {path}: {nx}x{ny} px is smaller than the spectrum box {params.box}; "
                                 "use a smaller --box.")
        u = MicrographUnit(index=i, name=name, path=path, stem=stem, out_dir=str(out), pixel_size=apix,
                           voltage=float(r["rlnVoltage"]), cs=float(r["rlnSphericalAberration"]),
                           amplitude_contrast=float(r["rlnAmplitudeContrast"]), params=params, device=device,
                           movie=movie, frames_per_subsum=group, gain=gain)
        units.append(dataclasses.replace(u, key=_fingerprint(u)))
    return optics, mics, units


def _backend(spec: str | None, workers: int | None, n_units: int, device: str) -> Backend:
    """``--backend``/``--j``: one process when there is one unit, one worker or a GPU (unless a backend is named)."""
    if spec in (None, "", "local"):
        if workers == 1 or n_units == 1 or (workers is None and device.startswith("cuda")):
            return InProcess()
        return LocalProcesses(workers)
    if workers is not None:
        raise InputError(f"--j {workers} applies to the local backend only; drop it or use --backend local.")
    return get_backend(spec)


# ------------------------------------------------------------------------------ the job


def _results(job: Job, table: pd.DataFrame, fits: list[dict]) -> None:
    mean_df = (table["rlnDefocusU"] + table["rlnDefocusV"]) / 2
    res = table["rlnCtfMaxResolution"].to_numpy(dtype=float)
    warnings = {f["name"]: f["warnings"] for f in fits if f["warnings"]}
    job.results.update(
        n_micrographs=len(table), n_reused=sum(bool(f["reused"]) for f in fits),
        median_defocus_A=round(float(np.median(mean_df)), 1),
        defocus_range_A=[round(float(table["rlnDefocusV"].min()), 1), round(float(table["rlnDefocusU"].max()), 1)],
        median_astigmatism_A=round(float(np.median(table["rlnCtfAstigmatism"])), 1),
        median_cc=round(float(np.median(table["rlnCtfFigureOfMerit"])), 4),
        fit_resolution_A={"median": round(float(np.nanmedian(res)), 2), "best": round(float(np.nanmin(res)), 2),
                          "worst": round(float(np.nanmax(res)), 2)},
        n_warnings=sum(len(w) for w in warnings.values()), warnings=warnings)


def run_ctf(star: str | os.PathLike, out_dir: str | os.PathLike, params: CTFFitParams, *,
            backend: str | None = None, workers: int | None = None, device: torch.device | str = "cpu",
            from_movies: bool = False, frame_dose: float | None = None,
            progress: Callable[[int, int], None] | None = None, observer: JobObserver | None = None) -> Job:
    """Estimate the CTF of every micrograph in ``star`` into ``out_dir``; returns the finished :class:`Job`.

    ``backend``: compute backend spec (:func:`cryolens.compute.backends.get_backend`); ``workers``:
    local processes (``--j``). ``from_movies``: spectra from movie-frame sub-sums of ~4.5 e-/Å²
    (movie, gain and dose per frame from rlnMicrographMetadata; ``frame_dose`` overrides the dose).
    """
    star, out = Path(star), Path(out_dir)
    check_params("ctf", params)
    dev = str(torch.device(device))
    optics, mics, units = _units(star, out, params, dev, from_movies, frame_dose)
    extra = dict(backend=backend or "local", workers=workers, from_movies=from_movies, frame_dose=frame_dose)
    with Job("ctf", out, params={**dataclasses.asdict(params), **extra}, inputs={"micrographs": star},
             device=dev, observer=observer) as job:
        (out / "diagnostics").mkdir(parents=True, exist_ok=True)
        with job.timed("fit"), _backend(backend, workers, len(units), dev) as be:
            job.log.info("fitting %d micrographs on %s (%s)", len(units), be.name, dev)
            fits = be.map(fit_micrograph, units, desc="ctf", progress=progress)
        table = mics.copy()
        drop = [c for c in (*CTF_COLUMNS, *PLANE_COLUMNS) if c in table.columns]
        table = table.drop(columns=drop)
        cols = list(CTF_COLUMNS) + (list(PLANE_COLUMNS) if params.patches is not None else [])
        for c in cols:
            table[c] = [f[c] for f in fits]
        for f in fits:
            for w in f["warnings"]:
                job.log.warning("%s: %s", f["name"], w)
        block = "micrographs" if "rlnMicrographName" in table.columns else "movies"
        write_micrographs(out / "micrographs_ctf.star", optics, table, block=block)
        job.add_output("micrographs", out / "micrographs_ctf.star")
        plot_ctf_summary(table, out / "summary.png")
        _results(job, table, fits)
        fitted = len(fits) - job.results["n_reused"]
        job.results["seconds_per_micrograph"] = round(job.timings["fit"] / max(fitted, 1), 3)
        worst = int(np.argmin(table["rlnCtfFigureOfMerit"].to_numpy()))
        shown = list(dict.fromkeys([0, worst]))
        images = ["summary.png"] + [f"diagnostics/{fits[i]['png']}" for i in shown]
        write_report(out / "report.html", title="CTF estimation", summary={k: v for k, v in job.results.items()
                                                                          if k != "warnings"},
                     params=job.params, images=images)
        job.add_output("report", out / "report.html")
        job.log.info("%d micrographs (%d reused): median defocus %.0f Å, median fit resolution %.2f Å",
                     len(fits), job.results["n_reused"], job.results["median_defocus_A"],
                     job.results["fit_resolution_A"]["median"])
    return job


def _centred(ps: np.ndarray) -> np.ndarray:
    """A given power spectrum with DC at ``box // 2``: spectra with DC in the corner are shifted."""
    c = ps.shape[0] // 2
    centre = np.median(ps[c - 3:c + 4, c - 3:c + 4])  # low frequencies when centred (the DC may be zeroed)
    corner = np.median(np.fft.fftshift(ps)[c - 3:c + 4, c - 3:c + 4])
    return np.fft.fftshift(ps) if corner > centre else ps


def run_ctf_power_spectrum(ps_path: str | os.PathLike, out_dir: str | os.PathLike, params: CTFFitParams, *,
                           pixel_size: float | None, voltage: float, cs: float, amplitude_contrast: float,
                           device: torch.device | str = "cpu", observer: JobObserver | None = None) -> Job:
    """Fit one given power spectrum (as RELION's ``--use_given_ps``): a square MRC, DC at the centre
    (or the corner), amplitude or power; ``pixel_size`` in Å (None: the MRC header's).

    Writes ``micrographs_ctf.star`` with one row (rlnMicrographName = the spectrum file), the
    diagnostic PNG ``diagnostics/<name>_ctf.png``, ``report.html`` and ``job.json``.
    """
    ps_path, out = Path(ps_path), Path(out_dir)
    ps, header_apix = read_mrc(ps_path)
    if ps.ndim != 2 or ps.shape[0] != ps.shape[1]:
        raise InputError(f"{ps_path}: a power spectrum must be one square image, not {'x'.join(map(str, ps.shape))}; "
                         "give the PS written by motion correction.")
    if not np.isfinite(ps).all():
        raise InputError(f"{ps_path}: contains NaN or infinite values; give an intact power spectrum.")
    apix = pixel_size or header_apix
    if not apix or apix <= 0:
        raise InputError(f"{ps_path}: the header has no pixel size; give --pixel-size (Å).")
    params = dataclasses.replace(params, box=int(ps.shape[0]))
    check_params("ctf", params)
    if params.patches is not None:
        raise InputError("ctf: --patches needs micrographs, not a power spectrum; drop --patches.")
    if not (voltage > 0 and cs >= 0 and 0 <= amplitude_contrast < 1):
        raise InputError("ctf: --voltage must be positive (kV), --cs non-negative (mm) and --amplitude-contrast "
                         "in [0, 1).")
    dev = torch.device(device)
    extra = dict(pixel_size=apix, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast)
    with Job("ctf", out, params={**dataclasses.asdict(params), **extra}, inputs={"power_spectrum": ps_path},
             device=str(dev), observer=observer) as job:
        with job.timed("fit"):
            fit = fit_ctf(torch.as_tensor(np.require(_centred(ps), requirements="W"), device=dev), pixel_size=apix, voltage=voltage, cs_mm=cs,
                          amplitude_contrast=amplitude_contrast, params=params)
        png = out / "diagnostics" / f"{ps_path.stem}_ctf.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_ctf_diagnostic(fit, png, pixel_size=apix, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                            res_low_A=params.res_low_A, res_high_A=params.res_high_A, title=ps_path.name)
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                               "rlnVoltage": [voltage], "rlnSphericalAberration": [cs],
                               "rlnAmplitudeContrast": [amplitude_contrast], "rlnMicrographPixelSize": [apix]})
        row = {"rlnMicrographName": star_name(ps_path, into=out, up=True), "rlnOpticsGroup": 1,
               "rlnDefocusU": float(fit.defocus_u_A), "rlnDefocusV": float(fit.defocus_v_A),
               "rlnDefocusAngle": float(fit.angle_deg), "rlnPhaseShift": float(fit.phase_shift_deg),
               "rlnCtfAstigmatism": float(fit.astigmatism_A), "rlnCtfFigureOfMerit": float(fit.cc),
               "rlnCtfMaxResolution": float(fit.max_resolution_A)}
        table = pd.DataFrame([row])
        write_micrographs(out / "micrographs_ctf.star", optics, table)
        job.add_output("micrographs", out / "micrographs_ctf.star")
        for w in fit.warnings:
            job.log.warning("%s: %s", ps_path.name, w)
        job.results.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                            if k.startswith("rln") and k not in ("rlnMicrographName", "rlnOpticsGroup")})
        job.results.update(n_micrographs=1, n_warnings=len(fit.warnings), warnings={ps_path.name: list(fit.warnings)},
                           aliasing_resolution_A=fit.aliasing_resolution_A)
        write_report(out / "report.html", title="CTF estimation (given power spectrum)", summary=job.results,
                     params=job.params, images=[f"diagnostics/{png.name}"])
        job.add_output("report", out / "report.html")
    return job
