"""Picks chosen again without picking: re-selection from a finished pick job, and consensus of pick sets.

* :func:`run_rethreshold` (``cryolens pick --rethreshold DIR --threshold T``): reads the candidates
  ``DIR/picks_all.star`` that a ``cryolens pick`` job kept (every pick down to its floor, with its
  score) and writes a new job folder with the same outputs for another threshold or
  ``--max-per-micrograph`` (:func:`cryolens.jobs.pick_outputs.write_selection`); no micrograph is read.
* :func:`run_pick_consensus` (``cryolens pick-consensus A/coords.star B/coords.star``): picks of
  several sets on the same micrographs closer than a radius are one particle, scored by the number
  of sets that found it (:func:`cryolens.picking.consensus`, Scipion's consensus picking); those
  found by at least ``min_agree`` sets are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.jobs.extract_inputs import read_positions
from cryolens.jobs.pick import OUTPUTS
from cryolens.jobs.pick_outputs import FOM, XY, plot_picks_per_micrograph, plot_scores, read_picks_all, \
    write_coordinates, write_selection
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver
from cryolens.picking import consensus

__all__ = ["run_rethreshold", "run_pick_consensus"]


def _finished_pick_job(source: Path) -> dict:
    """The job.json of a finished ``cryolens pick`` job in ``source``."""
    meta = source / "job.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        raise InputError(f"{source}: no readable job.json; give the folder of a finished `cryolens pick` job to "
                         "--rethreshold.") from None
    if info.get("stage") not in (None, "pick") or info.get("status") != "finished":
        raise InputError(f"{meta}: not a finished `cryolens pick` job (stage {info.get('stage')}, status "
                         f"{info.get('status')}); give the folder of a finished pick job to --rethreshold.")
    if not (source / "picks_all.star").is_file():
        raise InputError(f"{source / 'picks_all.star'}: not found; the job kept no candidates to re-select from, "
                         "pick again.")
    return info


def run_rethreshold(source_dir: str | os.PathLike, out_dir: str | os.PathLike, *, threshold: float | None = None,
                    max_per_micrograph: int | None = None, observer: JobObserver | None = None) -> Job:
    """Re-select the picks of the finished pick job ``source_dir`` into the new job folder ``out_dir``.

    Args:
        threshold: keep candidates whose score exceeds this (SD of the score map); default the
            source job's threshold. Must not be below the floor the candidates were kept down to.
        max_per_micrograph: keep at most this many per micrograph (the highest scores); None: all.

    Raises:
        InputError: the folder is no finished pick job, or the threshold is below the candidates' floor.
    """
    source, out = Path(source_dir), Path(out_dir)
    if source.resolve() == out.resolve():
        raise InputError(f"{out}: --out must be a new folder, not the job being re-thresholded.")
    info = _finished_pick_job(source)
    old = info.get("results", {})
    floor = float(old.get("floor", 0.0))
    t = float(old.get("threshold")) if threshold is None else float(threshold)
    if t < floor:
        raise InputError(f"{source / 'picks_all.star'}: its candidates were kept down to {floor:g} SD only, so "
                         f"--threshold {t:g} cannot be re-selected; pick again with a lower threshold.")
    if max_per_micrograph is not None and max_per_micrograph < 1:
        raise InputError(f"--max-per-micrograph {max_per_micrograph}: give at least 1.")
    micrographs, candidates = read_picks_all(source / "picks_all.star")
    params = {**info.get("params", {}), "threshold": t, "max_per_micrograph": max_per_micrograph,
              "rethreshold": str(source)}
    mics_star = info.get("inputs", {}).get("micrographs")
    with Job("pick", out, params=params, inputs={"picks": source / "picks_all.star"}, device="cpu",
             observer=observer) as job:
        for small in sorted((source / "Overlays").glob("*.mrc")):  # keep them so this job can be re-selected too
            (out / "Overlays").mkdir(parents=True, exist_ok=True)
            shutil.copy2(small, out / "Overlays" / small.name)
        job.results.update(write_selection(
            out, micrographs, candidates, threshold=t, max_per_micrograph=max_per_micrograph, floor=floor,
            overlays_from=source, micrographs_star=mics_star, title="Particle picking (re-selected)", params=params,
            extra=dict(rethreshold_of=str(source), method=old.get("method"), ctf_aware=old.get("ctf_aware"))))
        for name, file in OUTPUTS.items():
            job.add_output(name, out / file, rows=False)  # zero picks is a result (reported), not a fault
    return job


def run_pick_consensus(coords: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, radius: float,
                       min_agree: int | None = None, observer: JobObserver | None = None) -> Job:
    """Consensus of pick sets on the same micrographs into the job folder ``out_dir``.

    Args:
        coords: two or more pick files (coords.star tables, coordinate indexes such as autopick.star,
            particles.star), coordinates in pixels of the same micrographs (matched by rlnMicrographName).
        radius: picks of different sets closer than this are one particle [px of the micrograph].
        min_agree: keep particles found by at least this many sets (default: all of them, the AND consensus).

    Writes coords.star (rlnAutopickFigureOfMerit = the number of sets agreeing), RELION's
    ``*_autopick.star`` layout, ``scores.png``, ``picks_per_micrograph.png`` and ``report.html``.
    """
    files = [Path(c) for c in coords]
    if len(files) < 2:
        raise InputError("pick-consensus needs at least two pick files; give --in twice or more "
                         "(e.g. --in A/coords.star --in B/coords.star).")
    k = len(files) if min_agree is None else int(min_agree)
    if not 1 <= k <= len(files):
        raise InputError(f"--min-agree {k}: must be between 1 and the number of pick files ({len(files)}).")
    if not radius > 0:
        raise InputError(f"--radius {radius:g}: must be a positive distance in micrograph pixels.")
    positions = [read_positions(f) for f in files]
    sets = [pos.table for pos in positions]
    names: list[str] = list(dict.fromkeys(n for t in sets for n in t["rlnMicrographName"]))
    if not names:
        raise InputError(f"{files[0]}: the pick files hold no picks; give coords.star files of picking jobs.")
    for f, t in zip(files, sets):
        if not len(t):
            raise InputError(f"{f}: holds no picks; give the coords.star of a picking job that found particles.")
    in_sets = [set(t["rlnMicrographName"]) for t in sets]
    shared = [n for n in names if sum(n in s for s in in_sets) >= k]
    if not shared:
        raise InputError(f"{', '.join(map(str, files))}: no micrograph is in {k} of the pick files; give pick sets "
                         "of the same micrographs (matched by rlnMicrographName).")
    groups = [{n: g[XY].to_numpy() for n, g in t.groupby("rlnMicrographName", sort=False)} for t in sets]
    empty = np.zeros((0, 2))
    out = Path(out_dir)
    params = {"radius_px": radius, "min_agree": k, "n_sets": len(files)}
    with Job("pick", out, params=params, inputs={f"picks{i + 1}": f for i, f in enumerate(files)}, device="cpu",
             observer=observer) as job:
        parts, scores = [], []
        for n in names:
            xy, score = consensus([g.get(n, empty) for g in groups], radius)
            s = score.numpy()
            scores.append(s)
            keep = s >= k
            parts.append(pd.DataFrame({"rlnMicrographName": n, XY[0]: xy[keep, 0].double().numpy(),
                                       XY[1]: xy[keep, 1].double().numpy(), FOM: s[keep]}))
        picks = pd.concat(parts, ignore_index=True)
        write_coordinates(out, names, picks, micrographs_star=None)
        counts = picks.groupby("rlnMicrographName", sort=False).size().reindex(names, fill_value=0).to_numpy()
        plot_scores(np.concatenate(scores), k - 0.5, out / "scores.png", title="sets agreeing on each particle",
                    xlabel="number of pick sets")
        plot_picks_per_micrograph(counts, out / "picks_per_micrograph.png")
        job.results.update(n_micrographs=len(names), n_picks=len(picks), n_sets=len(files), min_agree=k,
                           radius_px=radius, n_particles_any=int(sum(len(s) for s in scores)),
                           picks_per_set=[int(len(t)) for t in sets])
        for pos in positions:
            if pos.missing:
                job.log.warning("%d coordinate files named in %s do not exist (e.g. %s): no picks there",
                                len(pos.missing), pos.path, pos.missing[0])
        write_report(out / "report.html", title="Consensus picking", summary=job.results, params=params,
                     images=["scores.png", "picks_per_micrograph.png"])
        for name in ("coords", "autopick", "report"):
            job.add_output(name, out / OUTPUTS[name], rows=False)
    return job
