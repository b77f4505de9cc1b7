"""``cryolens import coords``: particle coordinates from RELION STAR, EMAN ``.box`` or ``x y`` text files.

Outputs in the job folder: one RELION coordinate STAR per micrograph
(``<dirs>/<micrograph stem>_coords.star``, rlnCoordinateX/Y in pixels of the micrograph =
particle centres; an EMAN box's lower-left corner + size/2) and ``coords.star``
(``data_coordinate_files``: rlnMicrographName, rlnMicrographCoordinates, as RELION's
autopick.star), ``job.json``, ``run.log``, ``report.html``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import read_micrographs, read_mrc_header, read_star, write_star
from cryolens.io.images import resolve_path
from cryolens.jobs.importing import star_name
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver

__all__ = ["read_coordinates", "run_import_coords"]


def _numeric_table(path: Path, min_cols: int, what: str) -> np.ndarray:
    """Rows of numbers of a text file (``#`` comments, blank lines, commas and one header line allowed)."""
    rows = [line.split("#")[0].replace(",", " ").split() for line in path.read_text(errors="replace").splitlines()]
    rows = [r for r in rows if r]
    try:
        if rows:
            float(rows[0][0])
    except ValueError:
        rows = rows[1:]  # a header line such as "x y"
    try:
        if any(len(r) < min_cols for r in rows):
            raise ValueError
        return np.array([r[:min_cols] for r in rows], dtype=np.float64).reshape(-1, min_cols)
    except ValueError:
        raise InputError(f"{path}: expected {what} ({min_cols} numbers) on every line; fix the file or its "
                         "extension (.star, .box, .txt).") from None


def read_coordinates(path: str | os.PathLike) -> pd.DataFrame:
    """Particle centres in pixels of the micrograph from a RELION STAR, EMAN ``.box`` or plain ``x y`` text file.

    ``.box`` rows are ``x y width height`` with (x, y) the box's lower-left corner (smallest
    indices), so the centre is ``(x + width/2, y + height/2)``, as RELION converts them.
    Returns rlnCoordinateX/Y (+ the other columns of a STAR file).
    """
    p = Path(path)
    if p.suffix.lower() == ".star":
        loops = [b for b in read_star(p).values() if isinstance(b, pd.DataFrame) and "rlnCoordinateX" in b.columns]
        if not loops or "rlnCoordinateY" not in loops[0].columns:
            raise InputError(f"{p}: no table with rlnCoordinateX and rlnCoordinateY; give a RELION coordinate file.")
        table = loops[0].copy()
        for c in ("rlnCoordinateX", "rlnCoordinateY"):
            table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
        return table
    if p.suffix.lower() == ".box":
        rows = _numeric_table(p, 4, "x y width height")
        return pd.DataFrame({"rlnCoordinateX": rows[:, 0] + rows[:, 2] / 2,
                             "rlnCoordinateY": rows[:, 1] + rows[:, 3] / 2})
    rows = _numeric_table(p, 2, "x y")
    return pd.DataFrame({"rlnCoordinateX": rows[:, 0], "rlnCoordinateY": rows[:, 1]})


def _match_micrographs(files: list[Path], names: list[str], micrographs: str | os.PathLike) -> list[str]:
    """The micrograph of each coordinate file: the longest micrograph stem the file's stem starts with."""
    stems: dict[str, list[str]] = {}
    for n in names:
        stems.setdefault(Path(n).stem, []).append(n)
    ordered = sorted(stems, key=len, reverse=True)
    out, seen = [], {}
    for f in files:
        hit = next((s for s in ordered if f.stem == s or (f.stem.startswith(s) and f.stem[len(s)] in "_-.")), None)
        if hit is None:
            raise InputError(f"{f}: no micrograph of {micrographs} has a name its file name starts with; "
                             "leave it out of the pattern or give the right --micrographs.")
        if len(stems[hit]) > 1:
            raise InputError(f"{micrographs}: several micrographs are named {hit}; rename them so each stem is unique.")
        if stems[hit][0] in seen:
            raise InputError(f"{f}: {seen[stems[hit][0]]} already holds coordinates of {stems[hit][0]}; "
                             "give one coordinate file per micrograph.")
        seen[stems[hit][0]] = f
        out.append(stems[hit][0])
    return out


def run_import_coords(files: list[Path], micrographs: str | os.PathLike, out_dir: str | os.PathLike, *,
                      scale: float = 1.0, source: str = "", observer: JobObserver | None = None) -> Job:
    """Convert coordinate files to RELION coordinate STARs and ``coords.star``; returns the finished :class:`Job`.

    ``scale`` multiplies the coordinates (e.g. 2 for picks made on 2x-binned micrographs).
    """
    out = Path(out_dir)
    if not scale > 0:
        raise InputError("import coords: --scale must be positive.")
    _, mics = read_micrographs(micrographs)
    names = mics["rlnMicrographName"].astype(str).tolist()
    matched = _match_micrographs(files, names, micrographs)
    tables = [read_coordinates(f) for f in files]
    for f, t in zip(files, tables):
        if not np.isfinite(t[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()).all():
            raise InputError(f"{f}: some coordinates are not numbers; fix the file.")
    params = {"micrographs": str(micrographs), "scale": scale, "n_files": len(files)}
    with Job("import_coords", out, params=params, inputs={"micrographs": micrographs, "coordinates": source},
             observer=observer) as job:
        rows, n_out, n_picks = [], 0, 0
        for f, mic, t in zip(files, matched, tables):
            t = t.copy()
            t[["rlnCoordinateX", "rlnCoordinateY"]] *= scale
            parts = [q for q in Path(mic).parent.parts if q not in ("..", ".", "/")] if not Path(mic).is_absolute() \
                else []
            target = out.joinpath(*parts, f"{Path(mic).stem}_coords.star")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_star(target, {"": t})
            rows.append({"rlnMicrographName": mic, "rlnMicrographCoordinates": star_name(target)})
            n_picks += len(t)
            try:
                info = read_mrc_header(resolve_path(mic, micrographs))
                x, y = t["rlnCoordinateX"].to_numpy(), t["rlnCoordinateY"].to_numpy()
                n_out += int(((x < 0) | (y < 0) | (x >= info.shape[2]) | (y >= info.shape[1])).sum())
            except InputError:
                pass  # the micrograph file is not here: its size cannot be checked
        write_star(out / "coords.star", {"coordinate_files": pd.DataFrame(rows)})
        job.add_output("coords", out / "coords.star")
        job.results.update(n_files=len(files), n_micrographs=len(names), n_picks=n_picks, n_outside=n_out,
                           scale=scale)
        if n_out:
            job.log.warning("%d coordinates lie outside their micrograph", n_out)
        write_report(out / "report.html", title="Import coordinates", summary=job.results, params=job.params,
                     images=[])
    return job

