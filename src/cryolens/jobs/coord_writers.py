"""Writers of particle coordinates for other programs: the counterparts of :mod:`cryolens.jobs.coord_formats`.

Each takes a pick table (rlnMicrographName, rlnCoordinateX/Y = particle centres in pixels of the
micrograph, optionally rlnAutopickFigureOfMerit) and returns the file's text; the job
(:mod:`cryolens.jobs.export_coords`) writes them atomically.

* ``topaz`` (:func:`topaz_text`): one tab-separated table for all micrographs with the header
  ``image_name x_coord y_coord score``, ``image_name`` the micrograph's stem (Topaz names
  micrographs so), centres in pixels rounded to integers as ``topaz extract`` writes them, the
  score (0 when there is none);
* ``cistem`` (:func:`cistem_text`): ``micrograph x y`` per line, x and y in Å from the micrograph's
  origin (pixels × the micrograph's pixel size), what cisTEM's particle-position import reads;
* ``cbox`` (:func:`cbox_text`): crYOLO's CBOX, one file per micrograph: ``data_global`` with the
  format version, then the ``data_cryolo`` loop with the box's lower-left corner (centre - box/2,
  as crYOLO writes it) in ``_CoordinateX _CoordinateY``, ``_Width _Height`` = the box, the score as
  ``_Confidence`` and ``<NA>`` in the 3D columns;
* ``cryolo``: crYOLO's per-micrograph STAR (its ``STAR/`` folder): rlnCoordinateX/Y and
  rlnAutopickFigureOfMerit, written with :func:`cryolens.io.write_star` by the job.

Reading any of them back with :mod:`cryolens.jobs.coord_formats` (``cryolens import coords``)
gives the same centres (Topaz: to within half a pixel).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cryolens.jobs.coord_options import EXPORT_FORMATS

__all__ = ["EXPORT_FORMATS", "topaz_text", "cistem_text", "cbox_text"]

XY = ["rlnCoordinateX", "rlnCoordinateY"]
FOM = "rlnAutopickFigureOfMerit"


def _scores(table: pd.DataFrame) -> np.ndarray:
    if FOM in table.columns:
        return pd.to_numeric(table[FOM], errors="coerce").fillna(0.0).to_numpy(np.float64)
    return np.zeros(len(table))


def topaz_text(table: pd.DataFrame, stems: pd.Series) -> str:
    """A Topaz pick table; ``stems``: the micrograph stem of each row of ``table``."""
    xy = np.rint(table[XY].to_numpy(np.float64)).astype(np.int64)
    lines = ["image_name\tx_coord\ty_coord\tscore"]
    lines += [f"{s}\t{x}\t{y}\t{c:.6g}" for s, (x, y), c in zip(stems, xy, _scores(table))]
    return "\n".join(lines) + "\n"


def cistem_text(table: pd.DataFrame, pixel_size: np.ndarray) -> str:
    """cisTEM particle positions in Å (``pixel_size``: Å per pixel of each row's micrograph)."""
    a = table[XY].to_numpy(np.float64) * np.asarray(pixel_size, np.float64)[:, None]
    lines = ["# particle positions: micrograph x y (Å from the micrograph's origin), written by cryolens"]
    lines += [f"{m} {x:.3f} {y:.3f}" for m, (x, y) in zip(table["rlnMicrographName"].astype(str), a)]
    return "\n".join(lines) + "\n"


_CBOX_HEAD = """data_global

_cbox_format_version 1.0

data_cryolo

loop_
_CoordinateX #1
_CoordinateY #2
_CoordinateZ #3
_Width #4
_Height #5
_Depth #6
_EstWidth #7
_EstHeight #8
_Confidence #9
_NumBoxes #10
_Angle #11
"""


def cbox_text(table: pd.DataFrame, box: float) -> str:
    """A crYOLO CBOX file of one micrograph's picks, boxes of ``box`` pixels."""
    corner = table[XY].to_numpy(np.float64) - box / 2
    rows = [f"{x:.3f} {y:.3f} <NA> {box:g} {box:g} <NA> {box:g} {box:g} {c:.6g} <NA> <NA>"
            for (x, y), c in zip(corner, _scores(table))]
    return _CBOX_HEAD + "".join(r + "\n" for r in rows) + "\ndata_cryolo_include\n\nloop_\n_slice_index #1\n\n"
