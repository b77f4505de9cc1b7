"""``cryolens select classes``: keep the particles of chosen 2D classes, by list or by automatic score.

Input: a 2D classification folder ``DIR`` with ``classes.mrcs`` (K averages), ``classes.star``
(one row per class: ``rlnReferenceImage``, ``rlnClassDistribution``, ``rlnEstimatedResolution``
Å, ... and ``rlnClassNumber`` or the class number in the image name) and ``particles.star``
(``rlnClassNumber`` per particle). Outputs in the job folder:

* ``particles.star``: the particles of the kept classes (optics kept, input order), and
  ``rejected.star`` the others;
* ``classes.mrcs`` + ``classes.star``: the kept averages (ready for ``pick --templates``),
  written in the input's form (its other blocks, e.g. ``data_optics``, kept) with
  ``rlnClassNumber`` the original class number and ``rlnCryolensParticleCount`` the hard
  count: the number of its particles in ``particles.star`` (the soft
  ``rlnClassDistribution`` is kept as given; RELION #815);
* ``class_scores.star``: every class with its hard count, features, sub-scores, score and
  ``kept`` (:mod:`cryolens.select.class_scores`);
* with particle screening (``--min-particle-z``, on by default with ``--auto``) the images are
  read and each particle of a kept class gets ``rlnCryolensClassFitZ``, its fit with its
  class average (:mod:`cryolens.select.particle_fit`); those below the threshold go to
  ``rejected.star`` and the counts above are those of the particles kept
  (``class_scores.star``: ``n_particles`` before, ``n_kept`` after);
* with ``--max-image-z`` (5 by default with ``--auto``) every particle gets ``rlnCryolensZScore``, the robust
  z-score of its image's mean, SD, min and max against the whole stack (:mod:`cryolens.select.screen`); those
  above it go to ``rejected.star`` as well;
* with ``--max-loglik-z`` (3 by default with ``--auto``, when ``particles.star`` has ``rlnLogLikeliContribution``)
  every particle gets ``rlnCryolensLogLikeliZ``, the robust z-score of its log-likelihood among all particles
  (:func:`cryolens.select.screen.loglik_zscores`); those below minus the threshold go to ``rejected.star``;
* ``classes.png`` (the averages sorted by score, kept ones framed green, dropped red),
  ``report.html``, ``job.json`` (results: ``n_in``, ``n_kept``, ``kept_classes``, ``counts``, and the particles
  each screen dropped after the ones before it: ``n_dropped_by_fit``, ``n_dropped_by_image_z``,
  ``n_dropped_by_loglik_z``; ``warnings``: those of the cryolens 2D classification selected from, e.g. that
  most particles fit no class, repeated in the log).

An empty selection is a user error (exit 2) and writes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.errors import InputError
from cryolens.io import format_image_name, parse_image_name, read_mrc, read_particles, read_star, write_mrc, \
    write_particles, write_star
from cryolens.jobs.report import new_figure, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.select.class_params import ClassSelectParams
from cryolens.select.class_scores import class_features, hard_counts, score_classes
from cryolens.select.particle_fit import particle_z
from cryolens.select.screen import STAT_NAMES, batch_statistics, loglik_zscores, robust_zscores

__all__ = ["run_select_classes", "read_class_folder", "ClassFolder", "COUNT_COLUMN", "Z_COLUMN", "IMAGE_Z_COLUMN",
           "LOGLIK_Z_COLUMN"]

#: cryolens-specific classes.star column: the class's hard particle count in particles.star.
COUNT_COLUMN = "rlnCryolensParticleCount"
#: cryolens-specific particles.star column: the particle's fit z-score with its class average.
Z_COLUMN = "rlnCryolensClassFitZ"
#: cryolens-specific particles.star column: the robust z-score of the particle image's statistics against the stack
#: (``--max-image-z``; the column ``select particles --max-zscore`` writes).
IMAGE_Z_COLUMN = "rlnCryolensZScore"
#: cryolens-specific particles.star column: the signed robust z-score of the particle's rlnLogLikeliContribution
#: among all particles (``--max-loglik-z``, :func:`cryolens.select.screen.loglik_zscores`).
LOGLIK_Z_COLUMN = "rlnCryolensLogLikeliZ"


def _class_table(path: Path, k: int) -> tuple[pd.DataFrame, dict, str]:
    """The class table of ``path``, all of its blocks and the class table's block name."""
    blocks = read_star(path)
    loops = {n: b for n, b in blocks.items() if isinstance(b, pd.DataFrame) and len(b.columns)}
    name = next((n for n, b in loops.items() if "rlnReferenceImage" in b.columns or "rlnClassNumber" in b.columns),
                None)
    if name is None:
        raise InputError(f"{path}: holds no class table (rlnReferenceImage or rlnClassNumber); give the classes.star "
                         "of a 2D classification.")
    table = loops[name].reset_index(drop=True)
    if "rlnClassNumber" not in table.columns:
        if "rlnReferenceImage" in table.columns:
            numbers = [parse_image_name(str(n))[0] + 1 for n in table["rlnReferenceImage"]]
        else:
            numbers = list(range(1, len(table) + 1))
        table.insert(0, "rlnClassNumber", numbers)
    if len(table) != k:
        raise InputError(f"{path}: lists {len(table)} classes but classes.mrcs holds {k} averages; give the files of "
                         "one 2D classification.")
    return table, blocks, name


@dataclass
class ClassFolder:
    """A 2D classification folder as read.

    Attributes:
        classes: the class loop of ``classes.star`` (the one with ``rlnReferenceImage`` or
            ``rlnClassNumber``: cryolens class2d's ``data_particles``, RELION's ``model_classes``),
            with ``rlnClassNumber`` filled in when absent.
        blocks, block: all blocks of ``classes.star`` and the class loop's name.
        averages: ``(K, n, n)`` float32; pixel_size: Å.
        optics, particles: the tables of ``particles.star``.
    """

    classes: pd.DataFrame
    blocks: dict
    block: str
    averages: np.ndarray
    pixel_size: float
    optics: pd.DataFrame
    particles: pd.DataFrame


def read_class_folder(folder: str | os.PathLike) -> ClassFolder:
    """Read and check a 2D classification folder (``classes.mrcs``, ``classes.star``, ``particles.star``).

    Raises:
        InputError: a missing file or column, or files that do not belong together.
    """
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{d}: no such folder; give --in the folder of a 2D classification (cryolens class2d --out).")
    for name in ("classes.mrcs", "classes.star", "particles.star"):
        if not (d / name).is_file():
            raise InputError(f"{d / name}: missing; give --in the folder of a finished 2D classification.")
    averages, apix = read_mrc(d / "classes.mrcs")
    averages = np.asarray(averages, dtype=np.float32)
    averages = averages[None] if averages.ndim == 2 else averages
    if not np.isfinite(averages).all():
        raise InputError(f"{d / 'classes.mrcs'}: contains NaN or infinite values; rerun the 2D classification.")
    classes, blocks, name = _class_table(d / "classes.star", len(averages))
    optics, particles = read_particles(d / "particles.star")
    if "rlnClassNumber" not in particles.columns:
        raise InputError(f"{d / 'particles.star'}: has no rlnClassNumber column; give the particles.star written by "
                         "the 2D classification.")
    known = set(classes["rlnClassNumber"].astype(int))
    stray = sorted(set(particles["rlnClassNumber"].astype(int)) - known)
    if stray:
        raise InputError(f"{d / 'particles.star'}: assigns class {stray[0]}, which {d / 'classes.star'} does not list; "
                         "give the files of one 2D classification.")
    if not apix and "rlnImagePixelSize" in optics.columns:
        apix = float(optics["rlnImagePixelSize"].iloc[0])
    return ClassFolder(classes, blocks, name, averages, float(apix), optics, particles)


def _job_record(folder: Path) -> dict:
    """The ``job.json`` of a cryolens 2D classification in ``folder`` ({} for a RELION folder or an unreadable one)."""
    try:
        record = json.loads((folder / "job.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _diameter(record: dict, params: ClassSelectParams, box: int, apix: float) -> float:
    if params.particle_diameter is not None:
        return float(params.particle_diameter)
    try:
        return float(record["params"]["particle_diameter"])
    except (KeyError, TypeError, ValueError):
        return 0.9 * box * apix  # class2d's own default mask


def _classification_warnings(record: dict) -> list[str]:
    """The warnings the 2D classification gave (its ``job.json`` results)."""
    try:
        found = record["results"]["warnings"]
    except (KeyError, TypeError):
        return []
    if not isinstance(found, list):
        return []
    return [f"the 2D classification warned: {w}" for w in found if isinstance(w, str)]


def _screen_scores(folder: Path, cf: ClassFolder, numbers: np.ndarray, rows: np.ndarray, diameter: float, *,
                   fit: bool, stats: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One read of the images: the fit z-score of each particle with its class average (NaN where ``rows`` is False;
    None unless ``fit``) and the robust z-score of its image statistics against the whole stack
    (:mod:`cryolens.select.screen`; None unless ``stats``)."""
    from cryolens.core.masks import soft_sphere
    from cryolens.jobs.particles import open_particles
    from cryolens.particles import ctf_params_from_table, has_ctf, origins_px_from_table

    ps = open_particles(folder / "particles.star", pose=False)
    table = ps.table()
    index = {int(c): i for i, c in enumerate(numbers)}
    averages = torch.as_tensor(np.array(cf.averages))
    mask = soft_sphere(ps.box, radius=min(diameter / 2 / ps.pixel_size, ps.box / 2 - 1), edge_width=3, ndim=2)
    z = np.full(len(table), np.nan)
    image_stats = np.full((len(table), len(STAT_NAMES)), np.nan)
    for idx, images in ps.batches(256):
        if stats:
            image_stats[idx] = batch_statistics(images)
        sel = rows[idx]
        if not fit or not sel.any():
            continue
        idx, images = idx[sel], images[sel]
        sub = table.iloc[idx]
        psi = torch.as_tensor(sub["rlnAnglePsi"].to_numpy(np.float32)) if "rlnAnglePsi" in sub.columns \
            else torch.zeros(len(sub))
        ci = torch.as_tensor([index[int(c)] for c in sub["rlnClassNumber"]])
        ctf = ctf_params_from_table(sub) if has_ctf(sub) else None
        z[idx] = particle_z(torch.as_tensor(images), averages[ci], psi, origins_px_from_table(sub), ctf,
                            pixel_size=ps.pixel_size, mask=mask).numpy()
    image_z = robust_zscores(pd.DataFrame(image_stats, columns=list(STAT_NAMES))) if stats else None
    return (z if fit else None), image_z


def _loglik_threshold(params: ClassSelectParams, particles: pd.DataFrame, folder: Path) -> float | None:
    """The log-likelihood z threshold in use; None when off or (by --auto's default) when ``particles.star`` has no
    rlnLogLikeliContribution."""
    z = params.loglik_z_threshold()
    if z is None or "rlnLogLikeliContribution" in particles.columns:
        return z
    if params.max_loglik_z is None:
        return None
    raise InputError(f"{folder / 'particles.star'}: has no rlnLogLikeliContribution column for --max-loglik-z; give "
                     "a 2D classification's particles.star or set --max-loglik-z 0.")


def _gallery(averages: np.ndarray, scores: pd.DataFrame, kept: np.ndarray, path: Path, auto: bool) -> Path:
    order = np.argsort(-scores["score"].to_numpy(), kind="stable") if auto else np.arange(len(averages))
    ncols = min(8, len(order))
    nrows = int(np.ceil(len(order) / ncols))
    fig, axes = new_figure(nrows=nrows, ncols=ncols, figsize=(1.5 * ncols, 1.75 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        row = scores.iloc[i]
        ax.imshow(averages[i], cmap="gray", origin="lower")
        colour = "#229944" if kept[i] else "#cc3311"
        ax.axis("on")
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_title(f"{int(row.rlnClassNumber)}: n={int(row.n_particles)} s={row.score:.2f}", fontsize=7,
                     color=colour)
    fig.suptitle("class averages (green kept, red dropped" + (", by score)" if auto else ")"), fontsize=9)
    return save_figure(fig, path)


def _empty_selection(params: ClassSelectParams, scores: pd.DataFrame, warnings: list[str]) -> InputError:
    if params.auto:
        best = scores.iloc[int(scores["score"].to_numpy().argmax())]
        head = (f"select classes: no class scored at least --min-score {params.min_score:g} (best: class "
                f"{int(best.rlnClassNumber)} with {best.score:.2f})")
        if warnings:  # the classification itself failed: a lower threshold would only keep its noise
            return InputError(f"{head}, and {warnings[0].rstrip('.')}.")
        return InputError(f"{head}; lower --min-score or name classes with --class.")
    return InputError(f"select classes: classes {', '.join(map(str, params.classes))} hold no particles; name other "
                      "classes with --class.")


def run_select_classes(folder: str | os.PathLike, out_dir: str | os.PathLike, params: ClassSelectParams, *,
                       observer: JobObserver | None = None) -> Job:
    """Select the particles of chosen 2D classes of ``folder`` into ``out_dir``; returns the finished :class:`Job`."""
    check_params("select classes", params)
    folder, out = Path(folder), Path(out_dir)
    cf = read_class_folder(folder)
    classes, averages, apix, optics, particles = cf.classes, cf.averages, cf.pixel_size, cf.optics, cf.particles
    numbers = classes["rlnClassNumber"].astype(int).to_numpy()
    missing = sorted(set(params.classes) - set(numbers))
    if missing:
        raise InputError(f"--class {missing[0]}: {folder / 'classes.star'} has no such class (classes "
                         f"{numbers.min()} to {numbers.max()}).")
    counts = hard_counts(particles["rlnClassNumber"].to_numpy(), int(numbers.max()))[numbers - 1]
    record = _job_record(folder)
    diameter = _diameter(record, params, averages.shape[-1], apix)
    res = classes["rlnEstimatedResolution"].to_numpy(float) if "rlnEstimatedResolution" in classes.columns else None
    scores = score_classes(class_features(averages, pixel_size=apix, diameter=diameter), counts=counts,
                           pixel_size=apix, diameter=diameter, resolution=res)
    scores.insert(0, "rlnClassNumber", numbers)
    kept_cls = (scores["score"].to_numpy() >= params.min_score) if params.auto else np.isin(numbers, params.classes)
    kept_cls &= counts > 0
    warnings = _classification_warnings(record)
    if not kept_cls.any():
        raise _empty_selection(params, scores, warnings)
    keep = np.isin(particles["rlnClassNumber"].astype(int).to_numpy(), numbers[kept_cls])
    dropped = {"fit": 0, "image_z": 0, "loglik_z": 0}

    def apply(test: str, passed: np.ndarray) -> None:
        nonlocal keep
        n_before = int(keep.sum())
        keep = keep & passed
        dropped[test] = n_before - int(keep.sum())

    z_min, image_z_max = params.particle_z_threshold(), params.image_z_threshold()
    loglik_z_max = _loglik_threshold(params, particles, folder)
    tests = []
    if z_min is not None or image_z_max is not None:
        z, image_z = _screen_scores(folder, cf, numbers, keep, diameter, fit=z_min is not None,
                                    stats=image_z_max is not None)
        if z is not None:
            particles = particles.assign(**{Z_COLUMN: np.round(np.nan_to_num(z, nan=-999.0), 3)})  # -999: not scored
            apply("fit", z >= z_min)
            tests.append(f"--min-particle-z {z_min:g}")
        if image_z is not None:
            particles = particles.assign(**{IMAGE_Z_COLUMN: np.round(image_z, 3)})
            apply("image_z", image_z <= image_z_max)
            tests.append(f"--max-image-z {image_z_max:g}")
    if loglik_z_max is not None:
        lz = loglik_zscores(particles["rlnLogLikeliContribution"].to_numpy(float))
        particles = particles.assign(**{LOGLIK_Z_COLUMN: np.round(np.nan_to_num(lz, nan=0.0), 3)})
        apply("loglik_z", ~(lz < -loglik_z_max))
        tests.append(f"--max-loglik-z {loglik_z_max:g}")
    if tests:
        counts_kept = hard_counts(particles["rlnClassNumber"].to_numpy()[keep], int(numbers.max()))[numbers - 1]
        kept_cls &= counts_kept > 0
        if not kept_cls.any():
            raise InputError(f"select classes: no particle of the kept classes passes {' and '.join(tests)}; relax "
                             "it (0 turns it off).")
        scores["n_kept"] = counts_kept
        counts = counts_kept
    scores["kept"] = kept_cls.astype(int)
    inputs = {"classes": folder / "classes.star", "averages": folder / "classes.mrcs",
              "particles": folder / "particles.star"}
    with Job("select_classes", out, params=params, inputs=inputs, observer=observer) as job:
        for w in warnings:
            job.log.warning(w)
        write_particles(out / "particles.star", optics, particles[keep])
        job.add_output("particles", out / "particles.star")
        write_particles(out / "rejected.star", optics, particles[~keep])
        job.add_output("rejected", out / "rejected.star", rows=False)
        write_mrc(out / "classes.mrcs", averages[kept_cls], apix)
        job.add_output("averages", out / "classes.mrcs")
        sel = classes[kept_cls].copy()
        rel = os.path.relpath(out / "classes.mrcs")
        for column in ("rlnReferenceImage", "rlnImageName"):
            if column in sel.columns or column == "rlnReferenceImage":
                sel[column] = [format_image_name(i, rel) for i in range(len(sel))]
        sel[COUNT_COLUMN] = counts[kept_cls]
        blocks = {**cf.blocks, cf.block: sel.reset_index(drop=True)}
        write_star(out / "classes.star", blocks)  # the input's blocks (e.g. data_optics) with the kept classes
        job.add_output("classes", out / "classes.star")
        write_star(out / "class_scores.star", {"class_scores": scores})
        job.add_output("scores", out / "class_scores.star")
        _gallery(averages, scores, kept_cls, out / "classes.png", params.auto)
        kept_numbers = [int(c) for c in numbers[kept_cls]]
        job.results.update(n_in=len(particles), n_kept=int(keep.sum()), n_rejected=int((~keep).sum()),
                           n_classes=len(numbers), kept_classes=kept_numbers, particle_diameter_A=diameter,
                           counts={str(int(c)): int(n) for c, n in zip(numbers, counts)},
                           particle_z_threshold=z_min, image_z_threshold=image_z_max,
                           loglik_z_threshold=loglik_z_max, n_dropped_by_fit=dropped["fit"],
                           n_dropped_by_image_z=dropped["image_z"], n_dropped_by_loglik_z=dropped["loglik_z"],
                           warnings=warnings)
        summary = {"particles in": len(particles), "kept": int(keep.sum()), "classes kept": len(kept_numbers),
                   "kept classes": ", ".join(map(str, kept_numbers)),
                   "selection": f"score >= {params.min_score:g}" if params.auto else "class list"}
        write_report(out / "report.html", title="Selected classes", summary=summary, params=job.params,
                     images=["classes.png"])
        job.log.info("kept %d of %d particles in %d of %d classes", keep.sum(), len(particles), len(kept_numbers),
                     len(numbers))
    return job
