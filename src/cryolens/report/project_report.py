"""The project report: one static HTML page over a project's jobs (``cryolens report [PROJECT]``).

It lists the jobs in workflow order (by job number: a job runs after the jobs whose outputs it
reads) with status, time and each job's verdict line (:mod:`cryolens.jobs.verdicts`) linking to
its ``report.html``; above them the numbers that matter, each from the latest finished job that
gives it (movies, micrographs kept, particles picked, particle images (extracted, simulated or
imported), particles kept, classes, resolution, B-factor); below them the lineage of the final
map (the latest finished postprocess, refine, reconstruct or ab-initio map) from the project
database. No server is needed: links are relative
to the project folder, where the page is written (``PROJECT/report.html``).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryolens.io.atomic import write_text_atomic
from cryolens.jobs.verdicts import needs_check, verdict
from cryolens.project.db import JobRecord, Project

__all__ = ["headline_numbers", "final_map", "render_project_report", "write_project_report", "REPORT_NAME"]

REPORT_NAME = "report.html"

Getter = Callable[[JobRecord], Any]


def _get(key: str) -> Getter:
    return lambda j: j.results.get(key)


def _motion_kept(j: JobRecord) -> Any:
    n, rej = j.results.get("n_movies"), j.results.get("n_rejected")
    return None if n is None else n - (rej or 0)


def _select_of(kind: str) -> Getter:
    return lambda j: j.results.get("n_kept") if kind in j.outputs else None


def _classes(j: JobRecord) -> Any:
    r = j.results
    if j.stage == "class2d":
        return f"{r.get('populated_classes')} of {r.get('classes')} (2D)"
    sizes = r.get("class_sizes")
    return f"{len(sizes)} (3D)" if sizes else r.get("classes")


#: Headline rows: (label, unit, [(stage, getter), ...]); the latest finished job with a value wins.
HEADLINES: list[tuple[str, str, list[tuple[str, Getter]]]] = [
    ("movies", "", [("import_movies", _get("n_movies")), ("simulate_movies", _get("n_movies"))]),
    ("micrographs kept", "", [("simulate_micrographs", _get("n_micrographs")),
                              ("import_micrographs", _get("n_micrographs")), ("motion", _motion_kept),
                              ("ctf", _get("n_micrographs")), ("select", _select_of("micrographs"))]),
    ("particles picked", "", [("pick", _get("n_picks")), ("import_coords", _get("n_picks"))]),
    ("particle images", "", [("extract", _get("n_particles")), ("simulate_particles", _get("n_particles")),
                                 ("import_particles", _get("n_particles"))]),
    ("particles kept", "", [("select_classes", _get("n_kept")), ("select", _select_of("particles"))]),
    ("classes", "", [("class2d", _classes), ("abinitio", _classes), ("class3d", _classes)]),
    ("resolution", "Å", [("reconstruct", _get("resolution_0143_A")), ("abinitio", _get("resolution_0143_A")),
                         ("refine", _get("resolution_0143_A")), ("postprocess", _get("resolution_corrected_A"))]),
    ("B-factor", "Å²", [("postprocess", _get("bfactor_A2"))]),
]

#: Stages whose map is a final map, with the output holding it, best first.
FINAL_MAPS = (("postprocess", "map_sharp"), ("refine", "map"), ("reconstruct", "map"), ("abinitio", "map"))


def headline_numbers(jobs: Sequence[JobRecord]) -> list[tuple[str, str, JobRecord | None]]:
    """``(label, value with unit, job)`` for each headline (value ``-`` and job None when no job gives it)."""
    out = []
    for label, unit, sources in HEADLINES:
        best: tuple[JobRecord, Any] | None = None
        for j in jobs:
            if j.status != "finished":
                continue
            for stage, get in sources:
                if j.stage == stage:
                    v = get(j)
                    if v is not None and (best is None or j.number > best[0].number):
                        best = (j, v)
        out.append((label, "-", None) if best is None else (label, f"{best[1]} {unit}".strip(), best[0]))
    return out


def final_map(jobs: Sequence[JobRecord]) -> tuple[JobRecord, str] | None:
    """The latest finished job of the best stage in :data:`FINAL_MAPS` and its map's stored path, or None."""
    for stage, name in FINAL_MAPS:
        found = [j for j in jobs if j.status == "finished" and j.stage == stage and name in j.outputs]
        if found:
            j = max(found, key=lambda j: j.number)
            return j, j.outputs[name]
    return None


def _report_link(project: Project, j: JobRecord, prefix: str) -> str:
    name = html.escape(f"{j.name} {j.stage}")
    if (project.abs(j.folder) / "report.html").is_file():
        return f'<a href="{html.escape(prefix + j.folder)}/report.html">{name}</a>'
    return name


def _lineage_html(node: dict, prefix: str) -> str:
    job = node["job"]
    label = html.escape(node["path"])
    if job:
        label += (f' &larr; <a href="{html.escape(prefix + job["folder"])}/report.html">{html.escape(job["name"])} '
                  f'{html.escape(job["stage"])}</a> ({html.escape(job["status"])})')
    else:
        label += " (input)"
    kids = "".join(_lineage_html(c, prefix) for c in node["inputs"])
    return f"<li>{label}{f'<ul>{kids}</ul>' if kids else ''}</li>"


def _took(j: JobRecord) -> str:
    return f"{j.ended - j.started:.1f} s" if j.started and j.ended else ""


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto}th{text-align:left;padding-right:1em}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;vertical-align:top}.finished{color:#2e7d32}
.failed,.killed{color:#c62828}.running{color:#e65100}.queued{color:#1565c0}.check{color:#e65100}
ul.lineage li{margin:2px 0}td:nth-child(3){white-space:nowrap}"""


def render_project_report(project: Project, *, prefix: str = "") -> str:
    """The project report as an HTML string; links are ``prefix`` + paths relative to the project folder."""
    jobs = project.jobs()
    head = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td><td>"
        f"{_report_link(project, j, prefix) if j else ''}</td></tr>" for label, value, j in headline_numbers(jobs))
    rows = []
    for j in jobs:
        text = verdict(j.stage, j.results, j.params) if j.status == "finished" else (j.error or "")
        cls = "check" if j.status == "finished" and needs_check(text) else ""
        rows.append(f'<tr><td>{_report_link(project, j, prefix)}</td><td class="{j.status}">{j.status}</td>'
                    f"<td>{_took(j)}</td><td class=\"{cls}\">{html.escape(text)}</td></tr>")
    lineage = "<p>No final map yet.</p>"
    fm = final_map(jobs)
    if fm is not None:
        try:
            tree = project.lineage(project.abs(fm[1]))
            lineage = (f"<p>Final map: <code>{html.escape(fm[1])}</code></p>"
                       f'<ul class="lineage">{_lineage_html(tree, prefix)}</ul>')
        except Exception as e:  # noqa: BLE001 - a map not recorded as an asset: say so, keep the page
            lineage = f"<p>Final map {html.escape(fm[1])}: no lineage ({html.escape(str(e))}).</p>"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cryolens project {html.escape(project.root.name)}</title>
<style>{_CSS}</style></head><body>
<h1>Project {html.escape(project.root.name)}</h1><p>{html.escape(str(project.root))}; {len(jobs)} jobs; written {when}.</p>
<h2>Numbers that matter</h2><table>{head}</table>
<h2>Jobs in workflow order</h2><table><tr><th>job</th><th>status</th><th>took</th><th>verdict</th></tr>{''.join(rows)}</table>
<h2>Lineage of the final map</h2>{lineage}
</body></html>
"""


def write_project_report(project: Project, path: str | os.PathLike | None = None) -> Path:
    """Write the project report (default ``PROJECT/report.html``; links stay relative to the project folder)."""
    target = Path(path) if path is not None else project.root / REPORT_NAME
    prefix = os.path.relpath(project.root, target.resolve().parent).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    write_text_atomic(target, render_project_report(project, prefix=prefix))
    return target
