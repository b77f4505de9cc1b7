"""``cryolens import coords``: particle coordinates from RELION or crYOLO STAR, crYOLO CBOX, EMAN
``.box``, ``x y`` text, Topaz tables, cisTEM text or .plt (the readers: :mod:`cryolens.jobs.coord_formats`).

Outputs in the job folder: one RELION coordinate STAR per micrograph
(``<dirs>/<micrograph stem>_coords.star``, rlnCoordinateX/Y in pixels of the micrograph =
particle centres; an EMAN or CBOX box's lower-left corner + size/2; cisTEM's Å divided by the
micrograph's pixel size; a cisTEM .plt export's rows counted back from the bottom; a score (Topaz
score, crYOLO confidence) as rlnAutopickFigureOfMerit) and ``coords.star`` (``data_coordinate_files``:
rlnMicrographName, rlnMicrographCoordinates, as RELION's autopick.star), ``job.json``, ``run.log``, ``report.html``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import merge_optics, read_micrographs, read_mrc_header, write_star
from cryolens.io.paths import resolve_path, star_name
from cryolens.jobs.coord_formats import PICK_LISTS, XY, detect_format, match_names, read_coordinates, read_pick_list
from cryolens.jobs.coord_options import COORD_FORMATS
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver

__all__ = ["run_import_coords"]


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


def _plt_height(path: Path, mic: str, micrographs: str | os.PathLike) -> int:
    """Rows of micrograph ``mic`` [px], which a cisTEM ``.plt`` file of it counts from the top."""
    try:
        return int(read_mrc_header(resolve_path(mic, micrographs)).shape[1])
    except InputError:
        raise InputError(f"{path}: a cisTEM .plt file counts rows from the top, so its micrograph {mic} must be "
                         "readable to convert them; run from the project folder.") from None


def _from_pick_lists(files: list[Path], fmt: str, micrographs: str | os.PathLike, optics: pd.DataFrame,
                     mics: pd.DataFrame) -> tuple[list[str], list[pd.DataFrame]]:
    """The picks of Topaz or cisTEM files (many micrographs each), one table per micrograph in pixels
    (cisTEM's Å divided by the micrograph's pixel size), in the order of the micrographs STAR."""
    names = mics["rlnMicrographName"].astype(str).tolist()
    parts = []
    for f in files:
        t = read_pick_list(f, fmt)
        t["rlnMicrographName"] = match_names(t["rlnMicrographName"].tolist(), names, f, micrographs)
        parts.append(t)
    picks = pd.concat(parts, ignore_index=True)
    if fmt == "cistem":
        table = merge_optics(optics, mics)
        apix = pd.to_numeric(table.get("rlnMicrographPixelSize", pd.Series(np.nan, index=table.index)),
                             errors="coerce")
        size = picks["rlnMicrographName"].map(dict(zip(names, apix))).to_numpy(dtype=np.float64)
        if not (np.isfinite(size) & (size > 0)).all():
            raise InputError(f"{micrographs}: no rlnMicrographPixelSize for some micrographs, so cisTEM's Å cannot "
                             "become pixels; give a micrographs STAR with its optics table.")
        picks[XY] = picks[XY].to_numpy() / size[:, None]
    groups = dict(tuple(picks.groupby("rlnMicrographName", sort=False)))
    matched = [n for n in names if n in groups]
    return matched, [groups[n].drop(columns="rlnMicrographName").reset_index(drop=True) for n in matched]


def run_import_coords(files: list[Path], micrographs: str | os.PathLike, out_dir: str | os.PathLike, *,
                      scale: float = 1.0, fmt: str = "auto", source: str = "",
                      observer: JobObserver | None = None) -> Job:
    """Convert coordinate files to RELION coordinate STARs and ``coords.star``; returns the finished :class:`Job`.

    ``scale`` multiplies the coordinates (e.g. 2 for picks made on 2x-binned micrographs);
    ``fmt`` is one of :data:`cryolens.jobs.coord_options.COORD_FORMATS` (``auto``: by extension).
    A Topaz or cisTEM file holds many micrographs: one RELION STAR is written per micrograph
    with picks, and ``n_files`` counts those.
    """
    out = Path(out_dir)
    if not scale > 0:
        raise InputError("import coords: --scale must be positive.")
    if fmt not in COORD_FORMATS:
        raise InputError(f"import coords: --format {fmt} is not one of {', '.join(COORD_FORMATS)}.")
    if fmt == "cistem" and scale != 1.0:
        raise InputError("import coords: cisTEM positions are in Å and become pixels through the micrographs' "
                         "pixel size; leave out --scale.")
    if fmt == "auto":
        topaz = [f for f in files if detect_format(f) == "topaz"]
        if topaz and len(topaz) < len(files):
            raise InputError(f"{topaz[0]}: is a Topaz table of many micrographs; import it apart from the "
                             "per-micrograph coordinate files.")
        fmt = "topaz" if topaz else fmt
    optics, mics = read_micrographs(micrographs)
    names = mics["rlnMicrographName"].astype(str).tolist()
    if fmt in PICK_LISTS:
        matched, tables = _from_pick_lists(files, fmt, micrographs, optics, mics)
    else:
        matched = _match_micrographs(files, names, micrographs)
        tables = [read_coordinates(f, fmt, height=_plt_height(f, m, micrographs)
                                   if (detect_format(f) if fmt == "auto" else fmt) == "plt" else None)
                  for f, m in zip(files, matched)]
        for f, t in zip(files, tables):
            if not np.isfinite(t[XY].to_numpy()).all():
                raise InputError(f"{f}: some coordinates are not numbers; fix the file.")
    params = {"micrographs": str(micrographs), "scale": scale, "format": fmt, "n_files": len(files)}
    with Job("import_coords", out, params=params, inputs={"micrographs": micrographs, "coordinates": source},
             observer=observer) as job:
        rows, n_out, n_picks = [], 0, 0
        for mic, t in zip(matched, tables):
            t = t.copy()
            t[XY] *= scale
            parts = [q for q in Path(mic).parent.parts if q not in ("..", ".", "/")] if not Path(mic).is_absolute() \
                else []
            target = out.joinpath(*parts, f"{Path(mic).stem}_coords.star")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_star(target, {"": t})
            rows.append({"rlnMicrographName": mic, "rlnMicrographCoordinates": star_name(target, into=out)})
            n_picks += len(t)
            try:
                info = read_mrc_header(resolve_path(mic, micrographs))
                x, y = t["rlnCoordinateX"].to_numpy(), t["rlnCoordinateY"].to_numpy()
                n_out += int(((x < 0) | (y < 0) | (x >= info.shape[2]) | (y >= info.shape[1])).sum())
            except InputError:
                pass  # the micrograph file is not here: its size cannot be checked
        write_star(out / "coords.star", {"coordinate_files": pd.DataFrame(rows)})
        job.add_output("coords", out / "coords.star")
        job.results.update(n_files=len(tables), n_micrographs=len(names), n_picks=n_picks, n_outside=n_out,
                           scale=scale)
        if n_out:
            job.log.warning("%d coordinates lie outside their micrograph", n_out)
        write_report(out / "report.html", title="Import coordinates", summary=job.results, params=job.params,
                     images=[])
    return job

