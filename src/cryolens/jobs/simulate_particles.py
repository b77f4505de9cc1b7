"""``cryolens simulate particles``: a particle stack with ground truth from a map or the phantom.

Outputs in the job folder: ``particles.mrcs`` (the stack), ``particles.star`` (RELION
3.1; the poses, origins and CTF in it are the ground truth), ``truth_map.mrc`` (the
structure at the stack's pixel size), ``gallery.png``, ``report.html``, ``job.json``.
Image names in the STAR are relative to the current folder (RELION's rule), e.g.
``000001@Simulate/job001/particles.mrcs`` when run from a project folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cryolens.core.fourier import resample
from cryolens.errors import InputError
from cryolens.io import format_image_name, read_mrc, write_mrc, write_particles
from cryolens.io.stack_writer import StackWriter
from cryolens.jobs.report import plot_central_slices, plot_gallery, write_report
from cryolens.jobs.runner import Job
from cryolens.simulate.particles import ParticleSimParams, simulate_particles
from cryolens.simulate.phantom import asymmetric_phantom

__all__ = ["load_structure", "run_simulate_particles"]


def _pad_or_crop(vol: torch.Tensor, box: int) -> torch.Tensor:
    """Real-space pad (zeros) or crop a cubic volume to ``box`` around its centre n//2."""
    n = vol.shape[-1]
    out = torch.zeros((box, box, box), dtype=vol.dtype)
    m = min(n, box)
    so, do = n // 2 - m // 2, box // 2 - m // 2
    out[do:do + m, do:do + m, do:do + m] = vol[so:so + m, so:so + m, so:so + m]
    return out


def load_structure(map_path: str | None, *, pixel_size: float | None, box: int | None,
                   map_pixel_size: float | None = None, seed: int = 0) -> tuple[torch.Tensor, float]:
    """The structure to simulate, at the requested pixel size (Fourier resampling) and box.

    ``map_path=None`` gives the built-in asymmetric phantom (box 64, 2 Å by default).
    """
    if map_path is None:
        apix = pixel_size or 2.0
        return asymmetric_phantom(box or 64, apix, seed=seed), apix
    data, apix = read_mrc(map_path)
    if map_pixel_size:
        apix = map_pixel_size
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{map_path}: the map is {data.shape}, not a cubic volume; pad it to a cube first.")
    if not np.isfinite(data).all():
        raise InputError(f"{map_path}: the map contains NaN or infinite values; fix or regenerate it.")
    if apix <= 0:
        raise InputError(f"{map_path}: the header's voxel size is 0; give it with --map-pixel-size.")
    vol = torch.tensor(data, dtype=torch.float32)
    if pixel_size and abs(pixel_size - apix) > 1e-4:
        vol = resample(vol, apix, pixel_size, ndim=3)
        apix = apix * data.shape[-1] / vol.shape[-1]
    if box and box != vol.shape[-1]:
        vol = _pad_or_crop(vol, box)
    return vol, float(apix)


def run_simulate_particles(out_dir: str | os.PathLike, params: ParticleSimParams, *, map_path: str | None = None,
                           pixel_size: float | None = None, box: int | None = None,
                           map_pixel_size: float | None = None, device: torch.device | str = "cpu",
                           progress: Callable[[int, int], None] | None = None) -> Job:
    """Simulate a particle stack into ``out_dir``; returns the finished :class:`Job`."""
    out = Path(out_dir)
    try:
        params.validate()
    except ValueError as e:
        raise InputError(f"simulate particles: {e}.") from None
    inputs = {"map": map_path or "built-in asymmetric phantom"}
    with Job("simulate_particles", out, params=params, inputs=inputs, seed=params.seed, device=str(device)) as job:
        vol, apix = load_structure(map_path, pixel_size=pixel_size, box=box, map_pixel_size=map_pixel_size,
                                   seed=params.seed)
        n = vol.shape[-1]
        write_mrc(out / "truth_map.mrc", vol.numpy(), apix)
        job.add_output("truth_map", out / "truth_map.mrc")
        sim = simulate_particles(vol, pixel_size=apix, params=params, device=device, progress=progress)
        stack = out / "particles.mrcs"
        first = None
        with job.timed("simulate"), StackWriter(stack, n=params.n_particles, box=n, voxel_size=apix) as w:
            for start, images in sim.batches:
                w.write(start, images)
                first = images[:16] if first is None else first
        job.add_output("stack", stack)
        rel = os.path.relpath(stack)
        particles = sim.particles.copy()
        particles.insert(0, "rlnImageName", [format_image_name(i, rel) for i in range(len(particles))])
        write_particles(out / "particles.star", sim.optics, particles)
        job.add_output("particles", out / "particles.star")
        plot_gallery(first, out / "gallery.png", title="first simulated particles")
        plot_central_slices(vol.numpy(), out / "truth_slices.png", title="ground-truth map")
        job.results.update(n_particles=params.n_particles, box=n, pixel_size_A=apix, noise_sigma=sim.noise_sigma)
        write_report(out / "report.html", title="Simulated particles", summary=job.results,
                     params=job.params, images=["gallery.png", "truth_slices.png"])
        job.log.info("wrote %d particles of %d px at %.3f Å/px", params.n_particles, n, apix)
    return job
