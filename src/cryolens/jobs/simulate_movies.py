"""``cryolens simulate movies``: dose-fractionated movies with motion, damage, noise and ground truth.

Outputs in the job folder (paths inside STAR files are relative to the current
folder, RELION's rule):

* ``Movies/movie_NNNN.mrcs`` (or ``.tif``): integer counts per frame (protein dark).
  MRC: int8 (mode 0) when every count fits 127, else uint16 (mode 6). TIFF: one LZW page
  per frame, uint8 or uint16, stored flipped in y as EM programs expect (RELION reads
  the same image as from the MRC).
* ``Movies/movie_NNNN.star``: the true motion as RELION's MotionCorr writes it:
  ``data_general`` (size, movie, gain, binning, pixel size, dose per frame,
  pre-exposure, voltage, start frame, motion model version), ``data_global_shift``
  (correction shifts in movie pixels relative to frame 1), ``data_local_motion_model``
  (RELION's polynomial model of the local correction) with ``data_local_shift`` (its
  values at the centres of a 5 × 5 patch grid) when local motion is on, and
  ``data_hot_pixels`` (0-based x, y of the hot pixels).
* ``movies.star``: RELION 3.1 ``data_optics`` + ``data_movies`` (rlnMicrographMovieName,
  rlnOpticsGroup, rlnMicrographMetadata -> the truth STAR, rlnMicrographGainName).
* ``gain.mrc`` (with ``--gain``): float32 gain reference; ``corrected = raw × gain``
  (RELION/MotionCor2 convention, no flip or rotation needed; 0 at dead pixels).
  ``defects.txt``: MotionCor2/RELION defect file (``x y 1 1`` per dead or hot pixel);
  ``detector.star``: ``data_hot_pixels`` and ``data_dead_pixels``.
* ``micrographs_truth.star`` (CTF per movie, at the output pixel size),
  ``particles_truth.star`` (every particle: rlnMicrographName = the movie's name with
  ``.mrc``, rlnMicrographMovieName, coordinates in output pixels of the frame-1-aligned
  sum, angles, defocus, class), ``Movies/movie_NNNN_truth.star`` (coordinates),
  ``truth_map.mrc`` at the output pixel size, ``drift.png``, ``report.html``,
  ``job.json``, ``run.log``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.errors import InputError
from cryolens.io import write_mrc, write_star
from cryolens.io.atomic import write_text_atomic
from cryolens.io.movie_writer import MovieWriter
from cryolens.jobs.folders import recorded_name
from cryolens.jobs.report import new_figure, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.structures import structure_inputs
from cryolens.simulate.micrograph_params import MicrographParams
from cryolens.simulate.movie_truth import MovieTruth
from cryolens.simulate.movies import (Detector, MovieParams, field_shape, make_detector, movie_margin, simulate_movie,
                                      storage_dtype)

__all__ = ["run_simulate_movies", "movie_truth_blocks"]


def movie_truth_blocks(truth: MovieTruth, *, movie_name: str, gain_name: str | None, defect_name: str | None,
                       binning: float, hot_pixels: np.ndarray) -> dict:
    """The blocks of a RELION MotionCorr-like STAR file holding a movie's true motion."""
    general = {"rlnImageSizeX": truth.width, "rlnImageSizeY": truth.height, "rlnImageSizeZ": truth.n_frames,
               "rlnMicrographMovieName": movie_name}
    if gain_name:
        general["rlnMicrographGainName"] = gain_name
    if defect_name:
        general["rlnMicrographDefectFile"] = defect_name
    general.update(rlnMicrographBinning=float(binning), rlnMicrographOriginalPixelSize=truth.pixel_size,
                   rlnMicrographDoseRate=truth.dose_per_frame, rlnMicrographPreExposure=truth.pre_exposure,
                   rlnVoltage=truth.voltage, rlnMicrographStartFrame=1,
                   rlnMotionModelVersion=0 if truth.local_model is None else 1)
    blocks: dict = {"general": general, "global_shift": truth.global_shift_table()}
    if truth.local_model is not None:
        blocks["local_motion_model"] = pd.DataFrame({"rlnMotionModelCoeffsIdx": np.arange(36),
                                                     "rlnMotionModelCoeff": truth.local_model.coefficients})
    blocks["hot_pixels"] = pd.DataFrame({"rlnCoordinateX": hot_pixels[:, 0].astype(float),
                                         "rlnCoordinateY": hot_pixels[:, 1].astype(float)})
    if truth.local_model is not None:
        blocks["local_shift"] = truth.local_shift_table()
    return blocks


def _write_frames(movie, writer: MovieWriter, dtype, progress: Callable[[int], None] | None) -> None:
    """Compute frames in this thread while a second thread writes them (bounded queue)."""
    q: queue.Queue = queue.Queue(maxsize=2)
    error: list[BaseException] = []

    def consume() -> None:
        try:
            while (item := q.get()) is not None:
                writer.write(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the producer
            error.append(e)
            while q.get() is not None:
                pass

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        for i, frame in movie.frames(dtype):
            if error:
                break
            q.put(frame)
            if progress is not None:
                progress(i + 1)
    finally:
        q.put(None)
        t.join()
    if error:
        raise error[0]


def _plot_drift(truths: list[MovieTruth], pixel_size: float, path: Path) -> Path:
    """Global trajectories of all movies (Å), their frame-to-frame speed, and movie 1's local field."""
    fig, axes = new_figure(ncols=3, figsize=(15, 4.8))
    for k, t in enumerate(truths):
        d = t.displacements * t.pixel_size
        axes[0].plot(d[:, 0], d[:, 1], "-", lw=1, alpha=0.8, label=f"movie {k + 1}" if k < 8 else None)
        axes[0].plot(d[-1, 0], d[-1, 1], "o", ms=3, color=axes[0].lines[-1].get_color())
        speed = np.r_[0.0, np.linalg.norm(np.diff(d, axis=0), axis=1)]
        axes[1].plot(np.arange(1, t.n_frames + 1), speed, lw=1, alpha=0.8)
    axes[0].plot(0, 0, "k+", ms=10)
    axes[0].set_aspect("equal", adjustable="datalim")
    axes[0].set_xlabel("x (Å)")
    axes[0].set_ylabel("y (Å)")
    axes[0].invert_yaxis()
    axes[0].set_title("specimen drift (frame middles; + = frame 1)")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("frame")
    axes[1].set_ylabel("Å per frame")
    axes[1].set_title("drift speed (fast initial phase)")
    t = truths[0]
    if t.local_model is not None:
        xs = np.linspace(0.05, 0.95, 7) * t.width
        ys = np.linspace(0.05, 0.95, 7) * t.height
        xx, yy = np.meshgrid(xs, ys)
        sx, sy = t.local_model.shift_at_pixels(t.n_frames - 1, xx, yy, width=t.width, height=t.height)
        ux, uy = -sx.numpy() * t.pixel_size, -sy.numpy() * t.pixel_size  # displacement, Å
        q = axes[2].quiver(xx, yy, ux, uy, np.hypot(ux, uy), angles="xy", cmap="viridis")
        fig.colorbar(q, ax=axes[2], label="Å")
        axes[2].set_xlim(0, t.width)
        axes[2].set_ylim(t.height, 0)
        axes[2].set_aspect("equal")
        axes[2].set_title("movie 1: local motion at the last frame")
    else:
        axes[2].axis("off")
        axes[2].text(0.5, 0.5, "no local motion", ha="center", va="center")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _detector_files(out: Path, det: Detector, pixel_size: float) -> tuple[str | None, str | None]:
    """gain.mrc, defects.txt and detector.star; returns the gain and defect names for the STAR files."""
    gain_name = defect_name = None
    if det.gain_reference is not None:
        write_mrc(out / "gain.mrc", det.gain_reference.cpu().numpy(), pixel_size)
        gain_name = recorded_name(out / "gain.mrc")
    bad = np.concatenate([det.dead_pixels, det.hot_pixels])
    if len(bad):
        write_text_atomic(out / "defects.txt", "".join(f"{x} {y} 1 1\n" for x, y in bad))
        defect_name = recorded_name(out / "defects.txt")
    write_star(out / "detector.star", {
        "hot_pixels": pd.DataFrame({"rlnCoordinateX": det.hot_pixels[:, 0].astype(float),
                                    "rlnCoordinateY": det.hot_pixels[:, 1].astype(float)}),
        "dead_pixels": pd.DataFrame({"rlnCoordinateX": det.dead_pixels[:, 0].astype(float),
                                     "rlnCoordinateY": det.dead_pixels[:, 1].astype(float)})})
    return gain_name, defect_name


def run_simulate_movies(out_dir: str | os.PathLike, params: MovieParams, micrograph_params: MicrographParams, *,
                        n_movies: int, fmt: str = "mrc", device: torch.device | str = "cpu",
                        progress: Callable[[int, int], None] | None = None,
                        observer: JobObserver | None = None) -> Job:
    """Simulate ``n_movies`` movies (``fmt``: ``mrc`` stacks or ``tiff``) into ``out_dir``; returns the finished
    :class:`Job`.

    ``micrograph_params`` sets the specimen (structures, ice, CTF, particles): its ``width`` and
    ``height`` are the movie's size (physical pixels), ``pixel_size`` the output (physical) pixel
    size in Å and ``box`` the structures' box at that size; its dose, voltage, seed and radiation
    damage are replaced by the movie's (damage is applied frame by frame).
    """
    out = Path(out_dir)
    check_params("simulate movies", params, micrograph_params)
    if n_movies < 1:
        raise InputError("simulate movies: --n-movies must be at least 1.")
    if fmt not in ("mrc", "tiff"):
        raise InputError(f"simulate movies: --format {fmt} is not supported; use mrc or tiff (EER cannot be written).")
    job_params = {"movie": dataclasses.asdict(params), "micrograph": dataclasses.asdict(micrograph_params),
                  "n_movies": n_movies, "format": fmt}
    inputs = structure_inputs(list(micrograph_params.structures))
    with Job("simulate_movies", out, params=job_params, inputs=inputs, seed=params.seed, device=str(device),
             observer=observer) as job:
        run = _MovieRun.start(job, out, params, micrograph_params, fmt=fmt, device=device)
        total = n_movies * params.n_frames
        for i in range(n_movies):
            done = i * params.n_frames
            run.simulate(i, (lambda k, d=done: progress(d + k, total)) if progress else None)
        n_particles = run.write_tables()
        _plot_drift(run.truths, run.mpix, out / "drift.png")
        secs = [job.timings[f"movie_{i + 1:04d}"] for i in range(n_movies)]
        job.results.update(
            n_movies=n_movies, n_frames=params.n_frames, width=run.w, height=run.h, movie_pixel_size_A=run.mpix,
            output_pixel_size_A=run.apix, super_resolution=params.super_resolution, format=fmt,
            frame_dtypes=sorted(run.dtypes), dose_per_frame=params.dose_per_frame,
            total_dose=params.n_frames * params.dose_per_frame, n_particles=n_particles,
            max_drift_A=round(max(float(np.linalg.norm(t.displacements, axis=1).max()) * run.mpix
                                  for t in run.truths), 2),
            hot_pixels=int(len(run.det.hot_pixels)), dead_pixels=int(len(run.det.dead_pixels)),
            saturated_pixels=int(run.saturated), seconds_per_movie=round(float(np.mean(secs)), 2),
            cpu_seconds_per_movie=round(float(np.mean(run.cpu_seconds)), 2),
            compiled_kernels=run.compiled)
        write_report(out / "report.html", title="Simulated movies", summary=job.results,
                     params={**{f"movie.{k}": v for k, v in job.params["movie"].items()},
                             **{f"micrograph.{k}": v for k, v in job.params["micrograph"].items()}},
                     images=["drift.png"])
        job.log.info("wrote %d movies of %dx%dx%d at %.4f Å/px", n_movies, run.w, run.h, params.n_frames, run.mpix)
    return job


@dataclass
class _MovieRun:
    """State of one ``simulate movies`` job: the structures, the field geometry, the detector,
    and the rows of the output tables gathered movie by movie.

    Pixel sizes [Å]: ``apix`` of the output (physical pixel), ``mpix`` of the movie (half of it
    with super-resolution, ``f = 2``); ``(h, w)`` the movie, ``(hf, wf)`` the contrast field
    holding it at ``(oy, ox)``.
    """

    job: Job
    out: Path
    params: MovieParams
    mp: MicrographParams  # of the field
    structs: list
    pops: list[float]
    apix: float
    n_box: int
    f: int
    mpix: float
    h: int
    w: int
    oy: int
    ox: int
    det: Detector
    mtf: torch.Tensor
    fmt: str
    device: torch.device | str
    gain_name: str | None
    defect_name: str | None
    rows: list = field(default_factory=list)
    mic_rows: list = field(default_factory=list)
    truth_parts: list = field(default_factory=list)
    truths: list = field(default_factory=list)
    dtypes: set = field(default_factory=set)
    cpu_seconds: list = field(default_factory=list)
    saturated: int = 0
    compiled: bool = False

    @classmethod
    def start(cls, job: Job, out: Path, params: MovieParams, micrograph_params: MicrographParams, *, fmt: str,
              device) -> "_MovieRun":
        """Load and write the truth maps, size the field, make the detector and write its files."""
        from cryolens.jobs.structures import load_structures
        from cryolens.simulate.micrographs import detector_mtf

        f = 2 if params.super_resolution else 1
        specs, map_pixel_size = list(micrograph_params.structures), micrograph_params.map_pixel_size
        structs = load_structures(specs, pixel_size=micrograph_params.pixel_size, box=micrograph_params.box,
                                  seed=params.seed, map_pixel_size=map_pixel_size)
        apix = float(structs[0].pixel_size)  # output (physical) pixel
        n_box = structs[0].box
        job.params["micrograph"].update(pixel_size=apix, box=n_box, structures=[s.name for s in structs])
        for i, s in enumerate(structs):
            name = "truth_map.mrc" if i == 0 else f"truth_map_class{i + 1}.mrc"
            write_mrc(out / name, s.volume.numpy(), apix)
            job.add_output(name[:-4], out / name)
        if f == 2:  # the same structures on the super-resolution grid
            structs = load_structures(specs, pixel_size=apix / 2, box=2 * n_box, seed=params.seed,
                                      map_pixel_size=map_pixel_size)
        mpix = apix / f
        h, w = micrograph_params.height * f, micrograph_params.width * f
        hf, wf = field_shape(h, w, movie_margin(params, mpix))
        # particles fill the field around the movie at the density of particles_per_micrograph per movie
        # frame; the truth keeps those centred inside the frame
        edge = (micrograph_params.margin / mpix) if micrograph_params.margin is not None else structs[0].box / 2
        n_field = int(round(micrograph_params.particles_per_micrograph * (hf - 2 * edge) * (wf - 2 * edge) / (h * w)))
        mp = dataclasses.replace(micrograph_params, width=wf, height=hf, particles_per_micrograph=n_field,
                                 radiation_damage=False, dose=params.n_frames * params.dose_per_frame,
                                 voltage=params.voltage, seed=params.seed)
        det = make_detector(h, w, params, device=device)
        gain_name, defect_name = _detector_files(out, det, mpix)
        (out / "Movies").mkdir(exist_ok=True)
        mtf = detector_mtf((hf, wf), device=device, nyquist_gaussian=mp.mtf_gaussian)
        return cls(job=job, out=out, params=params, mp=mp, structs=structs, pops=[float(s.population) for s in structs],
                   apix=apix, n_box=n_box, f=f, mpix=mpix, h=h, w=w, oy=(hf - h) // 2, ox=(wf - w) // 2, det=det,
                   mtf=mtf, fmt=fmt, device=device, gain_name=gain_name, defect_name=defect_name)

    def simulate(self, i: int, progress: Callable[[int], None] | None) -> None:
        """Movie ``i``: its specimen, frames (written as computed) and truth STAR files."""
        from cryolens.simulate.micrographs import simulate_micrograph_signal

        params, out = self.params, self.out
        suffix = ".mrcs" if self.fmt == "mrc" else ".tif"
        cpu0 = time.process_time()
        with self.job.timed(f"movie_{i + 1:04d}"):
            sig = simulate_micrograph_signal(self.structs, self.pops, pixel_size=self.mpix, params=self.mp, index=i,
                                             device=self.device)
            movie = simulate_movie(sig.contrast, pixel_size=self.mpix, params=params, detector=self.det, mtf=self.mtf,
                                   index=i, device=self.device)
            dtype = storage_dtype(movie.truth.max_count, self.fmt)
            self.dtypes.add(str(dtype))
            path = out / "Movies" / f"movie_{i + 1:04d}{suffix}"
            with MovieWriter(path, n_frames=params.n_frames, shape=(self.h, self.w), dtype=dtype,
                             pixel_size=self.mpix) as wr:
                _write_frames(movie, wr, dtype, progress)
        self.cpu_seconds.append(time.process_time() - cpu0)
        self.compiled = movie.compiled
        self.saturated += sum(movie.saturated)
        rel = recorded_name(path)
        meta = path.with_suffix(".star")
        write_star(meta, movie_truth_blocks(movie.truth, movie_name=rel, gain_name=self.gain_name,
                                            defect_name=self.defect_name, binning=self.f,
                                            hot_pixels=self.det.hot_pixels))
        row = {"rlnMicrographMovieName": rel, "rlnOpticsGroup": 1, "rlnMicrographMetadata": recorded_name(meta)}
        if self.gain_name:
            row["rlnMicrographGainName"] = self.gain_name
        self.rows.append(row)
        self.truths.append(movie.truth)
        p = self._particles_in_frame(sig.particles)
        mic_name = recorded_name(path.with_suffix(".mrc"))
        write_star(path.with_name(path.stem + "_truth.star"),
                   {"": p[["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber"]]})
        c = sig.ctf
        self.mic_rows.append({"rlnMicrographName": mic_name, "rlnMicrographMovieName": rel, "rlnOpticsGroup": 1,
                              "rlnDefocusU": c["defocus_u"], "rlnDefocusV": c["defocus_v"],
                              "rlnDefocusAngle": c["defocus_angle"],
                              "rlnCtfAstigmatism": abs(c["defocus_u"] - c["defocus_v"]), "rlnCtfBfactor": c["bfactor"],
                              "cryolensTiltAngle": c["tilt_angle"], "cryolensTiltAxisAngle": c["tilt_axis"],
                              "cryolensDose": params.n_frames * params.dose_per_frame,
                              "cryolensNumberOfParticles": len(p)})
        p.insert(0, "rlnMicrographName", mic_name)
        p.insert(1, "rlnMicrographMovieName", rel)
        p["rlnOpticsGroup"] = 1
        self.truth_parts.append(p)
        self.job.log.info("movie %d: %s, %d particles, drift %.1f Å, max count %d", i + 1, dtype, len(p),
                          float(np.linalg.norm(movie.truth.displacements[-1])) * self.mpix, movie.truth.max_count)

    def _particles_in_frame(self, particles: pd.DataFrame) -> pd.DataFrame:
        """Particles whose centre lies in the movie: field pixels -> movie pixels -> output pixels
        (aligned to frame 1)."""
        p = particles.copy()
        p["rlnCoordinateX"] = (p["rlnCoordinateX"] - self.ox) / self.f
        p["rlnCoordinateY"] = (p["rlnCoordinateY"] - self.oy) / self.f
        width, height = self.w // self.f, self.h // self.f
        inside = (p["rlnCoordinateX"] >= 0) & (p["rlnCoordinateX"] < width) & \
                 (p["rlnCoordinateY"] >= 0) & (p["rlnCoordinateY"] < height)
        return p[inside].reset_index(drop=True)

    def write_tables(self) -> int:
        """movies.star, micrographs_truth.star and particles_truth.star; returns the particle count."""
        out, job, params, mp = self.out, self.job, self.params, self.mp
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                               "rlnMicrographOriginalPixelSize": [self.mpix], "rlnVoltage": [params.voltage],
                               "rlnSphericalAberration": [mp.cs], "rlnAmplitudeContrast": [mp.amplitude_contrast]})
        write_star(out / "movies.star", {"optics": optics, "movies": pd.DataFrame(self.rows)})
        job.add_output("movies", out / "movies.star")
        mic_optics = optics.drop(columns=["rlnMicrographOriginalPixelSize"]).assign(rlnMicrographPixelSize=self.apix)
        write_star(out / "micrographs_truth.star", {"optics": mic_optics, "micrographs": pd.DataFrame(self.mic_rows)})
        job.add_output("micrographs_truth", out / "micrographs_truth.star")
        all_parts = pd.concat(self.truth_parts, ignore_index=True)
        part_optics = mic_optics.assign(rlnImagePixelSize=self.apix, rlnImageSize=self.n_box, rlnImageDimensionality=2)
        write_star(out / "particles_truth.star", {"optics": part_optics, "particles": all_parts})
        job.add_output("particles_truth", out / "particles_truth.star")
        return int(len(all_parts))
