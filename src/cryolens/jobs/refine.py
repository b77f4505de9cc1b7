"""``cryolens refine``: gold-standard 3D auto-refinement from a starting reference.

Outputs in the job folder: ``half1.mrc``, ``half2.mrc`` (unfiltered half maps), ``map.mrc``
(both halves, FSC-weighted per shell by ``sqrt(2·FSC/(1+FSC))``; no sharpening),
``particles.star`` (refined ``rlnAngleRot/Tilt/Psi``, ``rlnOriginXAngst/YAngst``,
``rlnRandomSubset``, ``rlnLogLikeliContribution``, ``rlnMaxValueProbDistribution``),
``fsc.star``, ``iterations.star`` (per-iteration resolution, sampling and pose changes),
``angdist.png``, ``fsc.png``, ``map_slices.png``, ``report.html``, ``job.json``.

Postprocessing (solvent-corrected FSC, sharpening, automatic masks) belongs to
``cryolens postprocess``; run it on ``half1.mrc``/``half2.mrc``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.core.fourier import resample
from cryolens.core.rotations import matrix_to_euler
from cryolens.errors import InputError
from cryolens.io import ImageSource, merge_optics, read_mrc, read_particles, write_mrc, \
    write_particles, write_star
from cryolens.jobs.reconstruct import _checked_batches, _single_pixel_size, fsc_table, require_particle_columns
from cryolens.jobs.report import new_figure, plot_central_slices, plot_fsc, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.structures import pad_or_crop
from cryolens.particles import assign_half_sets
from cryolens.refine import RefineParams, RefineResult, auto_refine

__all__ = ["run_refine", "read_reference", "iterations_table", "plot_angular_distribution"]


def read_reference(path: str | os.PathLike, *, box: int, pixel_size: float, what: str = "reference") -> torch.Tensor:
    """A cubic map on the particles' grid: resampled (Fourier) to ``pixel_size`` and padded/cropped to ``box``.

    A header voxel size of 0 is taken to be the particles' pixel size.
    """
    data, apix = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: the {what} must be a cubic 3D map, got shape {data.shape}; give a cubic map.")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the {what} contains NaN or infinite values; fix or regenerate the map.")
    vol = torch.as_tensor(np.array(data, dtype=np.float32))
    if apix > 0 and abs(apix - pixel_size) > 0.005 * pixel_size:
        vol = resample(vol, apix, pixel_size, ndim=3)
        if abs(data.shape[0] * apix / vol.shape[0] - pixel_size) > 0.01 * pixel_size:
            raise InputError(f"{path}: its voxel size {apix:g} Å cannot be resampled to the particles' "
                             f"{pixel_size:g} Å; resample the {what} (e.g. relion_image_handler --rescale_angpix).")
    return pad_or_crop(vol, box) if vol.shape[0] != box else vol


def iterations_table(result: RefineResult) -> pd.DataFrame:
    """Per-iteration log as a STAR table (cryolens columns, RELION style names)."""
    rows = [{
        "rlnCryolensIteration": h.iteration, "rlnCryolensResolution": round(h.resolution, 3),
        "rlnCryolensBandLimit": round(h.band_limit, 3), "rlnCryolensAngularStep": round(h.angular_step, 4),
        "rlnCryolensOffsetStepPx": round(h.offset_step, 4), "rlnCryolensMeanAngleChange": round(h.mean_angle_change, 4),
        "rlnCryolensMedianAngleChange": round(h.median_angle_change, 4),
        "rlnCryolensRmsShiftChangePx": round(h.rms_shift_change, 4), "rlnCryolensSearch": h.mode,
        "rlnCryolensSeconds": round(h.seconds, 2)} for h in result.history]
    return pd.DataFrame(rows)


def plot_angular_distribution(rot: np.ndarray, tilt: np.ndarray, path: str | os.PathLike) -> Path:
    """Viewing directions as a 2-D histogram of (rot, tilt) on equal-solid-angle bins (uniform in cos tilt)."""
    fig, ax = new_figure(figsize=(6.4, 3.6))
    tilt_edges = np.rad2deg(np.arccos(np.linspace(1, -1, 19)))
    rot_edges = np.linspace(-180, 180, 37)
    h, _, _ = np.histogram2d(((rot + 180) % 360) - 180, tilt, bins=(rot_edges, tilt_edges))
    mesh = ax.pcolormesh(rot_edges, tilt_edges, h.T, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label="particles per bin (equal solid angle)")
    ax.set_xlabel("rlnAngleRot (°)")
    ax.set_ylabel("rlnAngleTilt (°)")
    ax.set_title(f"angular distribution ({len(rot)} particles)")
    return save_figure(fig, path)


def _refined_table(particles: pd.DataFrame, res: RefineResult, pixel_size: float) -> pd.DataFrame:
    out = particles.copy()
    rot, tilt, psi = (t.numpy() for t in matrix_to_euler(torch.as_tensor(res.rotations)))
    out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = rot, tilt, psi
    out["rlnOriginXAngst"] = res.shifts[:, 0] * pixel_size
    out["rlnOriginYAngst"] = res.shifts[:, 1] * pixel_size
    out["rlnLogLikeliContribution"] = res.log_likelihood
    out["rlnMaxValueProbDistribution"] = res.max_probability
    return out.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in out.columns])


def run_refine(star: str | os.PathLike, ref: str | os.PathLike, out_dir: str | os.PathLike, params: RefineParams, *,
               mask: str | os.PathLike | None = None, device: torch.device | str = "cpu",
               progress: Callable[[int, int, int, float], None] | None = None,
               observer: JobObserver | None = None) -> Job:
    """Refine ``star`` against the reference ``ref`` into ``out_dir``; returns the finished :class:`Job`."""
    out = Path(out_dir)
    check_params("refine", params)
    optics, particles = read_particles(star)
    require_particle_columns(particles, star, pose=False)
    source = ImageSource(particles, star)
    pixel_size = _single_pixel_size(optics, star)
    box = source.image_size
    if len(particles) < 10:
        raise InputError(f"{star}: only {len(particles)} particles; refinement needs at least 10 (two half sets).")
    reference = read_reference(ref, box=box, pixel_size=pixel_size)
    mask_vol = None
    if mask is not None:
        mask_vol = read_reference(mask, box=box, pixel_size=pixel_size, what="mask")
        if float(mask_vol.min()) < -1e-3 or float(mask_vol.max()) > 1 + 1e-3 or float(mask_vol.max()) <= 0:
            raise InputError(f"{mask}: a mask must hold values between 0 and 1 with some 1s; make a soft mask "
                             "(e.g. relion_mask_create) and pass it again.")
        mask_vol = mask_vol.clamp(0, 1)
    inputs = {"particles": star, "reference": ref, **({"mask": mask} if mask is not None else {})}
    with Job("refine", out, params=params, inputs=inputs, seed=params.seed, device=str(device),
             observer=observer) as job:
        particles = assign_half_sets(particles, seed=params.seed)
        table = merge_optics(optics, particles)
        names = particles["rlnImageName"]

        def batches():
            return _checked_batches(source, names, params.batch_size, star)

        def logged(it: int, done: int, total: int, resolution: float) -> None:
            if done == total:
                job.log.info("iteration %d finished (alignment started at %.2f Å)", it, resolution)
            if progress is not None:
                progress(it, done, total, resolution)

        with job.timed("refine"):
            res = auto_refine(batches, table, reference, pixel_size=pixel_size, params=params, mask=mask_vol,
                              device=device, progress=logged)
        for h in res.history:
            job.log.info("iteration %d: %.2f Å (band %.1f Å, step %.2f°, %.2f px), pose change median %.2f°, "
                         "rms shift %.2f px, %.1f s", h.iteration, h.resolution, h.band_limit, h.angular_step,
                         h.offset_step, h.median_angle_change, h.rms_shift_change, h.seconds)
        refined = _refined_table(particles, res, pixel_size)
        write_particles(out / "particles.star", optics, refined)
        job.add_output("particles", out / "particles.star")
        for name, vol in (("half1", res.half1), ("half2", res.half2), ("map", res.full)):
            write_mrc(out / f"{name}.mrc", vol.numpy(), pixel_size)
            job.add_output(name, out / f"{name}.mrc")
        write_star(out / "fsc.star", {"fsc": fsc_table(res.fsc)})
        job.add_output("fsc", out / "fsc.star")
        write_star(out / "iterations.star", {"iterations": iterations_table(res)})
        job.add_output("iterations", out / "iterations.star")
        plot_fsc({"half maps": res.fsc}, out / "fsc.png")
        plot_central_slices(res.full.numpy(), out / "map_slices.png", title="map.mrc")
        plot_angular_distribution(refined["rlnAngleRot"].to_numpy(), refined["rlnAngleTilt"].to_numpy(),
                                  out / "angdist.png")
        job.results.update(resolution_0143_A=round(res.fsc.resolution_at(0.143), 3),
                           resolution_05_A=round(res.fsc.resolution_at(0.5), 3), iterations=len(res.history),
                           converged=res.converged, n_particles_half1=int((particles["rlnRandomSubset"] == 1).sum()),
                           n_particles_half2=int((particles["rlnRandomSubset"] == 2).sum()),
                           box=box, pixel_size_A=pixel_size, symmetry=params.symmetry,
                           median_max_probability=round(float(np.median(res.max_probability)), 4))
        write_report(out / "report.html", title="3D auto-refinement", summary=job.results, params=job.params,
                     images=["fsc.png", "map_slices.png", "angdist.png"])
        job.log.info("gold-standard resolution (FSC 0.143): %.2f Å after %d iterations", res.resolution,
                     len(res.history))
    return job
