"""One movie of ``cryolens motion``: the picklable unit (:class:`MovieTask`) and its two phases.

:func:`load_movie` reads a movie and its gain/defects (or finds it done by an earlier run);
:func:`align_loaded` preprocesses (:mod:`cryolens.motion.preprocess`), aligns
(:func:`cryolens.motion.align_movie`) and writes its outputs, returning a small summary.
:data:`MOVIE_UNIT` bundles both as a :class:`cryolens.compute.threads.Staged` unit, so the
threads backend reads the next movies while others align, and every other backend maps it
as a plain function. Every file is written atomically and ``Movies/<name>.json`` last
(:class:`cryolens.jobs.units.UnitRecord`), so a rerun with the same options skips movies done.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryolens.compute.threads import Ready, Staged
from cryolens.errors import InputError
from cryolens.io import write_mrc, write_star
from cryolens.io.movies import movie_info, read_defects, read_gain, read_movie
from cryolens.jobs.motion_plots import plot_movie_drift
from cryolens.jobs.units import UnitRecord, fingerprint
from cryolens.motion.preprocess import PreprocessParams, preprocess_movie

__all__ = ["MovieTask", "LoadedMovie", "MovieUnit", "MOVIE_UNIT", "load_movie", "align_loaded", "process_movie",
           "motion_star_blocks"]


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
        """A digest of everything that determines the outputs (the movie file's size and mtime included)."""
        d = dataclasses.asdict(self)  # preprocess and motion params too
        d.update(device=None, plots=None)
        return fingerprint(d, files=[self.movie])

    def record(self, key: str) -> UnitRecord:
        """``Movies/<name>.json``, the unit's results written last, carrying ``key``."""
        return UnitRecord(self.out_stem + ".json", key)



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



@dataclass
class LoadedMovie:
    """A movie's frames and reference files as read, before any computation (see :func:`load_movie`)."""

    key: str
    info: Any
    raw: np.ndarray
    gain: torch.Tensor | None
    defects: torch.Tensor | None
    read_seconds: float


def load_movie(task: MovieTask) -> LoadedMovie | Ready:
    """Open one movie (its frames as stored: an MRC's memory map, the kernel asked to read the file ahead) and
    read its gain/defects; or, when ``Movies/<name>.json`` records the same options and its files exist, that
    movie's summary (``skipped`` True) wrapped in :class:`Ready`. The float32 copy is made by
    :func:`align_loaded`, so a movie read ahead holds no memory of this process (100 MB less per movie
    waiting, for 1024² x 24 frames)."""
    t0 = time.perf_counter()
    key = task.key()
    done = task.record(key).done()
    if done is not None:
        return Ready({**done["summary"], "skipped": True})
    info = movie_info(task.movie, eer_grouping=task.eer_grouping, eer_upsampling=task.eer_upsampling)
    raw = read_movie(task.movie, first_frame=task.first_frame, last_frame=task.last_frame,
                     eer_grouping=task.eer_grouping, eer_upsampling=task.eer_upsampling)
    _read_ahead(task.movie)
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
    frames = torch.from_numpy(np.array(movie.raw, dtype=np.float32))  # one writable copy, changed in place
    movie.raw = None  # type: ignore[assignment]
    prep = preprocess_movie(frames, pixel_size=task.pixel_size, params=task.preprocess, gain=movie.gain,
                            defects=movie.defects, device=dev, copy=False)
    del frames  # they now live in prep (in place on the CPU)
    if not prep.finite:
        raise InputError(f"{task.movie}: the frames contain NaN or infinite values (after the gain reference); "
                         "check the movie and the gain file.")
    dose = task.dose_per_frame
    pre = task.pre_exposure + (task.first_frame - 1) * (dose or 0.0)
    t_prep = time.perf_counter()
    result = align_movie(prep.take_frames(), pixel_size=prep.pixel_size, params=task.motion, dose_per_frame=dose,
                         pre_exposure=pre, voltage=task.voltage)  # frames freed once their spectra are made
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
    task.record(movie.key).finish({"summary": summary}, outputs=[out.with_name(out.name + f) for f in files])
    return {**summary, "skipped": False}


def process_movie(task: MovieTask) -> dict:
    """Read, preprocess, align and write one movie; returns its summary (a small dict). Skips the
    work when ``Movies/<name>.json`` records the same options and the files exist."""
    return MOVIE_UNIT(task)


class MovieUnit(Staged):
    """A movie's work in two phases for the compute backends: :func:`load_movie`, then :func:`align_loaded`."""

    def load(self, item: MovieTask) -> LoadedMovie | Ready:
        return load_movie(item)

    def run(self, item: MovieTask, loaded: LoadedMovie) -> dict:
        return align_loaded(item, loaded)


#: The unit the motion job maps over its :class:`MovieTask` list (picklable).
MOVIE_UNIT = MovieUnit()


def _read_ahead(path: str) -> None:
    """Ask the kernel to read ``path`` into its page cache now (a no-op where it cannot)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (AttributeError, OSError):
        pass
    finally:
        os.close(fd)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
