"""``cryolens export coords``: picks for Topaz, cisTEM or crYOLO (the writers: :mod:`cryolens.jobs.coord_writers`).

Reads any position file ``cryolens extract`` reads (:func:`cryolens.jobs.extract_inputs.read_positions`:
``coords.star`` of ``cryolens pick``, a coordinate index such as ``autopick.star`` or ``import coords``'
``coords.star``, a particles STAR) and writes into the job folder:

* ``topaz``: ``picks_topaz.txt`` (all micrographs, named by stem, integer pixels);
* ``cistem``: ``picks_cistem.txt`` (``micrograph x y`` in Å; needs the micrographs' pixel size, from
  ``--micrographs``);
* ``cbox``: ``CBOX/<stem>.cbox`` per micrograph (crYOLO's layout; ``--box`` px is the box crYOLO records);
* ``cryolo``: ``STAR/<stem>.star`` per micrograph (crYOLO's STAR output);

plus ``job.json``, ``run.log`` and ``report.html``. ``--scale`` multiplies the pixel coordinates (e.g.
0.125 for Topaz picking on micrographs binned 8 times; ``cryolens import coords --scale 8`` undoes it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import merge_optics, read_micrographs, write_star
from cryolens.io.atomic import write_text_atomic
from cryolens.jobs.coord_writers import EXPORT_FORMATS, FOM, XY, cbox_text, cistem_text, topaz_text
from cryolens.jobs.extract_inputs import match_micrographs, read_positions
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver

__all__ = ["run_export_coords", "OUTPUT_NAMES"]

#: The output each format records in job.json (a file, or the folder of per-micrograph files).
OUTPUT_NAMES = {"topaz": ("coords_topaz", "picks_topaz.txt"), "cistem": ("coords_cistem", "picks_cistem.txt"),
                "cbox": ("coords_cbox", "CBOX"), "cryolo": ("coords_cryolo", "STAR")}


def _pixel_sizes(table: pd.DataFrame, coords: str | os.PathLike, micrographs: str | os.PathLike) -> np.ndarray:
    """Å per pixel of each row's micrograph, from the micrographs STAR."""
    optics, mics = read_micrographs(micrographs)
    merged = merge_optics(optics, mics)
    names = mics["rlnMicrographName"].astype(str).tolist()
    row = match_micrographs(table["rlnMicrographName"], names)
    if (row < 0).any():
        first = table["rlnMicrographName"].iloc[int(np.argmax(row < 0))]
        raise InputError(f"{coords}: micrograph {first} is not in {micrographs}; give the micrographs STAR the "
                         "picks were made on.")
    apix = pd.to_numeric(merged.get("rlnMicrographPixelSize", pd.Series(np.nan, index=merged.index)),
                         errors="coerce").to_numpy(np.float64)[row]
    if not (np.isfinite(apix) & (apix > 0)).all():
        raise InputError(f"{micrographs}: no rlnMicrographPixelSize for some micrographs, so positions cannot "
                         "become Å; give a micrographs STAR with its optics table.")
    return apix


def _check(fmt: str, box: float | None, scale: float, micrographs) -> None:
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"export coords: --format {fmt} is not one of {', '.join(EXPORT_FORMATS)}.")
    if not scale > 0:
        raise InputError("export coords: --scale must be positive.")
    if fmt == "cbox" and not (box is not None and box > 0):
        raise InputError("export coords: --format cbox needs --box, the box size crYOLO records (pixels, > 0).")
    if fmt == "cistem" and scale != 1.0:
        raise InputError("export coords: cisTEM positions are in Å of the micrographs themselves; leave out --scale.")
    if fmt == "cistem" and micrographs is None:
        raise InputError("export coords: --format cistem writes Å and needs the micrographs' pixel size; give "
                         "--micrographs micrographs.star.")


def run_export_coords(coords: str | os.PathLike, out_dir: str | os.PathLike, *, fmt: str,
                      micrographs: str | os.PathLike | None = None, box: float | None = None, scale: float = 1.0,
                      observer: JobObserver | None = None) -> Job:
    """Write the picks of ``coords`` in format ``fmt`` (:data:`cryolens.jobs.coord_writers.EXPORT_FORMATS`) into
    ``out_dir``; returns the finished :class:`Job`. ``box``: CBOX box size [px]; ``scale`` multiplies the
    coordinates [px]; ``micrographs``: a micrographs STAR (pixel sizes; needed by ``cistem``).

    Raises:
        InputError: an impossible option, an unreadable or empty position file, a micrograph missing from
            ``micrographs``, or two micrographs with one stem (their files would collide).
    """
    _check(fmt, box, scale, micrographs)
    table = read_positions(coords).table
    if table.empty:
        raise InputError(f"{coords}: holds no picks; nothing to export.")
    table = table[["rlnMicrographName", *XY, *([FOM] if FOM in table.columns else [])]].copy()
    apix = _pixel_sizes(table, coords, micrographs) if micrographs is not None else None
    table[XY] = table[XY].to_numpy(np.float64) * scale
    names = table["rlnMicrographName"].astype(str)
    stems = names.map(lambda n: Path(n).stem)
    clash = stems.groupby(stems).transform(lambda s: names[s.index].nunique() > 1)
    if fmt != "cistem" and clash.any():
        raise InputError(f"{coords}: several micrographs are named {stems[clash].iloc[0]} (in different folders); "
                         f"{fmt} names micrographs by their stem, so rename them first.")
    out = Path(out_dir)
    name, target = OUTPUT_NAMES[fmt]
    params = {"coords": str(coords), "format": fmt, "micrographs": str(micrographs) if micrographs else None,
              "box": box, "scale": scale}
    with Job("export_coords", out, params=params, inputs={"coords": coords, "micrographs": micrographs or ""},
             observer=observer) as job:
        path = out / target
        if fmt == "topaz":
            write_text_atomic(path, topaz_text(table, stems))
        elif fmt == "cistem":
            write_text_atomic(path, cistem_text(table, apix))
        else:
            path.mkdir(parents=True, exist_ok=True)
            for stem, g in table.groupby(stems, sort=False):
                if fmt == "cbox":
                    write_text_atomic(path / f"{stem}.cbox", cbox_text(g, float(box)))
                else:
                    write_star(path / f"{stem}.star", {"": g.drop(columns="rlnMicrographName").reset_index(drop=True)})
        job.add_output(name, path)
        job.results.update(format=fmt, n_picks=len(table), n_micrographs=int(names.nunique()), output=target)
        write_report(out / "report.html", title="Export coordinates", summary=job.results, params=job.params,
                     images=[])
    return job
