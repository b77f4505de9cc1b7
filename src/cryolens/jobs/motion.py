"""``cryolens motion``: align movies, write micrographs and RELION MotionCorr metadata.

Each movie is one work unit: read (:func:`load_movie`), preprocess
(:mod:`cryolens.motion.preprocess`), align (:func:`cryolens.motion.align_movie`), write its
outputs, return a small summary (:func:`align_loaded`; :func:`process_movie` does both). On
the CPU movies run in this process, one per core in threads with one torch thread each while
a reader thread reads ahead (:func:`map_threads`, backend ``threads:N``: on 2 cores 12 movies
took 12 s this way against 20 s in worker processes, which each pay a Python + torch start);
``--j``/``--backend`` send them to worker processes or any backend of
:mod:`cryolens.project.backends`; on a GPU they run one after the other in this process. A unit's files are written atomically and
``Movies/<name>.json`` last, so a rerun with the same options skips movies already done
(resumable) and redoes the rest.

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
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryolens.errors import InputError
from cryolens.io import read_micrographs, require_columns, resolve_path, write_micrographs, write_mrc, write_star
from cryolens.io.atomic import write_json_atomic
from cryolens.io.mrc import temporary_path
from cryolens.io.movies import frame_range, movie_info, read_defects, read_gain, read_movie
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.motion.preprocess import PreprocessParams, orient_gain, preprocess_movie

__all__ = ["MotionJobOptions", "MovieTask", "run_motion", "process_movie", "load_movie", "align_loaded",
           "map_threads", "motion_star_blocks"]

#: Columns of the movie STAR that may carry the exposure per frame (e⁻/Å²) and the pre-exposure.
DOSE_LABELS = ("rlnMicrographDoseRate", "rlnMicrographDosePerFrame", "cryolensDosePerFrame")
PRE_EXPOSURE_LABELS = ("rlnMicrographPreExposure", "cryolensPreExposure")


@dataclass
class MotionJobOptions:
    """What the job needs besides the alignment parameters.

    Attributes:
        preprocess: gain orientation, hot pixels, binning.
        gain: gain reference for every movie (overrides ``rlnMicrographGainName``).
        defect_file: MotionCor2 defect file or defect map (overrides ``rlnMicrographDefectFile``).
        dose_per_frame: exposure per frame [e⁻/Å²]; None = from the STAR file, else no dose weighting.
        pre_exposure: exposure before the first frame [e⁻/Å²]; None = from the STAR file, else 0.
        first_frame, last_frame: 1-based inclusive frame range (last None or <= 0 = the last).
        eer_grouping, eer_upsampling: EER readouts per frame, and 1 (4K) or 2 (8K) rendering.
        plots: write ``Movies/<name>_shifts.png`` per movie.
    """

    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    gain: str | None = None
    defect_file: str | None = None
    dose_per_frame: float | None = None
    pre_exposure: float | None = None
    first_frame: int = 1
    last_frame: int | None = None
    eer_grouping: int = 40
    eer_upsampling: int = 1
    plots: bool = True

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for impossible values."""
        self.preprocess.validate()
        if self.dose_per_frame is not None and not self.dose_per_frame > 0:
            raise ValueError("--dose-per-frame must be positive (e⁻/Å²)")
        if self.pre_exposure is not None and self.pre_exposure < 0:
            raise ValueError("--pre-exposure must not be negative (e⁻/Å²)")
        if self.first_frame < 1:
            raise ValueError("--first-frame must be 1 or more (frames are numbered from 1)")
        if self.last_frame is not None and 0 < self.last_frame < self.first_frame:
            raise ValueError("--last-frame must not come before --first-frame")
        if self.eer_grouping < 1 or self.eer_upsampling not in (1, 2):
            raise ValueError("--eer-grouping must be at least 1 and --eer-upsampling 1 or 2")


@dataclass(frozen=True)
class MovieTask:
    """One movie's work unit (picklable; paths absolute except the names written into STAR files)."""

    movie: str
    movie_name: str
    out_stem: str
    rel_stem: str
    gain: str | None
    gain_name: str | None
    defect: str | None
    defect_name: str | None
    pixel_size: float
    voltage: float
    dose_per_frame: float | None
    pre_exposure: float
    first_frame: int
    last_frame: int | None
    eer_grouping: int
    eer_upsampling: int
    preprocess: PreprocessParams
    motion: Any
    device: str
    plots: bool

    def key(self) -> str:
        """A digest of everything that determines the outputs (movie file identity included)."""
        st = os.stat(self.movie)
        d = dataclasses.asdict(self)
        d.update(preprocess=dataclasses.asdict(self.preprocess), motion=dataclasses.asdict(self.motion),
                 movie_stat=(st.st_size, st.st_mtime_ns), device=None, plots=None)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------ one movie


@lru_cache(maxsize=4)
def _cached_gain(path: str, mtime: int) -> np.ndarray:
    return read_gain(path)


@lru_cache(maxsize=4)
def _cached_defects(path: str, mtime: int, shape: tuple[int, int]) -> np.ndarray:
    return read_defects(path, shape)


def motion_star_blocks(task: MovieTask, result, *, n_frames_movie: int, height: int, width: int,
                       hot_pixels: np.ndarray, bin_factor: float) -> dict:
    """The blocks of RELION's per-movie MotionCorr STAR for an alignment ``result`` (shifts in unbinned pixels)."""
    has_local = getattr(result, "local_model", None) is not None
    general = {"rlnImageSizeX": int(width), "rlnImageSizeY": int(height), "rlnImageSizeZ": int(n_frames_movie),
               "rlnMicrographMovieName": task.movie_name}
    if task.gain_name:
        general["rlnMicrographGainName"] = task.gain_name
    if task.defect_name:
        general["rlnMicrographDefectFile"] = task.defect_name
    general.update(rlnMicrographBinning=float(bin_factor), rlnMicrographOriginalPixelSize=float(task.pixel_size),
                   rlnMicrographDoseRate=float(task.dose_per_frame or 0.0),
                   rlnMicrographPreExposure=float(task.pre_exposure), rlnVoltage=float(task.voltage),
                   rlnMicrographStartFrame=int(task.first_frame), rlnMotionModelVersion=1 if has_local else 0)
    shifts = _numpy(result.shifts_px).astype(np.float64) * bin_factor
    frames = np.arange(task.first_frame, task.first_frame + len(shifts))
    blocks: dict = {"general": general,
                    "global_shift": pd.DataFrame({"rlnMicrographFrameNumber": frames,
                                                  "rlnMicrographShiftX": shifts[:, 0],
                                                  "rlnMicrographShiftY": shifts[:, 1]})}
    if has_local:
        model = result.local_model
        coeffs = np.asarray(getattr(model, "coefficients", model), dtype=np.float64).reshape(-1) * bin_factor
        blocks["local_motion_model"] = pd.DataFrame({"rlnMotionModelCoeffsIdx": np.arange(len(coeffs)),
                                                     "rlnMotionModelCoeff": coeffs})
    blocks["hot_pixels"] = pd.DataFrame({"rlnCoordinateX": hot_pixels[:, 0].astype(float),
                                         "rlnCoordinateY": hot_pixels[:, 1].astype(float)})
    if has_local and getattr(result, "patch_shifts", None) is not None:
        centres = _numpy(result.patch_centres).astype(np.float64) * bin_factor  # (P, 2) x, y
        local = _numpy(result.patch_shifts).astype(np.float64) * bin_factor  # beyond the global shifts
        p, f = local.shape[:2]
        blocks["local_shift"] = pd.DataFrame({
            "rlnMicrographFrameNumber": np.tile(frames, p),
            "rlnCoordinateX": np.repeat(centres[:, 0], f), "rlnCoordinateY": np.repeat(centres[:, 1], f),
            "rlnMicrographShiftX": local[..., 0].reshape(-1), "rlnMicrographShiftY": local[..., 1].reshape(-1)})
    return blocks


_PLOT_LOCK = threading.Lock()  # matplotlib is not thread-safe: one figure at a time


def _figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas, without pyplot (no global figure registry)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path, *, dpi: int) -> Path:
    """Write the figure atomically (temporary PNG, then rename); one draw (no tight bounding box)."""
    tmp = temporary_path(path).with_suffix(".png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_movie_drift(shifts_px: np.ndarray, pixel_size: float, path: Path, *, title: str,
                     patches: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Trajectory of a movie: the specimen displacement (minus the correction shifts) in Å per frame."""
    with _PLOT_LOCK:
        fig = _figure(4.2, 4.0)
        ax = fig.add_axes((0.2, 0.13, 0.58, 0.77))
        cax = fig.add_axes((0.82, 0.13, 0.04, 0.77))
        d = -np.asarray(shifts_px) * pixel_size
        ax.plot(d[:, 0], d[:, 1], "-", color="0.3", lw=1)
        sc = ax.scatter(d[:, 0], d[:, 1], c=np.arange(1, len(d) + 1), s=12, cmap="viridis", zorder=3)
        ax.plot(0, 0, "k+", ms=10)
        fig.colorbar(sc, cax=cax, label="frame")
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_yaxis()
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_title(title, fontsize=9)
        return _save_png(fig, path, dpi=80)


def _done_summary(task: MovieTask, key: str) -> dict | None:
    """The summary of a movie already processed with the same options, or None."""
    side = Path(task.out_stem + ".json")
    try:
        rec = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("key") != key:
        return None
    if not all(Path(task.out_stem + s).is_file() for s in rec.get("files", [])):
        return None
    return {**rec["summary"], "skipped": True}


@dataclass
class LoadedMovie:
    """A movie's frames and reference files as read, before any computation (see :func:`load_movie`)."""

    key: str
    info: Any
    raw: np.ndarray
    gain: torch.Tensor | None
    defects: torch.Tensor | None
    read_seconds: float


def load_movie(task: MovieTask) -> LoadedMovie | dict:
    """Read one movie (float32, writable, never the memory map) and its gain/defects; or, when
    ``Movies/<name>.json`` records the same options and its files exist, that movie's summary."""
    t0 = time.perf_counter()
    key = task.key()
    done = _done_summary(task, key)
    if done is not None:
        return done
    info = movie_info(task.movie, eer_grouping=task.eer_grouping, eer_upsampling=task.eer_upsampling)
    raw = read_movie(task.movie, first_frame=task.first_frame, last_frame=task.last_frame,
                     eer_grouping=task.eer_grouping, eer_upsampling=task.eer_upsampling)
    raw = np.array(raw, dtype=np.float32)  # one writable float32 copy, changed in place later
    gain = defects = None
    if task.gain:
        gain = torch.from_numpy(_cached_gain(task.gain, os.stat(task.gain).st_mtime_ns))
    if task.defect:
        defects = torch.from_numpy(_cached_defects(task.defect, os.stat(task.defect).st_mtime_ns,
                                                   (info.height, info.width)))
    return LoadedMovie(key=key, info=info, raw=raw, gain=gain, defects=defects,
                       read_seconds=time.perf_counter() - t0)


def align_loaded(task: MovieTask, movie: LoadedMovie) -> dict:
    """Preprocess, align and write a movie read by :func:`load_movie`; returns its summary.

    Every file is written atomically and ``Movies/<name>.json`` last (what a rerun checks).
    """
    from cryolens.motion import align_movie

    t_read = time.perf_counter()
    dev = torch.device(task.device)
    prep = preprocess_movie(torch.from_numpy(movie.raw), pixel_size=task.pixel_size, params=task.preprocess,
                            gain=movie.gain, defects=movie.defects, device=dev, copy=False)
    movie.raw = None  # type: ignore[assignment]  # the frames now live in prep (in place on the CPU)
    if not bool(torch.isfinite(torch.stack(torch.aminmax(prep.frames))).all()):  # one pass, NaN propagates
        raise InputError(f"{task.movie}: the frames contain NaN or infinite values (after the gain reference); "
                         "check the movie and the gain file.")
    dose = task.dose_per_frame
    pre = task.pre_exposure + (task.first_frame - 1) * (dose or 0.0)
    t_prep = time.perf_counter()
    result = align_movie(prep.frames, pixel_size=prep.pixel_size, params=task.motion, dose_per_frame=dose,
                         pre_exposure=pre, voltage=task.voltage)
    del prep.frames
    t_align = time.perf_counter()
    out = Path(task.out_stem)
    apix = prep.pixel_size
    dw = getattr(result, "dose_weighted_sum", None)
    files = [".mrc", ".star"]
    if dw is not None:
        write_mrc(out.with_name(out.name + ".mrc"), _numpy(dw), apix)
        write_mrc(out.with_name(out.name + "_noDW.mrc"), _numpy(result.aligned_sum), apix)
        files.append("_noDW.mrc")
    else:
        write_mrc(out.with_name(out.name + ".mrc"), _numpy(result.aligned_sum), apix)
    bin_factor = task.preprocess.bin_factor
    info = movie.info
    write_star(out.with_name(out.name + ".star"),
               motion_star_blocks(task, result, n_frames_movie=info.n_frames, height=info.height, width=info.width,
                                  hot_pixels=prep.hot_pixels, bin_factor=bin_factor))
    shifts = _numpy(result.shifts_px).astype(np.float64)
    if task.plots:
        plot_movie_drift(shifts, apix, out.with_name(out.name + "_shifts.png"), title=Path(task.movie_name).name)
        files.append("_shifts.png")
    summary = {
        "name": out.name, "movie": task.movie_name, "micrograph": task.rel_stem + ".mrc",
        "metadata": task.rel_stem + ".star", "rejected": getattr(result, "rejected", None),
        "accum_total_A": float(result.accum_motion_total_A), "accum_early_A": float(result.accum_motion_early_A),
        "accum_late_A": float(result.accum_motion_late_A), "shifts_px": (shifts * bin_factor).tolist(),
        "pixel_size": task.pixel_size, "n_frames": int(len(shifts)), "hot_pixels": int(len(prep.hot_pixels)),
        "dose_weighted": dw is not None, "local_model": getattr(result, "local_model", None) is not None,
        "local_fallback": getattr(result, "local_fallback", None),
        "seconds": {"read": round(movie.read_seconds, 3), "preprocess": round(t_prep - t_read, 3),
                    "align": round(t_align - t_prep, 3), "write": round(time.perf_counter() - t_align, 3)},
    }
    write_json_atomic(out.with_name(out.name + ".json"), {"key": movie.key, "files": files, "summary": summary})
    return {**summary, "skipped": False}


def process_movie(task: MovieTask) -> dict:
    """Read, preprocess, align and write one movie (the unit of work of the process backends);
    returns its summary (a small dict). Skips the work when ``Movies/<name>.json`` records the same
    options and the files exist."""
    movie = load_movie(task)
    return movie if isinstance(movie, dict) else align_loaded(task, movie)


def map_threads(tasks: list[MovieTask], workers: int, *,
                progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Process movies in this process: ``workers`` movies at once in threads, each with one torch
    thread (torch releases the GIL inside its kernels, so the threads use separate cores), while a
    reader thread reads the next movies ahead (at most ``workers + 1`` movies in memory).

    The torch thread count is restored afterwards. Summaries come back in the order of ``tasks``;
    the first error is raised after the running movies finish (movies not started are dropped).
    """
    threads = torch.get_num_threads()
    ahead = threading.Semaphore(workers + 1)
    stop = threading.Event()

    def read(task: MovieTask) -> LoadedMovie | dict | None:
        while not ahead.acquire(timeout=0.2):
            if stop.is_set():
                return None
        try:
            movie = load_movie(task)
        except BaseException:
            ahead.release()
            raise
        if isinstance(movie, dict):
            ahead.release()
        return movie

    def work(task: MovieTask, loaded: Future) -> dict:
        movie = loaded.result()
        if movie is None or isinstance(movie, dict):
            return movie  # type: ignore[return-value]  # None only after another movie failed
        try:
            return align_loaded(task, movie)
        finally:
            del movie
            ahead.release()

    _warm_matplotlib = threading.Thread(target=_import_matplotlib, daemon=True) if any(t.plots for t in tasks) \
        else None
    torch.set_num_threads(1)
    reader = ThreadPoolExecutor(1, thread_name_prefix="motion-read")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="motion")
    try:
        if _warm_matplotlib is not None:
            _warm_matplotlib.start()  # the import (GIL-bound) overlaps the first reads and FFTs
        futures = [pool.submit(work, t, reader.submit(read, t)) for t in tasks]
        done = 0
        for fut in as_completed(futures):
            fut.result()  # raise the first error at once
            done += 1
            if progress is not None:
                progress(done, len(tasks))
        return [f.result() for f in futures]
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        reader.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def _import_matplotlib() -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.figure  # noqa: F401
    import matplotlib.backends.backend_agg  # noqa: F401


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ------------------------------------------------------------------------------------ the job


def _first_value(row: pd.Series, labels) -> Any:
    for c in labels:
        if c in row.index and pd.notna(row[c]) and str(row[c]).strip() not in ("", "None"):
            return row[c]
    return None


def _unique_names(paths: list[str]) -> list[str]:
    """Output names: the movie file stems, made unique with the parent folder when two collide."""
    stems = [Path(p).stem for p in paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    out, used = [], set()
    for p, s in zip(paths, stems):
        name = s if seen[s] == 1 else f"{Path(p).parent.name}_{s}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        out.append(name)
    return out


def _rel(path: Path) -> str:
    return os.path.relpath(path)


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
    names = _unique_names([str(p) for p in paths])
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


def _plot_all(summaries: list[dict], path: Path) -> Path:
    """All trajectories (Å) and the accumulated motion per movie."""
    fig = _figure(11, 4.4)
    axes = fig.subplots(1, 2)
    for k, s in enumerate(summaries):
        d = -np.asarray(s["shifts_px"]) * s["pixel_size"]
        axes[0].plot(d[:, 0], d[:, 1], "-", lw=1, alpha=0.8, color="tab:red" if s["rejected"] else None,
                     label=s["name"] if k < 8 else None)
    axes[0].plot(0, 0, "k+", ms=10)
    axes[0].set_aspect("equal", adjustable="datalim")
    axes[0].invert_yaxis()
    axes[0].set_xlabel("x (Å)")
    axes[0].set_ylabel("y (Å)")
    axes[0].set_title("specimen drift (+ = first frame; red = rejected)")
    axes[0].legend(fontsize=7)
    idx = np.arange(1, len(summaries) + 1)
    early = np.array([s["accum_early_A"] for s in summaries])
    late = np.array([s["accum_late_A"] for s in summaries])
    axes[1].bar(idx, early, label="early")
    axes[1].bar(idx, late, bottom=early, label="late")
    axes[1].set_xlabel("movie")
    axes[1].set_ylabel("accumulated motion (Å)")
    axes[1].legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.25)
    return _save_png(fig, path, dpi=90)


def run_motion(star: str | os.PathLike, out_dir: str | os.PathLike, motion_params, options: MotionJobOptions, *,
               backend: str | None = None, workers: int | None = None, device: torch.device | str = "cpu",
               progress: Callable[[int, int], None] | None = None, observer: JobObserver | None = None) -> Job:
    """Motion-correct the movies of ``star`` into ``out_dir``; returns the finished :class:`Job`.

    Args:
        star: movies.star (RELION 3.1 ``data_optics`` + ``data_movies``, or 3.0).
        motion_params: :class:`cryolens.motion.MotionParams`.
        options: preprocessing, frame range, dose and files (:class:`MotionJobOptions`).
        backend: compute backend spec (``local``, ``local:N``, ``inprocess`` (one movie after the
            other), ``threads[:N]`` (N movies at once in this process, see :func:`map_threads`),
            ``tcp://...``, ``profile:NAME``); default on the CPU: ``threads:cores``, or
            ``local:workers`` processes when ``workers`` is given; on a GPU: ``inprocess``.
        workers: movies processed at once by the local backend (default: one per core).
        device: where each unit computes.
    """
    from cryolens.project.backends import cpu_count, get_backend

    out = Path(out_dir)
    check_params("motion", motion_params, options)
    dev = str(device)
    tasks, optics, movies, notes = _build_tasks(star, out, motion_params, options, dev)
    n_workers = max(1, min(workers or cpu_count(), len(tasks)))
    if backend is not None:
        spec = backend.strip()
    elif dev.startswith("cuda") or n_workers == 1:
        spec = "inprocess"  # one process owns the GPU; one core: nothing to overlap
    else:
        spec = f"threads:{n_workers}" if workers is None else f"local:{n_workers}"
    n_threads = _thread_count(spec, n_workers, len(tasks)) if spec.split(":")[0] == "threads" else 0
    params = {"motion": dataclasses.asdict(motion_params), "job": dataclasses.asdict(options), "backend": spec}
    with Job("motion", out, params=params, inputs={"movies": star}, device=dev, observer=observer) as job:
        (out / "Movies").mkdir(exist_ok=True)
        for note in notes:
            job.log.warning(note)
        job.log.info("%d movies through backend %s", len(tasks), spec)
        with job.timed("align_all"):
            if n_threads:
                summaries = map_threads(tasks, n_threads, progress=progress)
            else:
                with get_backend(spec) as be:
                    summaries = be.map(process_movie, tasks, desc="motion", progress=progress)
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
        job.add_output("micrographs", out / "micrographs.star")
        if rejected.any():
            rej = rows[rejected].assign(cryolensRejectReason=[s["rejected"] for s in summaries if s["rejected"]])
            write_micrographs(out / "rejected.star", mic_optics, rej.reset_index(drop=True))
            job.add_output("rejected", out / "rejected.star")
        else:
            (out / "rejected.star").unlink(missing_ok=True)
        _plot_all(summaries, out / "drift.png")
        total = np.array([s["accum_total_A"] for s in summaries])
        fresh = [s for s in summaries if not s["skipped"]]
        job.results.update(
            n_movies=len(summaries), n_rejected=int(rejected.sum()), n_skipped=len(summaries) - len(fresh),
            mean_total_motion_A=round(float(total.mean()), 3), max_total_motion_A=round(float(total.max()), 3),
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


def _thread_count(spec: str, default: int, n_tasks: int) -> int:
    """Movies at once for ``threads`` / ``threads:N``."""
    _, _, n = spec.partition(":")
    if not n:
        return max(1, min(default, n_tasks))
    if not n.isdigit() or int(n) < 1:
        raise InputError(f"backend '{spec}': the number of threads after 'threads:' must be a positive integer, "
                         "e.g. threads:2")
    return max(1, min(int(n), n_tasks))


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
