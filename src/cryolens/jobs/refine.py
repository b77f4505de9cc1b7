"""``cryolens refine``: gold-standard 3D auto-refinement from a starting reference.

Outputs in the job folder: ``half1.mrc``, ``half2.mrc`` (unfiltered half maps), ``map.mrc``
(both halves, FSC-weighted per shell by ``sqrt(2·FSC/(1+FSC))``; no sharpening),
``particles.star`` (refined ``rlnAngleRot/Tilt/Psi``, ``rlnOriginXAngst/YAngst``,
``rlnRandomSubset``, ``rlnLogLikeliContribution``, ``rlnMaxValueProbDistribution``),
``fsc.star``, ``iterations.star`` (per-iteration resolution, sampling and pose changes),
``angdist.png``, ``fsc.png``, ``map_slices.png``, ``report.html``, ``job.json``.

After each iteration but the final one: ``run_itNNN_half1.mrc``, ``run_itNNN_half2.mrc``
(unfiltered half maps), ``run_itNNN_data.star`` (the poses so far) and ``run_itNNN_state/``
(what ``--continue`` needs, :mod:`cryolens.jobs.checkpoint`); the last
:data:`~cryolens.jobs.checkpoint.KEEP_ITERATIONS` iterations are kept. ``run_refine(...,
resume=True)`` continues a killed job in its folder from its last finished iteration and ends
with the same outputs as the uninterrupted run.

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

from cryolens.core.rotations import matrix_to_euler
from cryolens.errors import InputError
from cryolens.io import write_mrc, write_particles, write_star
from cryolens.jobs.checkpoint import (clear_iterations, iteration_path, load_iteration, remove_unfinished,
                                      save_iteration)
from cryolens.jobs.distribute import log_distribution, particle_distributor
from cryolens.jobs.particles import open_particles, read_mask, read_reference, write_half_maps
from cryolens.jobs.report import new_figure, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.refine import RefineParams, RefineResult, RefineState, auto_refine

__all__ = ["run_refine", "iterations_table", "plot_angular_distribution"]


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


def _refined_table(particles: pd.DataFrame, res: RefineResult | RefineState, pixel_size: float) -> pd.DataFrame:
    out = particles.copy()
    rot, tilt, psi = (t.numpy() for t in matrix_to_euler(torch.as_tensor(res.rotations)))
    out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = rot, tilt, psi
    shifts = np.asarray(res.shifts)
    out["rlnOriginXAngst"] = shifts[:, 0] * pixel_size
    out["rlnOriginYAngst"] = shifts[:, 1] * pixel_size
    out["rlnLogLikeliContribution"] = np.asarray(res.log_likelihood)
    out["rlnMaxValueProbDistribution"] = np.asarray(res.max_probability)
    return out.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in out.columns])


def _saved_state(out: Path) -> RefineState:
    """The last finished iteration's state in ``out`` (InputError when there is none or it is not refine's)."""
    saved = load_iteration(out)
    if saved is None:
        raise InputError(f"{out}: the job stopped before its first iteration finished, so no state was saved to "
                         "continue from; run the refine job again without --continue.")
    try:
        return RefineState.from_saved(saved.iteration, saved.tensors, saved.values)
    except (KeyError, TypeError) as e:
        raise InputError(f"{saved.path}: not a refine state ({e}); delete that folder to continue from the "
                         "iteration before it.") from None


def _check_state(state: RefineState, particles: pd.DataFrame, box: int, star: str | os.PathLike) -> None:
    """The saved state must belong to these particles (count, half sets) and this box."""
    subset = particles["rlnRandomSubset"].to_numpy().astype(np.int64)
    if (state.rotations.shape[0] != len(particles) or state.references.shape[-1] != box
            or not np.array_equal(state.subset.numpy(), subset)):
        raise InputError(f"{star}: its {len(particles)} particles (box {box}) are not those of the saved state "
                         f"({state.rotations.shape[0]} particles, box {state.references.shape[-1]}) or their half "
                         "sets differ; continue with the particles the job started with.")


def run_refine(star: str | os.PathLike, ref: str | os.PathLike, out_dir: str | os.PathLike, params: RefineParams, *,
               mask: str | os.PathLike | None = None, device: torch.device | str = "cpu",
               progress: Callable[[int, int, int, float], None] | None = None,
               observer: JobObserver | None = None, resume: bool = False, backend: str | None = None,
               project_dir: str | os.PathLike | None = None) -> Job:
    """Refine ``star`` against the reference ``ref`` into ``out_dir``; returns the finished :class:`Job`.

    With ``resume``, ``out_dir`` holds an interrupted refine job: it continues from its last finished
    iteration (the caller passes the job's own inputs and params, see ``cryolens refine --continue``).
    ``backend``: a compute backend spec (:func:`cryolens.compute.backends.get_backend`; ``profile:NAME``
    also from ``project_dir``/profiles.toml) for the expectation step, in chunks of particles whose
    images the workers read; None computes in this process. A backend that fails (unreachable
    scheduler, rejected profile, workers dying) ends the job FAILURE with one sentence; its finished
    iterations stay, and ``--continue`` takes up from the last one.
    """
    out = Path(out_dir)
    check_params("refine", params)
    parts = open_particles(star, pose=False, min_particles=10, purpose="refinement", why="two half sets")
    pixel_size, box = parts.pixel_size, parts.box
    reference = read_reference(ref, box=box, pixel_size=pixel_size)
    mask_vol = None
    if mask is not None:
        mask_vol = read_mask(mask, box=box, pixel_size=pixel_size)
    inputs = {"particles": star, "reference": ref, **({"mask": mask} if mask is not None else {})}
    state = _saved_state(out) if resume else None
    if state is not None:  # checked before the job starts: a refused continue leaves the folder as it was
        _check_state(state, parts.with_half_sets(seed=params.seed).particles, box, star)
        remove_unfinished(out)
    with Job("refine", out, params=params, inputs=inputs, seed=params.seed, device=str(device),
             observer=observer) as job:
        parts = parts.with_half_sets(seed=params.seed)
        particles = parts.particles
        if state is None:  # a fresh start: iterations an earlier run left here must not mix with this run's
            clear_iterations(out)

        def batches():
            return parts.batches(params.batch_size)

        def logged(it: int, done: int, total: int, resolution: float) -> None:
            if done == total:
                job.log.info("iteration %d finished (alignment started at %.2f Å)", it, resolution)
            if progress is not None:
                progress(it, done, total, resolution)

        def save(st: RefineState) -> None:
            """The iteration's visible files, then its state (committed last: its presence marks the iteration)."""
            write_mrc(iteration_path(out, st.iteration, "half1.mrc"), st.half1.numpy(), pixel_size)
            write_mrc(iteration_path(out, st.iteration, "half2.mrc"), st.half2.numpy(), pixel_size)
            write_particles(iteration_path(out, st.iteration, "data.star"), parts.optics,
                            _refined_table(particles, st, pixel_size))
            save_iteration(out, st.iteration, tensors=st.to_tensors(), values=st.to_values())
            job.log.info("iteration %d saved (%s)", st.iteration, iteration_path(out, st.iteration, "state").name)

        if state is not None:
            job.log.info("continuing from iteration %d", state.iteration)
        with job.timed("refine"), particle_distributor(backend, parts.source, star, project_dir=project_dir) as dist:
            if dist is not None:
                job.log.info("expectation steps through backend %s (%d workers)", dist.backend.name, dist.n_workers)
            res = auto_refine(batches, parts.table(), reference, pixel_size=pixel_size, params=params, mask=mask_vol,
                              device=device, progress=logged, on_iteration=save, resume=state, distributor=dist)
        log_distribution(job, dist)
        for h in res.history:
            job.log.info("iteration %d: %.2f Å (band %.1f Å, step %.2f°, %.2f px), pose change median %.2f°, "
                         "rms shift %.2f px, %.1f s", h.iteration, h.resolution, h.band_limit, h.angular_step,
                         h.offset_step, h.median_angle_change, h.rms_shift_change, h.seconds)
        refined = _refined_table(particles, res, pixel_size)
        write_particles(out / "particles.star", parts.optics, refined)
        job.add_output("particles", out / "particles.star")
        write_half_maps(out, job, res.half1, res.half2, res.full, res.fsc, pixel_size=pixel_size)
        write_star(out / "iterations.star", {"iterations": iterations_table(res)})
        job.add_output("iterations", out / "iterations.star")
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
