"""Inputs of ``cryolens extract``: the particle positions and the micrographs they belong to.

Three kinds of position file are read (:func:`read_positions`), told apart by their columns:

* ``files``: a coordinate index, as ``cryolens import coords`` and the simulator write it and
  RELION's ``autopick.star`` is (rlnMicrographName, rlnMicrographCoordinates): one RELION
  coordinate STAR (or crYOLO CBOX, EMAN ``.box``, or ``x y`` text) per micrograph, rlnCoordinateX/Y in
  pixels of the micrograph;
* ``table``: one table of every pick (rlnMicrographName, rlnCoordinateX/Y), as ``cryolens
  pick`` writes it;
* ``particles``: a particle STAR file (rlnImageName; RELION 3.0 or 3.1) for re-extraction;
  its rlnOriginXAngst/YAngst (Å) can re-centre the boxes (:func:`cryolens.extract.recentre`).

Positions are matched to the rows of the micrographs STAR by rlnMicrographName, or by the
file's stem when the name differs but the stem is unique (:func:`match_micrographs`).
Every user-fixable problem raises :class:`cryolens.errors.InputError` with one sentence
naming the file and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import read_particles, read_star, require_columns
from cryolens.io.paths import resolve_path
from cryolens.jobs.coord_formats import read_coordinates

__all__ = ["Positions", "read_positions", "match_micrographs", "resolve_file"]

XY = ["rlnCoordinateX", "rlnCoordinateY"]


@dataclass(frozen=True)
class Positions:
    """The particle positions of an extraction, one row per particle.

    Attributes:
        path: the file as given (messages name it).
        kind: ``"files"`` (a coordinate index), ``"table"`` (one pick table) or ``"particles"``
            (a particle STAR file: re-extraction).
        table: rlnMicrographName, rlnCoordinateX/Y [px of the micrograph] and whatever else
            the file holds (for particles: their RELION 3.1 columns, origins in Å).
        missing: coordinate files a ``files`` index names that do not exist (skipped, as RELION
            skips micrographs without picks).
    """

    path: str | os.PathLike
    kind: str
    table: pd.DataFrame
    missing: tuple[str, ...] = ()


def resolve_file(name: str, star: str | os.PathLike, row: int, what: str) -> Path:
    """A file named in row ``row`` (1-based) of ``star``, found as RELION does (:func:`cryolens.io.resolve_path`).

    Raises:
        InputError: the file is in none of the places tried (names the STAR file, the row and ``what``).
    """
    try:
        return resolve_path(name, star, row=row)
    except InputError:
        raise InputError(f"{star}: {what} {name} (row {row}) was not found in {Path.cwd()}, next to the STAR "
                         "file or in the folders above it; check the path or run from the project folder.") from None


def _from_index(path: Path, index: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Every coordinate file of a coordinate index, one table: rlnMicrographName, rlnCoordinateX/Y, then the
    columns all the files share (e.g. rlnAutopickFigureOfMerit, rlnClassNumber); and the files that are missing.

    A missing coordinate file is skipped (RELION's autopick.star lists every micrograph, also those where
    the picker wrote nothing); when every file is missing the index is refused.
    """
    require_columns(index, ["rlnMicrographName"], path, "coordinate_files")
    parts, missing = [], []
    for i, (mic, name) in enumerate(zip(index["rlnMicrographName"].astype(str),
                                        index["rlnMicrographCoordinates"].astype(str))):
        try:
            file = resolve_path(name, path, row=i + 1)
        except InputError:
            missing.append(name)
            continue
        coords = read_coordinates(file)
        if not np.isfinite(coords[XY].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)).all():
            raise InputError(f"{file} (row {i + 1} of {path}): some particle coordinates are not numbers; fix or "
                             "remove those rows.")
        parts.append(coords.assign(rlnMicrographName=mic))
    if missing and not parts:
        which = (f"its coordinate file {missing[0]} was not found" if len(missing) == 1 else
                 f"none of its {len(missing)} coordinate files was found (first: {missing[0]})")
        raise InputError(f"{path}: {which} in {Path.cwd()}, next to the STAR file or in the folders above it; run "
                         "from the project folder or fix the paths.")
    if not parts:
        return pd.DataFrame(columns=["rlnMicrographName", *XY]), ()
    common = [c for c in parts[0].columns if all(c in t.columns for t in parts) and c not in XY + ["rlnMicrographName"]]
    return pd.concat([t[["rlnMicrographName", *XY, *common]] for t in parts], ignore_index=True), tuple(missing)


def read_positions(path: str | os.PathLike) -> Positions:
    """The particle positions of ``path`` (see the module docstring for the three kinds).

    Raises:
        InputError: a file that is none of the three kinds, a missing column, an index whose
            coordinate files are all missing (some missing are skipped: ``Positions.missing``), or coordinates that are not finite numbers.
    """
    p = Path(path)
    missing: tuple[str, ...] = ()
    loops = {n: b for n, b in read_star(p).items() if isinstance(b, pd.DataFrame)}
    if any("rlnImageName" in b.columns for b in loops.values()):
        kind = "particles"
        _, table = read_particles(p)
        require_columns(table, ["rlnMicrographName", *XY], p, "particles")
    elif any("rlnMicrographCoordinates" in b.columns for b in loops.values()):
        kind = "files"
        table, missing = _from_index(p, next(b for b in loops.values() if "rlnMicrographCoordinates" in b.columns))
    else:
        found = [(n, b) for n, b in loops.items() if "rlnCoordinateX" in b.columns]
        if not found:
            raise InputError(f"{p}: holds no coordinate index (rlnMicrographCoordinates), pick table "
                             "(rlnMicrographName, rlnCoordinateX/Y) or particles (rlnImageName); give the coords.star "
                             "of picking or `cryolens import coords`, or a particles.star.")
        kind = "table"
        block, table = found[0]
        require_columns(table, ["rlnMicrographName", *XY], p, block)
    table = table.copy().reset_index(drop=True)
    table["rlnMicrographName"] = table["rlnMicrographName"].astype(str)
    for c in XY:
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(np.float64)
    if not np.isfinite(table[XY].to_numpy()).all():
        raise InputError(f"{p}: some particle coordinates are not numbers; fix or remove those rows.")
    return Positions(path=path, kind=kind, table=table, missing=missing)


def match_micrographs(names: pd.Series, micrographs: list[str]) -> np.ndarray:
    """Row of ``micrographs`` for each name in ``names`` (``-1`` where none matches).

    A name matches a micrograph with the same name, else the one micrograph with the same
    file stem (``Movies/a.mrc`` and ``MotionCorr/job002/Movies/a.mrc``).
    """
    exact = {m: i for i, m in enumerate(micrographs)}
    stems: dict[str, list[int]] = {}
    for i, m in enumerate(micrographs):
        stems.setdefault(Path(m).stem, []).append(i)
    lookup = {}
    for n in pd.unique(names):
        if n in exact:
            lookup[n] = exact[n]
        else:
            hits = stems.get(Path(n).stem, [])
            lookup[n] = hits[0] if len(hits) == 1 else -1
    return names.map(lookup).to_numpy(dtype=np.int64)
