"""``cryolens class2d``: maximum-likelihood 2D classification of a particle STAR file.

Outputs in the job folder:

* ``classes.mrcs``: the K class averages (white on a background at 0, the particles' pixel size and box),
  in class-number order, then with ``--empty-class`` (the default) class K+1, the empty class: a zero
  image, the model of the images that fit no average better than no signal (empty boxes, edge-cut
  particles);
* ``classes.star``: one row per class, written as a RELION 3.1 image STAR (``data_optics`` of the
  particles + ``data_particles``) so that every RELION tool and ``cryolens`` reader of particle
  files reads it: ``rlnImageName`` and ``rlnReferenceImage`` (both ``NNNNNN@<job>/classes.mrcs``,
  named like the particle stacks), ``rlnOpticsGroup`` (the first group's),
  ``rlnClassDistribution``, ``rlnEstimatedResolution`` (Å, where the class's SSNR drops
  below 1 for two consecutive shells), ``rlnAccuracyRotations`` (°) and ``rlnAccuracyTranslationsAngst`` (the members'
  mean posterior standard deviations), ``rlnClassNumber`` and ``rlnCryolensParticleCount``
  (particles whose best class it is);
* ``particles.star``: the input particles with ``rlnClassNumber``, ``rlnAnglePsi``,
  ``rlnOriginXAngst/YAngst``, ``rlnMaxValueProbDistribution``, ``rlnLogLikeliContribution``
  and ``rlnNrOfSignificantSamples`` of the last iteration;
* ``iterations.star`` (per iteration: resolution limit, sampling, particles, mean
  log-likelihood, fraction changing class, psi and shift changes, class sizes, seconds),
  ``classes.png`` (gallery sorted by population, labelled with size and resolution),
  ``convergence.png``, ``report.html``, ``job.json`` (its results include ``unexplained_fraction``: the share
  of the particles in the empty class, or without it those fitting no average better than an empty image,
  and ``warnings``: above :data:`cryolens.class2d.engine.UNEXPLAINED_WARNING` the job warns that the CTF
  parameters are most likely wrong (or the picks mostly empty), and its verdict asks for a check);
* after each iteration but the last, ``run_itNNN_classes.mrcs``, ``run_itNNN_data.star`` (the
  particles' classes so far) and ``run_itNNN_state/``, what ``--continue`` resumes from
  (:mod:`cryolens.jobs.checkpoint`; the last two iterations are kept).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.class2d import Class2DParams, Class2DResult, Class2DState, classify_2d
from cryolens.class2d.engine import UNEXPLAINED_WARNING, unexplained_fraction, written_classes
from cryolens.errors import InputError
from cryolens.jobs.checkpoint import (clear_iterations, iteration_path, load_iteration, remove_unfinished,
                                      save_iteration)
from cryolens.jobs.distribute import log_distribution, particle_distributor
from cryolens.io import format_image_name, write_mrc, write_particles, write_star
from cryolens.jobs.particles import open_particles
from cryolens.jobs.report import new_figure, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params

__all__ = ["run_class2d", "classes_table", "iterations_table", "classified_particles", "plot_class_gallery",
           "plot_convergence"]


def classes_table(res: Class2DResult, stack_name: str, pixel_size: float, optics_group: int = 1) -> pd.DataFrame:
    """One row per class (RELION labels) for the classes of ``res`` stored in ``stack_name`` (999: unknown)."""
    k = len(res.classes)
    counts = np.bincount(res.particle_class[res.particle_class >= 0], minlength=k)
    finite = lambda a, fill: np.where(np.isfinite(a), a, fill)  # noqa: E731
    names = [format_image_name(i, stack_name) for i in range(k)]
    return pd.DataFrame({
        "rlnImageName": names,
        "rlnReferenceImage": names,
        "rlnClassDistribution": np.round(res.distribution.astype(float), 6),
        "rlnAccuracyRotations": np.round(finite(res.accuracy_psi, 999.0), 3),
        "rlnAccuracyTranslationsAngst": np.round(finite(res.accuracy_shift * pixel_size, 999.0), 3),
        "rlnEstimatedResolution": np.round(finite(res.resolution, 999.0), 3),
        "rlnClassNumber": np.arange(1, k + 1),
        "rlnCryolensParticleCount": counts,
        "rlnOpticsGroup": optics_group,
    })


def classified_particles(particles: pd.DataFrame, res: Class2DResult, pixel_size: float) -> pd.DataFrame:
    """The input particles with the classification's columns (class 1-based, psi in °, origins in Å)."""
    out = particles.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in particles.columns]).copy()
    out["rlnClassNumber"] = res.particle_class + 1
    out["rlnAnglePsi"] = np.round(((res.psi + 180.0) % 360.0) - 180.0, 4)
    out["rlnOriginXAngst"] = np.round(res.shifts[:, 0] * pixel_size, 4)
    out["rlnOriginYAngst"] = np.round(res.shifts[:, 1] * pixel_size, 4)
    out["rlnMaxValueProbDistribution"] = np.round(res.max_probability, 6)
    out["rlnLogLikeliContribution"] = np.round(res.log_likelihood, 4)
    out["rlnNrOfSignificantSamples"] = res.n_significant.astype(int)
    return out


def iterations_table(res: Class2DResult) -> pd.DataFrame:
    """Per-iteration log as a STAR table (cryolens columns, RELION-style names; class sizes comma-separated;
    -1 for a change not defined in the first iteration)."""
    return pd.DataFrame([{
        "rlnCryolensIteration": h.iteration, "rlnCryolensResolutionLimit": round(h.resolution_limit, 3),
        "rlnCryolensPsiStep": round(h.psi_step, 3), "rlnCryolensShiftStepAngst": round(h.shift_step, 3),
        "rlnCryolensShifts": h.n_shifts, "rlnCryolensParticles": h.n_particles,
        "rlnCryolensLogLikelihood": round(h.log_likelihood, 4),
        "rlnCryolensClassChange": round(h.class_change, 4) if np.isfinite(h.class_change) else -1.0,
        "rlnCryolensPsiChange": round(h.psi_change, 3) if np.isfinite(h.psi_change) else -1.0,
        "rlnCryolensShiftChangeAngst": round(h.shift_change, 3) if np.isfinite(h.shift_change) else -1.0,
        "rlnCryolensClassSizes": ",".join(map(str, h.class_sizes)), "rlnCryolensReseeded": h.reseeded,
        "rlnCryolensSeconds": round(h.seconds, 2)} for h in res.history])


def plot_class_gallery(res: Class2DResult, path: str | os.PathLike, *, ncols: int = 10) -> Path:
    """Class averages sorted by population, each labelled with its number, particle count and resolution."""
    k = len(res.classes)
    counts = np.bincount(res.particle_class[res.particle_class >= 0], minlength=k)
    order = np.argsort(-counts, kind="stable")
    ncols = min(ncols, k)
    nrows = int(np.ceil(k / ncols))
    fig, axes = new_figure(nrows=nrows, ncols=ncols, figsize=(1.5 * ncols, 1.75 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, c in zip(axes.ravel(), order):
        ax.imshow(res.classes[c], cmap="gray", origin="lower")
        r = res.resolution[c]
        label = f"#{c + 1} · {counts[c]}" + (f"\n{r:.1f} Å" if np.isfinite(r) else
                                              "\nempty" if not res.classes[c].any() else "")
        ax.set_title(label, fontsize=7)
    fig.suptitle(f"{k} classes by population (class · particles, estimated resolution)", fontsize=9,
                 y=1.0 + 0.12 / nrows)
    return save_figure(fig, path)


def plot_convergence(res: Class2DResult, path: str | os.PathLike) -> Path:
    """Log-likelihood, changes and class sizes per iteration."""
    h = res.history
    it = [s.iteration for s in h]
    fig, axes = new_figure(ncols=3, figsize=(13, 3.4), gridspec_kw={"wspace": 0.45})
    axes[0].plot(it, [s.log_likelihood for s in h], "o-")
    axes[0].set_ylabel("mean log-likelihood per particle")
    ax2 = axes[0].twinx()
    ax2.plot(it, [s.resolution_limit for s in h], "s--", color="grey")
    ax2.set_ylabel("resolution limit (Å)", color="grey")
    axes[1].plot(it, [100 * s.class_change for s in h], "o-", label="class change (%)")
    axes[1].plot(it, [s.psi_change for s in h], "s-", label="psi change (°)")
    axes[1].plot(it, [s.shift_change for s in h], "^-", label="shift change (Å)")
    axes[1].legend(fontsize=8)
    sizes = np.array([sorted(s.class_sizes, reverse=True) for s in h], dtype=float)
    axes[2].stackplot(it, sizes.T)
    axes[2].set_ylabel("particles per class (sorted)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle("2D classification: convergence")
    return save_figure(fig, path)


def _saved_state(out: Path, n_particles: int, box: int, star: str | os.PathLike, device) -> Class2DState:
    """The last finished iteration's state in ``out``, checked against the particles (InputError otherwise)."""
    saved = load_iteration(out)
    if saved is None:
        raise InputError(f"{out}: the job stopped before its first iteration finished, so no state was saved to "
                         "continue from; run the class2d job again without --continue.")
    try:
        state = Class2DState.from_saved(saved.tensors, saved.values, device=device)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{saved.path}: not a class2d state ({e}); delete that folder to continue from the "
                         "iteration before it.") from None
    if len(state.particle_class) != n_particles or state.classes.shape[-1] != box:
        raise InputError(f"{star}: its {n_particles} particles (box {box}) are not those of the saved state "
                         f"({len(state.particle_class)} particles, box {state.classes.shape[-1]}); continue with the "
                         "particles the job started with.")
    return state


def _partial_result(state: Class2DState) -> Class2DResult:
    """A state as a result (for the per-iteration files)."""
    return Class2DResult(classes=state.classes.cpu().numpy(), distribution=state.class_weights.cpu().numpy(),
                         resolution=state.class_resolution, accuracy_psi=np.array([]), accuracy_shift=np.array([]),
                         particle_class=state.particle_class, psi=state.particle_psi, shifts=state.particle_shift,
                         max_probability=state.particle_max_prob, log_likelihood=state.particle_loglik,
                         n_significant=state.particle_n_significant, history=state.history, state=state)


def run_class2d(star: str | os.PathLike, out_dir: str | os.PathLike, params: Class2DParams, *,
                device: torch.device | str = "cpu", progress: Callable[[int, int, int, float], None] | None = None,
                observer: JobObserver | None = None, resume: bool = False, backend: str | None = None,
                project_dir: str | os.PathLike | None = None) -> Job:
    """Classify the particles of ``star`` into ``out_dir``; returns the finished :class:`Job`.

    With ``resume``, ``out_dir`` holds an interrupted class2d job: it continues from its last finished
    iteration (the caller passes the job's own input and params, see ``cryolens class2d --continue``).
    ``backend``: a compute backend spec for the E-steps, in chunks of particles whose images the workers read
    (see :func:`cryolens.jobs.refine.run_refine`; profiles also from ``project_dir``); None computes here.
    """
    out = Path(out_dir)
    check_params("class2d", params)
    parts = open_particles(star, pose=False, min_particles=1, purpose="2D classification")
    pixel_size, box = parts.pixel_size, parts.box
    if params.classes > len(parts):
        raise InputError(f"{star}: only {len(parts)} particles for --classes {params.classes}; ask for at most "
                         f"{len(parts)} classes.")
    if params.particle_diameter is not None and params.particle_diameter > box * pixel_size:
        raise InputError(f"--particle-diameter {params.particle_diameter:g} Å is larger than the box "
                         f"({box} px × {pixel_size:g} Å = {box * pixel_size:g} Å); give a smaller diameter.")
    state = _saved_state(out, len(parts), box, star, device) if resume else None
    if state is not None:  # checked before the job starts: a refused continue leaves the folder as it was
        remove_unfinished(out)
    with Job("class2d", out, params=params, inputs={"particles": star}, seed=params.seed, device=str(device),
             observer=observer) as job:
        if state is None:  # a fresh start: iterations an earlier run left here must not mix with this run's
            clear_iterations(out)

        def save(st: Class2DState) -> None:
            """The iteration's classes and particles, then its state (committed last: it marks the iteration)."""
            write_mrc(iteration_path(out, st.iteration, "classes.mrcs"), written_classes(st, params, box, pixel_size),
                      pixel_size, is_stack=True)
            write_particles(iteration_path(out, st.iteration, "data.star"), parts.optics,
                            classified_particles(parts.particles, _partial_result(st), pixel_size))
            save_iteration(out, st.iteration, tensors=st.to_tensors(), values=st.to_values())
            job.log.info("iteration %d saved (%s)", st.iteration, iteration_path(out, st.iteration, "state").name)

        if state is not None:
            job.log.info("continuing from iteration %d", state.iteration)
        def logged(it: int, done: int, total: int, resolution: float) -> None:
            if done == total:
                job.log.info("iteration %d: %d particles aligned at %.1f Å", it, total, resolution)
            if progress is not None:
                progress(it, done, total, resolution)

        with job.timed("class2d"), particle_distributor(backend, parts.source, star, project_dir=project_dir) as dist:
            if dist is not None:
                job.log.info("expectation steps through backend %s (%d workers)", dist.backend.name, dist.n_workers)
            res = classify_2d(lambda: parts.batches(params.batch_size), parts.table(), pixel_size=pixel_size,
                              box=box, params=params, device=device, progress=logged, on_iteration=save,
                              resume=state, distributor=dist)
        log_distribution(job, dist)
        for h in res.history:
            job.log.info("iteration %d: limit %.1f Å, psi step %.1f°, %d shifts, %d particles, log L %.1f, "
                         "%.1f%% changed class, %.1f s", h.iteration, h.resolution_limit, h.psi_step, h.n_shifts,
                         h.n_particles, h.log_likelihood, 100 * h.class_change, h.seconds)
        if not np.isfinite(res.classes).all():
            raise RuntimeError("class averages hold NaN or infinite values")
        write_mrc(out / "classes.mrcs", res.classes.astype(np.float32), pixel_size, is_stack=True)
        job.add_output("classes_stack", out / "classes.mrcs")
        optics = parts.optics.iloc[:1]
        write_particles(out / "classes.star", optics, classes_table(res, os.path.relpath(out / "classes.mrcs"),
                                                                    pixel_size, int(optics["rlnOpticsGroup"].iloc[0])))
        job.add_output("classes", out / "classes.star")
        write_particles(out / "particles.star", parts.optics, classified_particles(parts.particles, res, pixel_size))
        job.add_output("particles", out / "particles.star")
        write_star(out / "iterations.star", {"iterations": iterations_table(res)})
        job.add_output("iterations", out / "iterations.star")
        plot_class_gallery(res, out / "classes.png")
        plot_convergence(res, out / "convergence.png")
        k = params.classes  # the empty class, if any, is class k + 1
        all_counts = np.bincount(res.particle_class, minlength=params.model_classes())
        counts, resolution = all_counts[:k], res.resolution[:k]
        populated = counts > 0
        unexplained = unexplained_fraction(res.state, params)
        warnings = [] if unexplained <= UNEXPLAINED_WARNING else [
            f"{star}: {100 * unexplained:.0f} % of the particles fit no class average better than an empty image, "
            "which most likely means wrong CTF parameters (defocus, voltage, Cs, pixel size) or mostly empty picks; "
            "check them before selecting classes"]
        for w in warnings:
            job.log.warning(w)
        job.results.update(n_particles=len(parts), classes=k, populated_classes=int(populated.sum()),
                           empty_class_particles=int(all_counts[k:].sum()) if params.empty_class else None,
                           iterations=len(res.history), box=box, pixel_size_A=pixel_size,
                           final_resolution_limit_A=round(res.history[-1].resolution_limit, 2),
                           best_class_resolution_A=round(float(np.min(resolution)), 2),
                           median_class_resolution_A=round(float(np.median(resolution[populated])), 2),
                           largest_class=int(np.argmax(counts)) + 1, largest_class_particles=int(counts.max()),
                           median_max_probability=round(float(np.median(res.max_probability)), 4),
                           final_class_change=round(float(np.nan_to_num(res.history[-1].class_change, nan=-1.0)), 4),
                           unexplained_fraction=round(unexplained, 4), warnings=warnings)
        write_report(out / "report.html", title="2D classification", summary=job.results, params=job.params,
                     images=["classes.png", "convergence.png"])
        job.log.info("%d classes (%d populated) from %d particles%s", k, int(populated.sum()), len(parts),
                     f"; {all_counts[k:].sum()} in the empty class" if params.empty_class else "")
    return job
