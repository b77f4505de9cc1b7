"""What every job report gets once its job finished: the verdict line, per-class particle counts and,
for simulated data, the truth panels.

:func:`complete_report` is called by :class:`cryolens.jobs.runner.Job` after the outputs passed their
checks and before SUCCESS is recorded; it reads the job's output files in its folder (no stage code is
involved), writes the panel PNGs there and rewrites ``report.html`` in place of the markers that
:func:`cryolens.jobs.report.write_report` leaves (:data:`VERDICT_MARK`, :data:`PANELS_MARK`). A
report without the markers gets the verdict after its title. Any error here is logged by the job and
leaves the report as the stage wrote it.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryolens.io.atomic import write_text_atomic
from cryolens.jobs.report import PANELS_MARK, VERDICT_MARK
from cryolens.jobs.truth import particle_table
from cryolens.jobs.truth_panels import Panel, truth_panels
from cryolens.jobs.verdicts import needs_check, verdict

__all__ = ["complete_report", "class_counts", "CLASS_STAGES", "panel_html", "verdict_html"]

#: Stages whose ``particles.star`` holds a hard class assignment (``rlnClassNumber``) worth counting.
CLASS_STAGES = ("class2d", "class3d", "abinitio", "select_classes")


def class_counts(folder: str | os.PathLike) -> Panel | None:
    """Particles per class (hard assignment, ``rlnClassNumber`` of ``particles.star``) as a panel, or None."""
    star = Path(folder) / "particles.star"
    if not star.is_file():
        return None
    table = particle_table(star)
    if "rlnClassNumber" not in table.columns or not len(table):
        return None
    counts = table["rlnClassNumber"].astype(int).value_counts().sort_index()
    total = int(counts.sum())
    rows = [["class", "particles", "%"]] + [[int(c), int(n), f"{100 * n / total:.1f}"] for c, n in counts.items()]
    return Panel("Particles per class", {"particles": total, "classes with particles": int(len(counts))}, [], rows)


def verdict_html(text: str) -> str:
    """The verdict line as an HTML paragraph (class ``verdict``, plus ``check`` when it asks for a look)."""
    cls = "verdict check" if needs_check(text) else "verdict"
    return f'<p class="{cls}"><strong>Verdict:</strong> {html.escape(text)}</p>'


def panel_html(panel: Panel) -> str:
    """One panel as an HTML section: its rows as a table, its table if any, its images."""
    out = [f'<section class="panel"><h2>{html.escape(panel.title)}</h2>']
    if panel.rows:
        out.append("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                       for k, v in panel.rows.items()) + "</table>")
    if panel.table:
        head, *body = panel.table
        out.append('<table class="grid"><tr>' + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                             for row in body) + "</table>")
    out += [f'<figure><img src="{html.escape(i)}" alt="{html.escape(i)}"></figure>' for i in panel.images]
    out.append("</section>")
    return "".join(out)


def complete_report(folder: str | os.PathLike, *, stage: str, results: Mapping[str, Any],
                    params: Mapping[str, Any]) -> Path | None:
    """Add the verdict, class counts and truth panels to ``folder/report.html``; None when there is no report."""
    path = Path(folder) / "report.html"
    if not path.is_file():
        return None
    page = path.read_text(encoding="utf-8")
    panels = []
    if stage in CLASS_STAGES:
        panels.append(class_counts(folder))
    panels += truth_panels(folder, stage, params)
    block = "".join(panel_html(p) for p in panels if p is not None)
    line = verdict_html(verdict(stage, results, params))
    if VERDICT_MARK in page:
        page = page.replace(VERDICT_MARK, line, 1)
    elif "</h1>" in page:
        page = page.replace("</h1>", "</h1>" + line, 1)
    if PANELS_MARK in page:
        page = page.replace(PANELS_MARK, block, 1)
    elif "</body>" in page:
        page = page.replace("</body>", block + "</body>", 1)
    write_text_atomic(path, page)
    return path
