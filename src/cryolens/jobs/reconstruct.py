"""``cryolens reconstruct``: half maps, full map and FSC from particles with known poses.

Outputs in the job folder: ``half1.mrc``, ``half2.mrc``, ``map.mrc`` (from all particles;
Wiener-filtered by the half maps' FSC when ``wiener=True``), ``fsc.star`` (RELION ``data_fsc``
columns), ``fsc.png``, ``map_slices.png``, ``particles.star`` (the input with
``rlnRandomSubset`` written back), ``report.html``, ``job.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.core.fsc import FSCResult
from cryolens.errors import InputError
from cryolens.io import ImageSource, merge_optics, read_particles, require_columns, write_mrc, write_particles, write_star
from cryolens.jobs.report import plot_central_slices, plot_fsc, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.particles import CTF_COLUMNS, POSE_COLUMNS, assign_half_sets
from cryolens.reconstruct import ReconstructParams, reconstruct_half_maps

__all__ = ["run_reconstruct", "fsc_table"]


def fsc_table(curve: FSCResult) -> pd.DataFrame:
    """FSC curve as RELION's ``data_fsc`` loop (spectral index, 1/Å, Å, FSC)."""
    return pd.DataFrame({
        "rlnSpectralIndex": curve.shell.astype(int),
        "rlnResolution": curve.frequency,
        "rlnAngstromResolution": np.where(np.isfinite(curve.resolution), curve.resolution, 999.0),
        "rlnFourierShellCorrelation": curve.fsc,
    })


def _single_pixel_size(optics: pd.DataFrame, star: str | os.PathLike) -> float:
    sizes = optics["rlnImagePixelSize"].astype(float).unique()
    if len(sizes) != 1:
        raise InputError(f"{star}: optics groups have different pixel sizes ({', '.join(f'{s:g}' for s in sizes)} Å); "
                         "rescale the particles to one pixel size before reconstructing.")
    return float(sizes[0])


def _checked_batches(source: ImageSource, names: pd.Series, batch_size: int, star: str | os.PathLike):
    """Batches of the source, refusing images with NaN/inf (named in the error)."""
    for idx, images in source.iter_batches(batch_size):
        finite = np.isfinite(images).all(axis=(1, 2))
        if not finite.all():
            bad = names.iloc[int(idx[~finite][0])]
            raise InputError(f"{star}: image {bad} contains NaN or infinite values; re-extract or remove that particle.")
        yield idx, images


def require_particle_columns(particles, star: str | os.PathLike, pose: bool) -> None:
    """Image names (and poses when ``pose``) must be present, and defocus U and V together or not at all.

    A table with only one of the two would otherwise be read as "no CTF" without a word.
    """
    require_columns(particles, ["rlnImageName", *(POSE_COLUMNS if pose else [])], star, "particles")
    if any(c in particles.columns for c in CTF_COLUMNS[:2]):
        require_columns(particles, CTF_COLUMNS[:2], star, "particles")


def run_reconstruct(star: str | os.PathLike, out_dir: str | os.PathLike, params: ReconstructParams, *,
                    seed: int = 0, device: torch.device | str = "cpu",
                    progress: Callable[[int, int], None] | None = None,
                    observer: JobObserver | None = None) -> Job:
    """Reconstruct from ``star`` into ``out_dir``; returns the finished :class:`Job`."""
    out = Path(out_dir)
    check_params("reconstruct", params)
    optics, particles = read_particles(star)
    require_particle_columns(particles, star, pose=True)
    source = ImageSource(particles, star)
    pixel_size = _single_pixel_size(optics, star)
    box = source.image_size
    with Job("reconstruct", out, params=params, inputs={"particles": star}, seed=seed, device=str(device),
             observer=observer) as job:
        particles = assign_half_sets(particles, seed=seed)
        write_particles(out / "particles.star", optics, particles)
        job.add_output("particles", out / "particles.star")
        table = merge_optics(optics, particles)
        with job.timed("reconstruct"):
            res = reconstruct_half_maps(_checked_batches(source, particles["rlnImageName"], params.batch_size, star), table, box=box,
                                        pixel_size=pixel_size, params=params, device=device, progress=progress)
        for name, vol in (("half1", res.half1), ("half2", res.half2), ("map", res.full)):
            write_mrc(out / f"{name}.mrc", vol.numpy(), pixel_size)
            job.add_output(name, out / f"{name}.mrc")
        write_star(out / "fsc.star", {"fsc": fsc_table(res.fsc)})
        job.add_output("fsc", out / "fsc.star")
        plot_fsc({"half maps": res.fsc}, out / "fsc.png")
        plot_central_slices(res.full.numpy(), out / "map_slices.png", title="map.mrc")
        job.results.update(resolution_0143_A=round(res.fsc.resolution_at(0.143), 3),
                           resolution_05_A=round(res.fsc.resolution_at(0.5), 3),
                           n_particles_half1=res.n_particles[0], n_particles_half2=res.n_particles[1],
                           box=box, pixel_size_A=pixel_size, symmetry=params.symmetry)
        write_report(out / "report.html", title="Reconstruction", summary=job.results, params=job.params,
                     images=["fsc.png", "map_slices.png"])
        job.log.info("half-map FSC 0.143 resolution: %.2f Å", res.fsc.resolution_at(0.143))
    return job
