"""``cryolens simulate particles``: a particle stack with ground truth from maps, models or the phantom.

Outputs in the job folder: ``particles.mrcs`` (the stack), ``particles.star`` (RELION
3.1; the poses, origins, CTF, ``rlnClassNumber`` (1-based structure index) and, for a
morph, ``rlnCryolensMorph`` in it are the ground truth), the truth maps at the stack's
pixel size, ``gallery.png``, ``report.html``, ``job.json``. Truth maps:

* one structure: ``truth_map.mrc``;
* several structures: ``truth_map_classN.mrc`` per class (N from 1) and
  ``truth_map.mrc`` = class 1;
* a morph: ``truth_map_morph0.mrc`` and ``truth_map_morph1.mrc`` (the end states) and
  ``truth_map.mrc`` = the mean state ``t = 0.5``, what a consensus reconstruction of
  uniformly drawn ``t`` approaches.

Image names in the STAR are relative to the current folder (RELION's rule), e.g.
``000001@Simulate/job001/particles.mrcs`` when run from a project folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cryolens.errors import InputError
from cryolens.io import format_image_name, write_mrc, write_particles
from cryolens.io.stack_writer import StackWriter
from cryolens.jobs.folders import recorded_name
from cryolens.jobs.report import plot_central_slices, plot_gallery, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.structures import load_morph, load_structure, load_structures, structure_inputs
from cryolens.simulate.particles import ParticleSimParams, simulate_particles
from cryolens.simulate.structures import morph_volume

__all__ = ["load_structure", "run_simulate_particles"]


def run_simulate_particles(out_dir: str | os.PathLike, params: ParticleSimParams, *, map_path: str | None = None,
                           structures: Sequence[str] | None = None, morph: tuple[str, str] | None = None,
                           pixel_size: float | None = None, box: int | None = None,
                           map_pixel_size: float | None = None, device: torch.device | str = "cpu",
                           progress: Callable[[int, int], None] | None = None,
                           observer: JobObserver | None = None) -> Job:
    """Simulate a particle stack into ``out_dir``; returns the finished :class:`Job`.

    Args:
        map_path: one MRC map (kept for callers; same as ``structures=[map_path]``).
        structures: structure specs (:mod:`cryolens.jobs.structures`); default the phantom.
        morph: two specs, the end states of a continuous morph (excludes ``structures``).
        pixel_size, box: the stack's pixel size (Å) and box (px); default the first structure's.
        map_pixel_size: voxel size for maps whose header has none.
    """
    out = Path(out_dir)
    check_params("simulate particles", params)
    specs = ([map_path] if map_path else []) + list(structures or [])
    if morph is not None and specs:
        raise InputError("simulate particles: give either structures (--structure/--map) or --morph A B, not both.")
    inputs = structure_inputs(morph) if morph is not None else structure_inputs(specs)
    with Job("simulate_particles", out, params=params, inputs=inputs, seed=params.seed, device=str(device),
             observer=observer) as job:
        if morph is not None:
            items = list(load_morph(morph[0], morph[1], pixel_size=pixel_size, box=box,
                                    map_pixel_size=map_pixel_size))
            truths = {"truth_map_morph0.mrc": items[0].volume, "truth_map_morph1.mrc": items[1].volume,
                      "truth_map.mrc": morph_volume(items[0].volume, items[1].volume, 0.5)}
        else:
            items = load_structures(specs, pixel_size=pixel_size, box=box, map_pixel_size=map_pixel_size)
            truths = {"truth_map.mrc": items[0].volume}
            if len(items) > 1:
                truths.update({f"truth_map_class{i + 1}.mrc": s.volume for i, s in enumerate(items)})
        apix, n = items[0].pixel_size, items[0].box
        for name, vol in truths.items():
            write_mrc(out / name, vol.numpy(), apix)
            job.add_output(name.removesuffix(".mrc"), out / name)
        try:
            sim = simulate_particles(structures=None if morph else items, morph=tuple(items) if morph else None,
                                     params=params, device=device, progress=progress)
        except ValueError as e:
            raise InputError(f"simulate particles: {e}.") from None
        stack = out / "particles.mrcs"
        first = None
        with job.timed("simulate"), StackWriter(stack, n=params.n_particles, box=n, voxel_size=apix) as w:
            for start, images in sim.batches:
                w.write(start, images)
                first = images[:16] if first is None else first
        job.add_output("stack", stack)
        rel = recorded_name(stack)
        particles = sim.particles.copy()
        particles.insert(0, "rlnImageName", [format_image_name(i, rel) for i in range(len(particles))])
        write_particles(out / "particles.star", sim.optics, particles)
        job.add_output("particles", out / "particles.star")
        plot_gallery(first, out / "gallery.png", title="first simulated particles")
        plot_central_slices(truths["truth_map.mrc"].numpy(), out / "truth_slices.png", title="ground-truth map")
        job.results.update(n_particles=params.n_particles, box=n, pixel_size_A=apix, noise_sigma=sim.noise_sigma,
                           structures=[{"name": s.name, "population": s.population, "units": s.units}
                                       for s in items],
                           heterogeneity="morph" if morph else ("discrete" if len(items) > 1 else "none"),
                           **sim.info)
        write_report(out / "report.html", title="Simulated particles", summary=job.results,
                     params=job.params, images=["gallery.png", "truth_slices.png"])
        job.log.info("wrote %d particles of %d px at %.3f Å/px", params.n_particles, n, apix)
    return job
