"""Outputs of ``cryolens pick`` (and of its re-selection and consensus): STAR files, RELION's
autopick layout, plots and ``report.html``.

The picking job keeps every candidate above a low floor with its score in ``picks_all.star``
and writes the selected ones (score above the threshold, at most N per micrograph) to
``coords.star``; re-selection (``--rethreshold``) only calls :func:`write_selection` again on
the stored candidates. Files written into a job folder ``out``:

* ``picks_all.star``: ``data_micrographs`` (rlnMicrographName, rlnMicrographPixelSize [Å],
  cryolensStem: the output name of the micrograph) and ``data_picks`` (every candidate:
  rlnMicrographName, rlnCoordinateX/Y [px of the micrograph], rlnAutopickFigureOfMerit [SD
  of the score map], cryolensPickDiameter [Å], cryolensSelected: 1 for the picks in coords.star);
* ``coords.star``: one table ``data_particles`` of the selected picks (rlnMicrographName,
  rlnCoordinateX/Y [px], rlnAutopickFigureOfMerit), what ``cryolens extract --in`` reads;
* RELION's layout: ``<path>_autopick.star`` per micrograph (rlnCoordinateX/Y,
  rlnAutopickFigureOfMerit; empty loops for micrographs without picks) where ``<path>`` is the
  micrograph's name without extension and without the ``.../jobNNN/`` part RELION strips
  (:func:`relion_coord_name`), so ``relion_preprocess --extract --coord_dir <job>/ --coord_suffix
  _autopick.star`` finds them; ``autopick.star`` (RELION 4's index: rlnMicrographName,
  rlnMicrographCoordinates) and ``coords_suffix_autopick.star`` (RELION 3.1's pointer to the
  micrographs STAR);
* ``Overlays/<stem>.png`` (picks as circles of the diameter on the low-passed micrograph
  ``Overlays/<stem>.mrc``), ``scores.png`` (histogram with the threshold),
  ``picks_per_micrograph.png``, ``report.html``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryolens.io import read_mrc, read_star, write_star
from cryolens.io.atomic import write_text_atomic
from cryolens.io.paths import star_name
from cryolens.jobs.report import new_figure, save_figure, write_report

__all__ = ["XY", "FOM", "DIAMETER", "SELECTED", "SUFFIX", "relion_coord_name", "select_candidates", "write_picks_all",
           "read_picks_all", "write_coordinates", "draw_overlay", "plot_scores", "plot_picks_per_micrograph",
           "write_selection"]

XY = ["rlnCoordinateX", "rlnCoordinateY"]
FOM = "rlnAutopickFigureOfMerit"
DIAMETER = "cryolensPickDiameter"
SELECTED = "cryolensSelected"
SUFFIX = "_autopick.star"
_JOB_PART = re.compile(r"^(.*?/)job\d{3}[^/]*/(.*)$")


def relion_coord_name(micrograph: str, suffix: str = SUFFIX) -> str:
    """Where RELION 3.1 looks for a micrograph's coordinates below ``--coord_dir``.

    RELION (``decomposePipelineFileName``) drops everything up to and including a
    ``/jobNNN/`` folder, then the extension, and appends the suffix:
    ``MotionCorr/job002/Movies/a.mrc`` -> ``Movies/a_autopick.star``,
    ``sim/micrographs/m.mrc`` -> ``sim/micrographs/m_autopick.star``.
    """
    m = _JOB_PART.match(micrograph)
    rest = m.group(2) if m else micrograph.lstrip("/")
    return str(Path(rest).with_suffix("")) + suffix


def select_candidates(candidates: pd.DataFrame, *, threshold: float, max_per_micrograph: int | None) -> pd.Series:
    """Which of ``candidates`` (sorted by descending score within each micrograph) are picks: score above
    ``threshold`` (SD), at most ``max_per_micrograph`` per micrograph (the highest), as
    :func:`cryolens.picking.select_picks` selects them. Returns a bool Series on ``candidates``' index."""
    above = candidates[FOM] > threshold
    if max_per_micrograph is not None:
        rank = above.groupby(candidates["rlnMicrographName"], sort=False).cumsum()
        above &= rank <= max_per_micrograph
    return above


def write_picks_all(path: Path, micrographs: pd.DataFrame, candidates: pd.DataFrame, selected: pd.Series) -> None:
    """``picks_all.star``: the micrographs (name, pixel size [Å], stem) and every candidate with its score and
    ``cryolensSelected`` (1: in coords.star, 0: below the threshold or beyond --max-per-micrograph)."""
    write_star(path, {"micrographs": micrographs, "picks": candidates.assign(**{SELECTED: selected.astype(int)})})


def read_picks_all(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(micrographs, candidates)`` of a ``picks_all.star`` (see :func:`write_picks_all`)."""
    blocks = read_star(path)
    mics, picks = blocks.get("micrographs"), blocks.get("picks")
    if not isinstance(mics, pd.DataFrame) or not isinstance(picks, pd.DataFrame):
        from cryolens.errors import InputError
        raise InputError(f"{path}: has no data_micrographs and data_picks tables; give the folder of a finished "
                         "`cryolens pick` job.")
    mics = mics.copy()
    mics["rlnMicrographName"] = mics["rlnMicrographName"].astype(str)
    mics["cryolensStem"] = mics["cryolensStem"].astype(str)
    picks = picks.drop(columns=[SELECTED], errors="ignore")
    picks["rlnMicrographName"] = picks["rlnMicrographName"].astype(str)
    return mics, picks


def write_coordinates(out: Path, names: Sequence[str], picks: pd.DataFrame, *, micrographs_star: str | None) -> None:
    """``coords.star`` (one table) and RELION's layout (per-micrograph ``*_autopick.star``, ``autopick.star``,
    ``coords_suffix_autopick.star``) for the micrographs ``names`` (those without picks get empty files)."""
    table = picks[["rlnMicrographName", *XY, FOM]].reset_index(drop=True)
    write_star(out / "coords.star", {"particles": table})
    groups = {n: g for n, g in table.groupby("rlnMicrographName", sort=False)}
    files = []
    for name in names:
        path = out / relion_coord_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        g = groups.get(name, table.iloc[:0])
        write_star(path, {"": g[[*XY, FOM]].reset_index(drop=True)})
        files.append(star_name(path, into=out))
    write_star(out / "autopick.star", {"coordinate_files": pd.DataFrame(
        {"rlnMicrographName": list(names), "rlnMicrographCoordinates": files})})
    if micrographs_star is not None:
        write_text_atomic(out / f"coords_suffix{SUFFIX}", f"{micrographs_star}\n")


def draw_overlay(image: np.ndarray, scale: float, xy: np.ndarray, diameter_px: np.ndarray | float, path: Path, *,
                 title: str) -> Path:
    """Picks as circles on a (low-passed, downsampled) micrograph image.

    Args:
        image: ``(h, w)`` micrograph image, protein dark; scale: micrograph pixels per image pixel.
        xy: ``(K, 2)`` pick centres in micrograph pixels; diameter_px: circle diameter(s) in micrograph pixels.
    """
    from matplotlib.collections import EllipseCollection

    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    h, w = img.shape
    fig, ax = new_figure(figsize=(7, 7 * h / max(w, 1) + 0.4))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="upper", interpolation="bilinear")
    xy = np.asarray(xy, dtype=float).reshape(-1, 2) / scale
    if len(xy):
        d = np.broadcast_to(np.asarray(diameter_px, dtype=float) / scale, (len(xy),))
        ax.add_collection(EllipseCollection(d, d, np.zeros(len(xy)), units="xy", offsets=xy,
                                            offset_transform=ax.transData, facecolors="none",
                                            edgecolors="#00e5ff", linewidths=1.0))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return save_figure(fig, path)


def plot_scores(scores: np.ndarray, threshold: float | None, path: Path, *, title: str,
                xlabel: str = "score (SD of the score map)") -> Path:
    """Histogram of the candidates' scores with the threshold as a vertical line."""
    fig, ax = new_figure(figsize=(6.4, 3.8))
    s = np.asarray(scores, dtype=float)
    if len(s):
        ax.hist(s, bins=min(80, max(10, len(s) // 10)), color="#4c72b0")
        ax.set_yscale("log")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", lw=1.5, label=f"threshold {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("candidates")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_picks_per_micrograph(counts: Sequence[int], path: Path, *, title: str = "picks per micrograph") -> Path:
    """Picks of each micrograph in the order of the micrographs STAR."""
    fig, ax = new_figure(figsize=(6.4, 3.4))
    c = np.asarray(counts)
    ax.bar(np.arange(1, len(c) + 1), c, width=1.0 if len(c) > 50 else 0.8, color="#55a868")
    ax.set_xlabel("micrograph")
    ax.set_ylabel("picks")
    ax.set_title(f"{title} (mean {c.mean():.1f})" if len(c) else title, fontsize=10)
    return save_figure(fig, path)


def _overlays(out: Path, source: Path, micrographs: pd.DataFrame, picks: pd.DataFrame) -> list[str]:
    """Overlay PNGs for the micrographs whose low-passed image ``source/Overlays/<stem>.mrc`` exists."""
    made = []
    groups = {n: g for n, g in picks.groupby("rlnMicrographName", sort=False)}
    for name, stem, apix in zip(micrographs["rlnMicrographName"], micrographs["cryolensStem"],
                                micrographs["rlnMicrographPixelSize"]):
        small = source / "Overlays" / f"{stem}.mrc"
        if not small.is_file():
            continue
        img, small_apix = read_mrc(small)
        g = groups.get(name, picks.iloc[:0])
        png = out / "Overlays" / f"{stem}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        draw_overlay(img, small_apix / float(apix), g[XY].to_numpy(), g[DIAMETER].to_numpy() / float(apix), png,
                     title=f"{name}: {len(g)} picks")
        made.append(os.path.relpath(png, out))
    return made


def write_selection(out: Path, micrographs: pd.DataFrame, candidates: pd.DataFrame, *, threshold: float,
                    max_per_micrograph: int | None, floor: float, overlays_from: Path, micrographs_star: str | None,
                    title: str, params: Mapping[str, Any], extra: Mapping[str, Any] = ()) -> dict:
    """Select the picks from the candidates and write every output of a picking job (see the module docstring).

    Returns the job results: counts, threshold, floor and picks per micrograph statistics.
    """
    selected = select_candidates(candidates, threshold=threshold, max_per_micrograph=max_per_micrograph)
    write_picks_all(out / "picks_all.star", micrographs, candidates, selected)
    picks = candidates[selected].reset_index(drop=True)
    names = micrographs["rlnMicrographName"].tolist()
    write_coordinates(out, names, picks, micrographs_star=micrographs_star)
    counts = picks.groupby("rlnMicrographName", sort=False).size().reindex(names, fill_value=0).to_numpy()
    images = _overlays(out, overlays_from, micrographs, picks)
    plot_scores(candidates[FOM].to_numpy(), threshold, out / "scores.png",
                title=f"{len(candidates)} candidates, {len(picks)} picked")
    plot_picks_per_micrograph(counts, out / "picks_per_micrograph.png")
    results = dict(extra)
    results.update(n_micrographs=len(names), n_picks=len(picks), n_candidates=len(candidates),
                   threshold=float(threshold), max_per_micrograph=max_per_micrograph, floor=float(floor),
                   picks_per_micrograph_mean=round(float(counts.mean()) if len(counts) else 0.0, 3),
                   picks_per_micrograph_min=int(counts.min()) if len(counts) else 0,
                   picks_per_micrograph_max=int(counts.max()) if len(counts) else 0,
                   n_micrographs_without_picks=int((counts == 0).sum()))
    write_report(out / "report.html", title=title, summary=results, params=params,
                 images=["scores.png", "picks_per_micrograph.png", *images])
    return results
