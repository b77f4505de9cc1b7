"""``cryolens abinitio``: initial maps from particles without poses.

Outputs in the job folder: ``map.mrc`` (the largest class; at the particles' pixel size and box,
centred, ready for ``cryolens refine --ref``), ``class001.mrc``… (K > 1), ``particles.star`` (the
input with ``rlnClassNumber``, ``rlnAngleRot/Tilt/Psi``, ``rlnOriginXAngst/YAngst`` and
``rlnMaxValueProbDistribution``), ``fsc.star`` and ``fsc.png`` (half-map FSC of the final pass,
largest class), ``iterations.star``, ``convergence.png`` (log-likelihood per start, resolution
limit, class sizes per iteration), ``slices.png`` and ``projections.png`` (orthogonal central
slices and projections of the map at stages of the run), ``report.html``, ``job.json``.

After each step but the last (a mini-batch iteration, or a final pass but the last):
``run_itNNN_class001.mrc``… (the running start's maps at the particles' pixel size and box) and
``run_itNNN_state/`` (what ``--continue`` needs, :mod:`cryolens.jobs.checkpoint`); the last
:data:`~cryolens.jobs.checkpoint.KEEP_ITERATIONS` steps are kept. ``run_abinitio(..., resume=True)``
continues a killed job in its folder from its last finished step and ends with the same outputs as
the uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.abinitio import AbinitioParams, AbinitioResult, AbinitioState, abinitio
from cryolens.core.fourier import fourier_resize
from cryolens.core.rotations import matrix_to_euler
from cryolens.errors import InputError
from cryolens.io import write_mrc, write_particles, write_star
from cryolens.jobs.checkpoint import (clear_iterations, iteration_path, load_iteration, remove_unfinished,
                                      save_iteration)
from cryolens.jobs.distribute import log_distribution, particle_distributor
from cryolens.jobs.particles import fsc_table, open_particles
from cryolens.jobs.report import new_figure, plot_fsc, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params

__all__ = ["run_abinitio", "plot_convergence", "plot_orthogonal", "iterations_table"]


def iterations_table(res: AbinitioResult) -> pd.DataFrame:
    """Per-iteration log (cryolens columns, RELION-style names); the log-likelihood is the best start's."""
    return pd.DataFrame([{
        "rlnCryolensIteration": h.iteration, "rlnCryolensResolution": round(h.resolution, 3),
        "rlnCryolensLogLikelihood": round(max(h.log_likelihood), 4), "rlnCryolensStarts": len(h.log_likelihood),
        "rlnCryolensLargestClassFraction": round(max(h.class_fractions), 4), "rlnCryolensSeconds": round(h.seconds, 2)}
        for h in res.history])


def plot_convergence(res: AbinitioResult, path: str | os.PathLike) -> Path:
    """Mean log-likelihood per particle of each start, the resolution limit and class fractions per iteration."""
    fig, axes = new_figure(ncols=3, figsize=(12, 3.6))
    its = [h.iteration for h in res.history]
    for s in sorted({s for h in res.history for s in h.starts}):
        pts = [(h.iteration, ll) for h in res.history for n, ll in zip(h.starts, h.log_likelihood) if n == s]
        axes[0].plot(*zip(*pts), lw=1.4, label=f"start {s + 1}" + (" (kept)" if s == res.best_start else ""))
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("log-likelihood per particle (+ const)")
    axes[0].legend(fontsize=8)
    axes[1].plot(its, [h.resolution for h in res.history], lw=1.6)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("alignment limit (Å)")
    fr = np.array([h.class_fractions for h in res.history])
    for k in range(fr.shape[1]):
        axes[2].plot(its, fr[:, k], lw=1.4, label=f"class {k + 1}")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("class fraction")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_orthogonal(snapshots: list[tuple[str, np.ndarray]], path: str | os.PathLike, *, projections: bool) -> Path:
    """One row per stage: central slices (or projections) along z, y and x."""
    fig, axes = new_figure(nrows=len(snapshots), ncols=3, figsize=(7.5, 2.5 * len(snapshots)), squeeze=False)
    for row, (label, vol) in zip(axes, snapshots):
        c = vol.shape[0] // 2
        views = (vol.sum(0), vol.sum(1), vol.sum(2)) if projections else (vol[c], vol[:, c], vol[:, :, c])
        for ax, img, name in zip(row, views, ("z", "y", "x")):
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_title(f"{label}: {'projection' if projections else 'slice'} {name}", fontsize=8)
            ax.axis("off")
    return save_figure(fig, path)


def _table(particles: pd.DataFrame, res: AbinitioResult, pixel_size: float) -> pd.DataFrame:
    out = particles.copy()
    rot, tilt, psi = (t.numpy() for t in matrix_to_euler(torch.as_tensor(res.rotations)))
    out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = rot, tilt, psi
    out["rlnOriginXAngst"] = res.shifts[:, 0] * pixel_size
    out["rlnOriginYAngst"] = res.shifts[:, 1] * pixel_size
    out["rlnClassNumber"] = res.classes.astype(int)
    out["rlnMaxValueProbDistribution"] = res.probability
    return out.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in out.columns])


def _saved_state(out: Path, n_particles: int) -> AbinitioState:
    """The last finished step's state in ``out`` (InputError when there is none or it is not ab initio's)."""
    saved = load_iteration(out)
    if saved is None:
        raise InputError(f"{out}: the job stopped before its first iteration finished, so no state was saved to "
                         "continue from; run the abinitio job again without --continue.")
    try:
        state = AbinitioState.from_saved(saved.iteration, saved.tensors, saved.values)
    except (KeyError, TypeError) as e:
        raise InputError(f"{saved.path}: not an ab-initio state ({e}); delete that folder to continue from the "
                         "iteration before it.") from None
    rows = saved.values.get("n_particles")
    if rows != n_particles:
        raise InputError(f"{out}: the saved state is of {rows} particles, the particles given are {n_particles}; "
                         "continue with the particles the job started with.")
    return state


def run_abinitio(star: str | os.PathLike, out_dir: str | os.PathLike, params: AbinitioParams, *,
                 device: torch.device | str = "cpu", progress: Callable[[str, int, int, float], None] | None = None,
                 observer: JobObserver | None = None, resume: bool = False, backend: str | None = None,
                 project_dir: str | os.PathLike | None = None) -> Job:
    """Ab-initio maps from ``star`` into ``out_dir``; returns the finished :class:`Job`.

    With ``resume``, ``out_dir`` holds an interrupted abinitio job: it continues from its last finished
    step (the caller passes the job's own input and params, see ``cryolens abinitio --continue``).
    ``backend``: a compute backend spec (:func:`cryolens.compute.backends.get_backend`; profiles also from
    ``project_dir``) for the pose searches, in chunks of particles whose image transforms are sent from here;
    None computes in this process. A backend that fails ends the job FAILURE with one sentence.
    """
    out = Path(out_dir)
    check_params("abinitio", params)
    parts = open_particles(star, pose=False, min_particles=params.classes, purpose=f"{params.classes} classes",
                           why="one particle per class at least")
    pixel_size, box = parts.pixel_size, parts.box
    ini, final = params.ini_limit(pixel_size, box), params.final_limit(pixel_size)
    if final > ini:
        raise InputError(f"{star}: --final-resolution {final:g} Å must not exceed --ini-resolution {ini:g} Å; give "
                         "limits that fall from the first iteration to the last.")
    if final < 2 * pixel_size:
        raise InputError(f"{star}: --final-resolution {final:g} Å is finer than the particles' "
                         f"Nyquist limit ({2 * pixel_size:g} Å at {pixel_size:g} Å/px); ask for at least that.")
    if ini > box * pixel_size / 2:
        raise InputError(f"{star}: the box ({box} px × {pixel_size:g} Å) is too small to align at "
                         f"--ini-resolution {ini:g} Å; give at most {box * pixel_size / 2:g} Å.")
    state = _saved_state(out, len(parts)) if resume else None
    if state is not None:  # checked before the job starts: a refused continue leaves the folder as it was
        remove_unfinished(out)
    with Job("abinitio", out, params=params, inputs={"particles": star}, seed=params.seed, device=str(device),
             observer=observer) as job:
        if state is None:  # a fresh start: steps an earlier run left here must not mix with this run's
            clear_iterations(out)

        def save(st: AbinitioState) -> None:
            """The step's maps, then its state (committed last: its presence marks the step as finished)."""
            for k, m in enumerate(st.maps[0]):
                write_mrc(iteration_path(out, st.iteration, f"class{k + 1:03d}.mrc"),
                          fourier_resize(m, box, ndim=3).numpy(), pixel_size)
            save_iteration(out, st.iteration, tensors=st.to_tensors(),
                           values={**st.to_values(), "n_particles": len(parts)})

        def logged(stage: str, done: int, total: int, resolution: float) -> None:
            if done == total or stage == "iterations" and done % 10 == 0:
                job.log.info("%s: %d/%d (alignment limit %.1f Å)", stage, done, total, resolution)
            if progress is not None:
                progress(stage, done, total, resolution)

        with job.timed("abinitio"), particle_distributor(backend, parts.source, star, project_dir=project_dir) as dist:
            if state is not None:
                job.log.info("continuing from step %d", state.iteration)
            if dist is not None:
                job.log.info("pose searches through backend %s (%d workers)", dist.backend.name, dist.n_workers)
            res = abinitio(lambda: parts.batches(512), parts.table(), pixel_size=pixel_size, params=params,
                           device=device, progress=logged, on_iteration=save, resume=state, distributor=dist)
        log_distribution(job, dist)
        maps = res.maps.numpy()
        best = res.best_class
        write_mrc(out / "map.mrc", maps[best], pixel_size)
        job.add_output("map", out / "map.mrc")
        if params.classes > 1:
            for k in range(params.classes):
                write_mrc(out / f"class{k + 1:03d}.mrc", maps[k], pixel_size)
                job.add_output(f"class{k + 1:03d}", out / f"class{k + 1:03d}.mrc")
        write_particles(out / "particles.star", parts.optics, _table(parts.particles, res, pixel_size))
        job.add_output("particles", out / "particles.star")
        curve = res.fscs[best]
        write_star(out / "fsc.star", {"fsc": fsc_table(curve)})
        job.add_output("fsc", out / "fsc.star")
        write_star(out / "iterations.star", {"iterations": iterations_table(res)})
        job.add_output("iterations", out / "iterations.star")
        plot_fsc({"half maps (final pass)": curve}, out / "fsc.png")
        plot_convergence(res, out / "convergence.png")
        plot_orthogonal(res.snapshots, out / "slices.png", projections=False)
        plot_orthogonal(res.snapshots, out / "projections.png", projections=True)
        sizes = res.class_sizes
        job.results.update(resolution_0143_A=round(curve.resolution_at(0.143), 3), best_class=best + 1,
                           class_sizes=[int(s) for s in sizes], iterations=len(res.history), box=box,
                           pixel_size_A=pixel_size, symmetry=params.symmetry, kept_start=res.best_start + 1,
                           ini_resolution_A=ini, final_resolution_A=final,
                           n_particles=len(parts))
        write_report(out / "report.html", title="Ab-initio 3D", summary=job.results, params=job.params,
                     images=["convergence.png", "slices.png", "projections.png", "fsc.png"])
        job.log.info("ab initio: class %d of %d (%d particles), half-map FSC 0.143 at %.1f Å", best + 1,
                     params.classes, int(sizes[best]), curve.resolution_at(0.143))
    return job
