"""``cryolens select micrographs|particles``: keep the rows that pass rules, write kept and rejected.

Outputs in the job folder: ``micrographs.star`` or ``particles.star`` (the kept rows,
optics kept, RELION 3.1), ``rejected.star`` (the others, same optics), ``select.png``
(a histogram per rule column with its threshold; the consensus defocus differences),
``report.html``, ``job.json`` whose results hold ``n_in``, ``n_kept``, ``n_rejected`` and
``criteria``: per criterion the rows that passed and failed it, each counted on its own.

``select particles --max-zscore Z`` also reads the images and rejects those whose robust
z-score of mean, SD, min or max against the stack exceeds Z (:mod:`cryolens.select.screen`);
the z-score is written to both tables as ``rlnCryolensZScore`` and its histogram to ``select.png``.

Rules see the optics columns too (``rlnImagePixelSize < 2``); the written tables keep
the input's columns and row order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import merge_optics, read_micrographs, read_particles, write_micrographs, write_particles
from cryolens.jobs.report import new_figure, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.select import MissingColumnError, SelectParams, Selection, select_rows
from cryolens.select.screen import image_statistics, robust_zscores

__all__ = ["run_select", "KINDS", "ZSCORE_COLUMN"]

#: cryolens-specific column with each particle image's robust z-score (``--max-zscore``).
ZSCORE_COLUMN = "rlnCryolensZScore"

#: kind -> (reader, writer, data block, key column pairing two files for a consensus)
KINDS = {
    "micrographs": (read_micrographs, write_micrographs, "micrographs", "rlnMicrographName"),
    "particles": (read_particles, write_particles, "particles", "rlnImageName"),
}


def _column_error(e: MissingColumnError, star: str | os.PathLike, block: str, flag: str) -> InputError:
    shown = [c for c in e.available if not c.startswith("_")]
    return InputError(f"{star}: column {e.column} is not in data_{block} (available: {', '.join(shown)}); "
                      f"fix the {flag} or give a file that has it.")


def _plot(table: pd.DataFrame, params: SelectParams, sel: Selection, path: Path) -> Path | None:
    """Histogram of each rule's column with its threshold, of the consensus defocus differences and z-scores."""
    panels = [(str(r), table[r.column].to_numpy(float), r.value) for r in params.rules()]
    if ZSCORE_COLUMN in table.columns:
        panels.append(("image z-score", table[ZSCORE_COLUMN].to_numpy(float), params.max_zscore))
    if sel.consensus is not None:
        panels.append(("relative defocus difference", sel.consensus.relative_defocus_difference,
                       params.tolerance_defocus))
    panels = [(t, v[np.isfinite(v)], x) for t, v, x in panels]
    if not panels:
        return None
    fig, axes = new_figure(ncols=len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (title, values, threshold) in zip(axes[0], panels):
        ax.hist(values, bins=min(50, max(5, len(values) // 4 or 5)), color="#4477aa")
        ax.axvline(threshold, color="red", lw=1.2)
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def _screen(star, table: pd.DataFrame, merged: pd.DataFrame, max_z: float, sel: Selection,
            job: Job) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the images' z-scores to both tables and reject those above ``max_z`` (updates ``sel``)."""
    from cryolens.jobs.particles import open_particles

    ps = open_particles(star, pose=False)
    with job.timed("screen"):
        z = robust_zscores(image_statistics(ps.batches(256), len(ps)))
    passed = z <= max_z
    sel.summary[f"image z-score <= {max_z:g}"] = {"passed": int(passed.sum()), "failed": int((~passed).sum())}
    sel.keep &= passed
    return table.assign(**{ZSCORE_COLUMN: z}), merged.assign(**{ZSCORE_COLUMN: z})


def run_select(kind: str, star: str | os.PathLike, out_dir: str | os.PathLike, params: SelectParams, *,
               consensus: str | os.PathLike | None = None, observer: JobObserver | None = None) -> Job:
    """Select rows of the ``kind`` STAR file ``star`` into ``out_dir``; returns the finished :class:`Job`.

    Args:
        kind: ``micrographs`` or ``particles``.
        consensus: a second STAR of the same items (another CTF estimate) to agree with.

    Raises:
        InputError: a missing column, an input without rows, or a selection that keeps nothing (all before
            the job folder is written).
    """
    if kind not in KINDS:
        raise InputError(f"select {kind}: unknown kind; use micrographs or particles.")
    read, write, block, key = KINDS[kind]
    out = Path(out_dir)
    check_params(f"select {kind}", params)
    optics, table = read(star)
    other = read(consensus)[1] if consensus is not None else None
    merged = merge_optics(optics, table)
    for rule in params.rules():
        if rule.column not in merged.columns:
            raise _column_error(MissingColumnError(rule.column, merged.columns), star, block, f"--where rule '{rule}'")
    if params.classes and "rlnClassNumber" not in table.columns:
        raise _column_error(MissingColumnError("rlnClassNumber", table.columns), star, block, "--class option")
    if other is not None:
        needed = ["rlnDefocusU", "rlnDefocusV"] + (["rlnDefocusAngle"] if params.tolerance_angle is not None else [])
        for name, t in ((star, table), (consensus, other)):
            missing = [c for c in needed if c not in t.columns]
            if missing:
                raise _column_error(MissingColumnError(missing[0], t.columns), name, block, "--consensus file")
    if params.max_zscore is not None and kind != "particles":
        raise InputError(f"select {kind}: --max-zscore screens particle images; use it with select particles.")
    if not len(table):
        raise InputError(f"{star}: data_{block} holds no {kind}; give a STAR file with at least one row.")
    try:
        sel = select_rows(merged, params, other=other, key=key,
                          other_name=Path(consensus).name if consensus is not None else "other")
    except MissingColumnError as e:
        raise _column_error(e, star, block, "selection") from None
    except ValueError as e:
        raise InputError(f"{star}: {e}.") from None
    if not sel.keep.any():
        failed = "; ".join(f"{c}: {n['failed']} of {len(table)} fail" for c, n in sel.summary.items())
        raise InputError(f"{star}: none of its {len(table)} {kind} passes the selection ({failed}); "
                         "loosen the rules or check the column's values.")
    inputs = {kind: star} | ({"consensus": consensus} if consensus is not None else {})
    with Job(f"select_{kind}", out, params=params, inputs=inputs, observer=observer) as job:
        if params.max_zscore is not None:
            table, merged = _screen(star, table, merged, params.max_zscore, sel, job)
            if not sel.keep.any():
                raise InputError(f"{star}: no particle passes --max-zscore {params.max_zscore:g} and the other "
                                 "rules; raise --max-zscore.")
        kept, rejected = table[sel.keep], table[~sel.keep]
        write(out / f"{block}.star", optics, kept)
        job.add_output(block, out / f"{block}.star")
        write(out / "rejected.star", optics, rejected)
        job.add_output("rejected", out / "rejected.star", rows=False)
        job.results.update(n_in=len(table), n_kept=len(kept), n_rejected=len(rejected), criteria=sel.summary)
        images = ["select.png"] if _plot(merged, params, sel, out / "select.png") else []
        summary = {"rows in": len(table), "kept": len(kept), "rejected": len(rejected)}
        summary |= {c: f"{n['passed']} passed, {n['failed']} failed" for c, n in sel.summary.items()}
        write_report(out / "report.html", title=f"Selected {kind}", summary=summary, params=job.params, images=images)
        job.log.info("kept %d of %d %s", len(kept), len(table), kind)
    return job
