"""``cryolens motion``: align movies, write micrographs and RELION MotionCorr metadata.

Each movie is one work unit (:mod:`cryolens.jobs.motion_unit`): read, preprocess
(:mod:`cryolens.motion.preprocess`), align (:func:`cryolens.motion.align_movie`), write its
outputs, return a small summary. On the CPU movies run in this process, one per core in threads
with one torch thread each while a reader thread reads ahead (backend ``threads:N``,
:class:`cryolens.compute.threads.Threads`: on 2 cores 12 movies took 12 s this way against 20 s
in worker processes, which each pay a Python + torch start); ``--j``/``--backend`` send them to
worker processes or any backend of :mod:`cryolens.compute.backends`; on a GPU they run one after
the other in this process. A unit's files are written atomically and ``Movies/<name>.json`` last
(:mod:`cryolens.jobs.units`), so a rerun with the same options skips movies already done
(resumable) and redoes the rest. Plots: :mod:`cryolens.jobs.motion_plots`.

Outputs in the job folder (paths inside STAR files are relative to the current folder,
RELION's rule):

* ``Movies/<name>.mrc``: the dose-weighted aligned sum (the aligned sum when no exposure
  per frame is known), at the binned pixel size; ``Movies/<name>_noDW.mrc``: the aligned
  sum without dose weighting (when dose weighting is on).
* ``Movies/<name>.star``: as RELION's MotionCorr writes it: ``data_general`` (movie size,
  movie, gain, defect file, binning, original pixel size, dose per frame, pre-exposure,
  voltage, start frame, motion model version), ``data_global_shift`` (frame number and
  the correction shifts ``rlnMicrographShiftX/Y`` in unbinned movie pixels relative to the
  first frame used, RELION's sign), ``data_local_motion_model`` (RELION's 36 polynomial
  coefficients) when patches were aligned, ``data_hot_pixels`` (detected hot pixels, 0-based
  x y, unbinned) and ``data_local_shift`` (patch centres and their measured local shifts
  beyond the global ones, unbinned pixels) when patches were aligned.
* ``Movies/<name>_shifts.png`` (the drift of that movie), ``drift.png`` (all movies).
* ``micrographs.star``: ``data_optics`` (``rlnMicrographOriginalPixelSize`` = movie pixel,
  ``rlnMicrographPixelSize`` = after binning) and ``data_micrographs`` (rlnMicrographName,
  rlnMicrographMetadata, rlnOpticsGroup, rlnAccumMotionTotal/Early/Late: RELION's sums of the
  frame-to-frame travel, in unbinned movie pixels as RELION writes them; ``job.json`` has Å).
* ``rejected.star``: movies over the maximum shift between frames or the maximum total
  travel (same columns plus ``cryolensRejectReason``); their files are kept for a look.
* ``report.html``, ``job.json``, ``run.log``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryolens.compute.backends import cpu_count, default_spec, get_backend
from cryolens.compute.threads import Threads
from cryolens.core.native import retain_freed_memory
from cryolens.errors import InputError
from cryolens.io import read_micrographs, require_columns, resolve_path, star_name, write_micrographs
from cryolens.io.movies import frame_range, movie_info, read_gain
from cryolens.jobs.motion_plots import plot_drift_summary
from cryolens.jobs.motion_unit import MOVIE_UNIT, MovieTask
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.units import unique_stems
from cryolens.motion.params import MotionJobOptions
from cryolens.motion.preprocess import orient_gain

__all__ = ["run_motion", "DOSE_LABELS", "PRE_EXPOSURE_LABELS"]

#: Columns of the movie STAR that may carry the exposure per frame (e⁻/Å²) and the pre-exposure.
DOSE_LABELS = ("rlnMicrographDoseRate", "rlnMicrographDosePerFrame", "cryolensDosePerFrame")
PRE_EXPOSURE_LABELS = ("rlnMicrographPreExposure", "cryolensPreExposure")


# ------------------------------------------------------------------------------------ the job


def _first_value(row: pd.Series, labels) -> Any:
    for c in labels:
        if c in row.index and pd.notna(row[c]) and str(row[c]).strip() not in ("", "None"):
            return row[c]
    return None




def _rel(path: Path) -> str:
    """The name of a file of this job in its STAR files (project-relative inside a project)."""
    return star_name(path, into=path, up=True)


def _build_tasks(star: str | os.PathLike, out: Path, motion_params, options: MotionJobOptions,
                 device: str) -> tuple[list[MovieTask], pd.DataFrame, pd.DataFrame, list[str]]:
    """Read movies.star, check every input once, and describe each movie's unit of work."""
    optics, movies = read_micrographs(star)
    require_columns(movies, ["rlnMicrographMovieName"], star, "movies")
    if len(movies) == 0:
        raise InputError(f"{star}: lists no movies; give a movies.star with at least one row.")
    table = movies.merge(optics, on="rlnOpticsGroup", how="left", suffixes=("", "_optics"))
    notes: list[str] = []
    paths = [resolve_path(str(n), star, row=i + 1) for i, n in enumerate(movies["rlnMicrographMovieName"])]
    names = unique_stems([str(p) for p in paths])
    gains_checked: dict[tuple[str, tuple[int, int]], bool] = {}
    tasks = []
    no_dose = 0
    for i, (row, path, name) in enumerate(zip(table.itertuples(index=False), paths, names)):
        r = pd.Series(row._asdict())
        info = movie_info(path, eer_grouping=options.eer_grouping, eer_upsampling=options.eer_upsampling)
        apix = _first_value(r, ("rlnMicrographOriginalPixelSize", "rlnMicrographPixelSize"))
        apix = float(apix) if apix is not None else info.pixel_size
        if not apix > 0:
            raise InputError(f"{star}: no pixel size for {path.name} (rlnMicrographOriginalPixelSize in data_optics); "
                             "add it to the optics table.")
        voltage = _first_value(r, ("rlnVoltage",))
        if voltage is None:
            raise InputError(f"{star}: no rlnVoltage in data_optics; add the acceleration voltage in kV.")
        dose = options.dose_per_frame
        if dose is None:
            v = _first_value(r, DOSE_LABELS)
            dose = float(v) if v is not None and float(v) > 0 else None
        no_dose += dose is None
        pre = options.pre_exposure
        if pre is None:
            v = _first_value(r, PRE_EXPOSURE_LABELS)
            pre = float(v) if v is not None else 0.0
        gain_name = options.gain or _first_value(r, ("rlnMicrographGainName",))
        gain = None
        if gain_name:
            gain = resolve_path(str(gain_name), star, row=i + 1) if options.gain is None else Path(options.gain)
            if not gain.is_file():
                raise InputError(f"{gain}: gain reference not found; check --gain or rlnMicrographGainName.")
            k = (str(gain), (info.height, info.width))
            if k not in gains_checked:
                g = orient_gain(torch.from_numpy(read_gain(gain)), rot=options.preprocess.gain_rot,
                                flip=options.preprocess.gain_flip)
                if tuple(g.shape) != (info.height, info.width):
                    raise InputError(
                        f"{gain}: the gain reference is {g.shape[1]}x{g.shape[0]} after --gain-rot "
                        f"{options.preprocess.gain_rot}, but {path.name} is {info.width}x{info.height}; "
                        "give the matching gain or rotation (--gain-rot 1 or 3 swaps width and height).")
                gains_checked[k] = True
        defect_name = options.defect_file or _first_value(r, ("rlnMicrographDefectFile",))
        defect = None
        if defect_name:
            defect = resolve_path(str(defect_name), star, row=i + 1) if options.defect_file is None \
                else Path(options.defect_file)
            if not defect.is_file():
                raise InputError(f"{defect}: defect file not found; check --defect or rlnMicrographDefectFile.")
        frame_range(info.n_frames, options.first_frame, options.last_frame, path=path)
        stem = out / "Movies" / name
        tasks.append(MovieTask(
            movie=str(path.absolute()), movie_name=str(r["rlnMicrographMovieName"]), out_stem=str(stem.absolute()),
            rel_stem=_rel(stem), gain=None if gain is None else str(gain.absolute()),
            gain_name=None if gain is None else str(gain_name),
            defect=None if defect is None else str(defect.absolute()),
            defect_name=None if defect is None else str(defect_name), pixel_size=apix, voltage=float(voltage),
            dose_per_frame=dose, pre_exposure=pre, first_frame=options.first_frame, last_frame=options.last_frame,
            eer_grouping=options.eer_grouping, eer_upsampling=options.eer_upsampling, preprocess=options.preprocess,
            motion=motion_params, device=device, plots=options.plots))
    if no_dose:
        notes.append(f"{no_dose} movie(s) have no exposure per frame (give --dose-per-frame): not dose-weighted")
    return tasks, optics, movies, notes




def run_motion(star: str | os.PathLike, out_dir: str | os.PathLike, motion_params, options: MotionJobOptions, *,
               backend: str | None = None, workers: int | None = None, device: torch.device | str = "cpu",
               progress: Callable[[int, int], None] | None = None, observer: JobObserver | None = None) -> Job:
    """Motion-correct the movies of ``star`` into ``out_dir``; returns the finished :class:`Job`.

    Args:
        star: movies.star (RELION 3.1 ``data_optics`` + ``data_movies``, or 3.0).
        motion_params: :class:`cryolens.motion.MotionParams`.
        options: preprocessing, frame range, dose and files (:class:`MotionJobOptions`).
        backend: compute backend spec (``local``, ``local:N``, ``inprocess`` (one movie after the
            other), ``threads[:N]`` (N movies at once in this process, read ahead, see
            :class:`cryolens.compute.threads.Threads`),
            ``tcp://...``, ``profile:NAME``); default on the CPU: ``threads:cores``, or
            ``local:workers`` processes when ``workers`` is given; on a GPU: ``inprocess``.
        workers: movies processed at once by the local backend (default: one per core).
        device: where each unit computes.
    """
    out = Path(out_dir)
    check_params("motion", motion_params, options)
    dev = str(device)
    tasks, optics, movies, notes = _build_tasks(star, out, motion_params, options, dev)
    n_workers = max(1, min(workers or cpu_count(), len(tasks)))
    spec = default_spec(backend, workers, len(tasks), dev)
    threads = None  # threads are checked before the job starts; other backends open inside it (Dask connects)
    if spec == "threads":
        threads = Threads(n_workers)
    elif spec.startswith("threads:"):
        threads = get_backend(spec)
    params = {"motion": dataclasses.asdict(motion_params), "job": dataclasses.asdict(options), "backend": spec}
    with Job("motion", out, params=params, inputs={"movies": star}, device=dev, observer=observer) as job:
        (out / "Movies").mkdir(exist_ok=True)
        for note in notes:
            job.log.warning(note)
        job.log.info("%d movies through backend %s", len(tasks), spec)
        with job.timed("align_all"), retain_freed_memory(), threads or get_backend(spec) as be:
            summaries = be.map(MOVIE_UNIT, tasks, desc="motion", progress=progress)
        for s in summaries:
            if s.get("local_fallback"):
                job.log.warning("%s: global alignment only: %s", s["name"], s["local_fallback"])
            sec = s["seconds"]
            job.log.info("%s: %s total %.2f Å (early %.2f, late %.2f)%s; %s", s["name"],
                         "skipped (done before)" if s["skipped"] else "aligned", s["accum_total_A"],
                         s["accum_early_A"], s["accum_late_A"], f"; REJECTED: {s['rejected']}" if s["rejected"] else "",
                         ", ".join(f"{k} {v:.2f} s" for k, v in sec.items()))
        rows = pd.DataFrame({
            "rlnMicrographName": [s["micrograph"] for s in summaries],
            "rlnMicrographMetadata": [s["metadata"] for s in summaries],
            "rlnOpticsGroup": movies["rlnOpticsGroup"].astype(int).to_numpy(),
            # RELION writes the accumulated motion in (unbinned) movie pixels
            "rlnAccumMotionTotal": [s["accum_total_A"] / s["pixel_size"] for s in summaries],
            "rlnAccumMotionEarly": [s["accum_early_A"] / s["pixel_size"] for s in summaries],
            "rlnAccumMotionLate": [s["accum_late_A"] / s["pixel_size"] for s in summaries]})
        rejected = np.array([bool(s["rejected"]) for s in summaries])
        mic_optics = _micrograph_optics(optics, options.preprocess.bin_factor)
        write_micrographs(out / "micrographs.star", mic_optics, rows[~rejected].reset_index(drop=True))
        job.add_output("micrographs", out / "micrographs.star", rows=not rejected.all())  # all rejected: said so
        if rejected.any():
            rej = rows[rejected].assign(cryolensRejectReason=[s["rejected"] for s in summaries if s["rejected"]])
            write_micrographs(out / "rejected.star", mic_optics, rej.reset_index(drop=True))
            job.add_output("rejected", out / "rejected.star", rows=False)
        else:
            (out / "rejected.star").unlink(missing_ok=True)
        plot_drift_summary(summaries, out / "drift.png")
        total = np.array([s["accum_total_A"] for s in summaries])
        fresh = [s for s in summaries if not s["skipped"]]
        job.results.update(
            n_movies=len(summaries), n_rejected=int(rejected.sum()), n_skipped=len(summaries) - len(fresh),
            mean_total_motion_A=round(float(total.mean()), 3), max_total_motion_A=round(float(total.max()), 3),
            mean_total_motion_px=round(float(np.mean([s["accum_total_A"] / s["pixel_size"] for s in summaries])), 3),
            dose_weighted=all(s["dose_weighted"] for s in summaries),
            local_motion=any(s["local_model"] for s in summaries),
            hot_pixels_per_movie=round(float(np.mean([s["hot_pixels"] for s in summaries])), 1),
            pixel_size_A=float(mic_optics["rlnMicrographPixelSize"].iloc[0]), backend=spec,
            seconds_per_movie={k: round(float(np.mean([s["seconds"][k] for s in fresh])), 3)
                               for k in ("read", "preprocess", "align", "write")} if fresh else {})
        write_report(out / "report.html", title="Motion correction", summary=job.results,
                     params={**{f"motion.{k}": v for k, v in params["motion"].items()},
                             **{f"job.{k}": v for k, v in params["job"].items()}}, images=["drift.png"])
        job.log.info("%d movies, %d rejected, mean total motion %.2f Å", len(summaries), int(rejected.sum()),
                     float(total.mean()))
    return job




def _micrograph_optics(optics: pd.DataFrame, bin_factor: float) -> pd.DataFrame:
    """Optics of the micrographs: original (movie) pixel size and the binned one."""
    o = optics.copy()
    movie_apix = o["rlnMicrographOriginalPixelSize"] if "rlnMicrographOriginalPixelSize" in o.columns \
        else o["rlnMicrographPixelSize"]
    o["rlnMicrographOriginalPixelSize"] = movie_apix.astype(float)
    o["rlnMicrographPixelSize"] = movie_apix.astype(float) * float(bin_factor)
    drop = [c for c in o.columns if c in DOSE_LABELS + PRE_EXPOSURE_LABELS + ("rlnMicrographGainName",
                                                                               "rlnMicrographDefectFile")]
    return o.drop(columns=drop)
