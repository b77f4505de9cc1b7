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

import torch

from cryolens.io import write_particles
from cryolens.jobs.particles import open_particles, write_half_maps
from cryolens.jobs.report import warm_matplotlib, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.reconstruct import ReconstructParams, reconstruct_half_maps

__all__ = ["run_reconstruct"]


def run_reconstruct(star: str | os.PathLike, out_dir: str | os.PathLike, params: ReconstructParams, *,
                    seed: int = 0, device: torch.device | str = "cpu",
                    progress: Callable[[int, int], None] | None = None,
                    observer: JobObserver | None = None) -> Job:
    """Reconstruct from ``star`` into ``out_dir``; returns the finished :class:`Job`."""
    out = Path(out_dir)
    check_params("reconstruct", params)
    parts = open_particles(star, pose=True)
    pixel_size, box = parts.pixel_size, parts.box
    with Job("reconstruct", out, params=params, inputs={"particles": star}, seed=seed, device=str(device),
             observer=observer) as job:
        parts = parts.with_half_sets(seed=seed)
        write_particles(out / "particles.star", parts.optics, parts.particles)
        job.add_output("particles", out / "particles.star")
        warm: list = []

        def inserted(done: int, total: int) -> None:
            # The insertion (both cores busy) is over; the final reconstructions are a few large torch
            # operations that leave the GIL free: import matplotlib for the plots meanwhile.
            if done >= total and not warm:
                warm.append(warm_matplotlib())
            if progress is not None:
                progress(done, total)

        with job.timed("reconstruct"):
            res = reconstruct_half_maps(parts.batches(params.batch_size), parts.table(), box=box,
                                        pixel_size=pixel_size, params=params, device=device, progress=inserted)
        write_half_maps(out, job, res.half1, res.half2, res.full, res.fsc, pixel_size=pixel_size)
        job.results.update(resolution_0143_A=round(res.fsc.resolution_at(0.143), 3),
                           resolution_05_A=round(res.fsc.resolution_at(0.5), 3),
                           n_particles_half1=res.n_particles[0], n_particles_half2=res.n_particles[1],
                           box=box, pixel_size_A=pixel_size, symmetry=params.symmetry)
        write_report(out / "report.html", title="Reconstruction", summary=job.results, params=job.params,
                     images=["fsc.png", "map_slices.png"])
        job.log.info("half-map FSC 0.143 resolution: %.2f Å", res.fsc.resolution_at(0.143))
    return job
