"""``cryolens class3d``: maximum-likelihood 3D classification of a particle STAR file.

Outputs in the job folder:

* ``class001.mrc`` … ``classKKK.mrc``: the class maps, Wiener-filtered by each class's half-set FSC
  (RELION's regularised ``run_classNNN.mrc``), and ``class001_unfil.mrc`` …: the plain
  ``ΣCTF·X / ΣCTF²`` reconstructions; the particles' pixel size and box;
* ``particles.star``: the input particles with ``rlnClassNumber`` (1-based, most probable class),
  ``rlnMaxValueProbDistribution`` (its posterior), ``rlnLogLikeliContribution``, ``rlnRandomSubset`` and,
  when poses were searched, the pose of the most probable class (``rlnAngleRot/Tilt/Psi``,
  ``rlnOriginXAngst/YAngst``); ``cryolens select particles --class`` takes it;
* ``classes.star`` (``data_model_classes``, RELION's ``model.star`` labels): ``rlnReferenceImage``,
  ``rlnClassNumber``, ``rlnClassDistribution``, ``rlnEstimatedResolution`` (Å, half-set FSC 0.143),
  ``rlnAccuracyRotations`` (°) and ``rlnAccuracyTranslationsAngst`` (widths of the pose posteriors;
  999 with skip-align), ``rlnCryolensParticleCount``;
* ``iterations.star`` (per iteration: band limit, search, class sizes, priors, class change,
  resolutions, pose changes, seconds), ``class_sizes.png`` (class sizes and changes per iteration),
  ``class_slices.png`` (orthogonal central slices of every class side by side), ``fsc.png``,
  ``report.html``, ``job.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.class3d import Class3DParams, Class3DResult, classify_3d
from cryolens.core.rotations import matrix_to_euler
from cryolens.errors import InputError
from cryolens.io import read_mrc_header, write_mrc, write_particles, write_star
from cryolens.jobs.distribute import log_distribution, particle_distributor
from cryolens.jobs.particles import open_particles, read_mask, read_reference
from cryolens.jobs.report import new_figure, plot_fsc, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.particles import POSE_COLUMNS

__all__ = ["run_class3d", "classes_table", "classified_particles", "iterations_table", "plot_class_sizes",
           "plot_class_slices"]


def _finite(a: np.ndarray, fill: float = 999.0) -> np.ndarray:
    return np.where(np.isfinite(a), a, fill)


def classes_table(res: Class3DResult, names: list[str], pixel_size: float) -> pd.DataFrame:
    """One row per class with RELION's ``model_classes`` labels (999 where a value is unknown)."""
    k = len(names)
    return pd.DataFrame({
        "rlnReferenceImage": names,
        "rlnClassNumber": np.arange(1, k + 1),
        "rlnClassDistribution": np.round(res.distribution.astype(float), 6),
        "rlnEstimatedResolution": np.round(_finite(res.resolution), 3),
        "rlnAccuracyRotations": np.round(_finite(res.accuracy_rotations), 3),
        "rlnAccuracyTranslationsAngst": np.round(_finite(res.accuracy_shifts * pixel_size), 3),
        "rlnCryolensParticleCount": res.class_sizes,
    })


def classified_particles(particles: pd.DataFrame, res: Class3DResult, pixel_size: float, *,
                         poses: bool) -> pd.DataFrame:
    """The input particles with the classification's columns (class 1-based; poses when ``poses``)."""
    out = particles.copy()
    out["rlnClassNumber"] = res.particle_class + 1
    out["rlnMaxValueProbDistribution"] = np.round(res.max_probability, 6)
    out["rlnLogLikeliContribution"] = np.round(res.log_likelihood, 4)
    if poses:
        rot, tilt, psi = (t.numpy() for t in matrix_to_euler(torch.as_tensor(res.rotations)))
        out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = rot, tilt, psi
        out["rlnOriginXAngst"] = res.shifts[:, 0] * pixel_size
        out["rlnOriginYAngst"] = res.shifts[:, 1] * pixel_size
        out = out.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in out.columns])
    return out


def iterations_table(res: Class3DResult) -> pd.DataFrame:
    """Per-iteration log as a STAR table (cryolens columns; per-class values comma-separated)."""
    return pd.DataFrame([{
        "rlnCryolensIteration": h.iteration, "rlnCryolensBandLimit": round(h.resolution_limit, 3),
        "rlnCryolensSearch": h.mode, "rlnCryolensClassSizes": ",".join(map(str, h.class_sizes)),
        "rlnCryolensClassDistribution": ",".join(f"{d:.4f}" for d in h.distribution),
        "rlnCryolensClassChange": round(h.class_change, 4),
        "rlnCryolensClassResolutions": ",".join(f"{r:.2f}" if np.isfinite(r) else "999" for r in h.resolutions),
        "rlnCryolensLogLikelihood": round(h.mean_log_likelihood, 4),
        "rlnCryolensMedianAngleChange": round(h.median_angle_change, 4),
        "rlnCryolensRmsShiftChangePx": round(h.rms_shift_change, 4),
        "rlnCryolensSeconds": round(h.seconds, 2)} for h in res.history])


def plot_class_sizes(res: Class3DResult, path: str | os.PathLike) -> Path:
    """Particles per class and the fraction changing class, per iteration."""
    h = res.history
    it = [s.iteration for s in h]
    sizes = np.array([s.class_sizes for s in h], dtype=float)
    fig, axes = new_figure(ncols=2, figsize=(11, 3.6), gridspec_kw={"wspace": 0.3})
    for k in range(sizes.shape[1]):
        axes[0].plot(it, sizes[:, k], "o-", ms=3, label=f"class {k + 1}")
    axes[0].set_ylabel("particles (most probable class)")
    axes[0].legend(fontsize=8)
    axes[1].plot(it, [100 * s.class_change for s in h], "o-", ms=3)
    axes[1].set_ylabel("particles changing class (%)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle("3D classification: class sizes and changes")
    return save_figure(fig, path)


def plot_class_slices(maps: np.ndarray, res: Class3DResult, path: str | os.PathLike) -> Path:
    """Orthogonal central slices (xy, xz, yz) of every class, one column per class, common grey scale."""
    k = maps.shape[0]
    c = maps.shape[-1] // 2
    lo, hi = float(maps.min()), float(maps.max())
    fig, axes = new_figure(nrows=3, ncols=k, figsize=(2.2 * k, 6.6), squeeze=False)
    sizes, res_a = res.class_sizes, res.resolution
    for j in range(k):
        v = maps[j]
        for i, img in enumerate((v[c], v[:, c], v[:, :, c])):
            axes[i, j].imshow(img, cmap="gray", origin="lower", vmin=lo, vmax=hi)
            axes[i, j].axis("off")
        r = f"{res_a[j]:.1f} Å" if np.isfinite(res_a[j]) else "–"
        axes[0, j].set_title(f"class {j + 1}: {sizes[j]} ({100 * res.distribution[j]:.0f}%), {r}", fontsize=8)
    fig.suptitle("central slices z (xy), y (xz), x (yz) of each class")
    return save_figure(fig, path)


def _references(refs: list, box: int, pixel_size: float, classes: int, star) -> tuple[torch.Tensor, list[str]]:
    """The starting maps on the particles' grid and a warning per map that had to be resampled."""
    if len(refs) not in (1, classes):
        raise InputError(f"{len(refs)} references for --classes {classes}; give one --ref (perturbed per class) "
                         f"or exactly {classes}.")
    maps, warnings = [], []
    for path in refs:
        header = read_mrc_header(path)
        shape, apix = tuple(int(v) for v in header.shape), float(header.voxel_size)
        maps.append(read_reference(path, box=box, pixel_size=pixel_size))
        if (apix > 0 and abs(apix - pixel_size) > 0.005 * pixel_size) or shape[-1] != box:
            warnings.append(f"{path}: box {shape[-1]} at {apix:g} Å/px resampled to the particles' box {box} at "
                            f"{pixel_size:g} Å/px")
    return torch.stack(maps), warnings


def run_class3d(star: str | os.PathLike, refs: list[str | os.PathLike], out_dir: str | os.PathLike,
                params: Class3DParams, *, mask: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                progress: Callable[[int, int, int, float], None] | None = None,
                observer: JobObserver | None = None, backend: str | None = None,
                project_dir: str | os.PathLike | None = None) -> Job:
    """Classify the particles of ``star`` against the references ``refs`` into ``out_dir``; returns the :class:`Job`.

    ``backend``: a compute backend spec for the E-step, in chunks of particles whose images the workers read
    (see :func:`cryolens.jobs.refine.run_refine`); None computes in this process.
    """
    out = Path(out_dir)
    check_params("class3d", params)
    parts = open_particles(star, pose=False, min_particles=max(10, params.classes), purpose="3D classification",
                           why="two half sets per class")
    pixel_size, box = parts.pixel_size, parts.box
    has_poses = all(c in parts.particles.columns for c in POSE_COLUMNS)
    mode = params.mode(has_poses)
    if mode in ("skip", "local") and not has_poses:
        raise InputError(f"{star}: has no rlnAngleRot/Tilt/Psi, which --skip-align and local searches need; give "
                         "refined particles or use --search global.")
    if params.particle_diameter is not None and params.particle_diameter > box * pixel_size:
        raise InputError(f"--particle-diameter {params.particle_diameter:g} Å is larger than the box "
                         f"({box} px × {pixel_size:g} Å = {box * pixel_size:g} Å); give a smaller diameter.")
    references, warnings = _references(list(refs), box, pixel_size, params.classes, star)
    mask_vol = read_mask(mask, box=box, pixel_size=pixel_size) if mask is not None else None
    inputs = {"particles": star, **{f"reference{i + 1}": r for i, r in enumerate(refs)},
              **({"mask": mask} if mask is not None else {})}
    with Job("class3d", out, params=params, inputs=inputs, seed=params.seed, device=str(device),
             observer=observer) as job:
        for w in warnings:
            job.log.warning(w)
        parts = parts.with_half_sets(seed=params.seed)

        def logged(it: int, done: int, total: int, resolution: float) -> None:
            if done == total:
                job.log.info("iteration %d: %d particles classified (alignment to %.1f Å)", it, total, resolution)
            if progress is not None:
                progress(it, done, total, resolution)

        with job.timed("class3d"), particle_distributor(backend, parts.source, star, project_dir=project_dir) as dist:
            res = classify_3d(lambda: parts.batches(params.batch_size), parts.table(), references,
                              pixel_size=pixel_size, params=params, mask=mask_vol, device=device, progress=logged,
                              distributor=dist)
        log_distribution(job, dist)
        for h in res.history:
            job.log.info("iteration %d (%s, band %.1f Å): sizes %s, %.1f%% changed class, %.1f s", h.iteration,
                         h.mode, h.resolution_limit, h.class_sizes, 100 * h.class_change, h.seconds)
        job.log.info("stopped after %d iterations: %s", len(res.history), {
            "iterations": "all --iter iterations run",
            "converged": f"fewer than {params.stop_change:g} of the particles changed class (--stop-change)",
            "plateau": f"fewer than {params.plateau_change:g} changed class in {params.plateau} iterations in a row "
                       "(--plateau)"}[res.stop])
        maps, unfil = res.maps.numpy(), res.unfiltered.numpy()
        if not (np.isfinite(maps).all() and np.isfinite(unfil).all()):
            raise RuntimeError("class maps hold NaN or infinite values")
        names = []
        for k in range(params.classes):
            for suffix, vol in (("", maps[k]), ("_unfil", unfil[k])):
                name = f"class{k + 1:03d}{suffix}"
                write_mrc(out / f"{name}.mrc", vol, pixel_size)
                job.add_output(name, out / f"{name}.mrc")
            names.append(os.path.relpath(out / f"class{k + 1:03d}.mrc"))
        write_particles(out / "particles.star", parts.optics,
                        classified_particles(parts.particles, res, pixel_size, poses=mode != "skip"))
        job.add_output("particles", out / "particles.star")
        write_star(out / "classes.star", {"model_classes": classes_table(res, names, pixel_size)})
        job.add_output("classes", out / "classes.star")
        write_star(out / "iterations.star", {"iterations": iterations_table(res)})
        job.add_output("iterations", out / "iterations.star")
        plot_class_sizes(res, out / "class_sizes.png")
        plot_class_slices(maps, res, out / "class_slices.png")
        plot_fsc({f"class {k + 1}": c for k, c in enumerate(res.fsc)}, out / "fsc.png",
                 title="FSC between random halves of each class")
        sizes = res.class_sizes
        job.results.update(n_particles=len(parts), classes=params.classes, search=mode, iterations=len(res.history),
                           box=box, pixel_size_A=pixel_size, class_sizes=[int(s) for s in sizes],
                           class_distribution=[round(float(d), 4) for d in res.distribution],
                           class_resolutions_A=[round(float(r), 2) if np.isfinite(r) else None
                                                for r in res.resolution],
                           largest_class=int(np.argmax(sizes)) + 1,
                           median_max_probability=round(float(np.median(res.max_probability)), 4),
                           final_class_change=round(res.history[-1].class_change, 4), stopped=res.stop,
                           warnings=warnings)
        write_report(out / "report.html", title="3D classification", summary=job.results, params=job.params,
                     images=["class_slices.png", "class_sizes.png", "fsc.png"])
        job.log.info("%d classes from %d particles: sizes %s", params.classes, len(parts), list(sizes))
    return job
