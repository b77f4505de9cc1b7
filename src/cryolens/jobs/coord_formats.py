"""Readers of particle coordinate files, one function per layout.

One file per micrograph (:func:`read_coordinates`):

* ``relion`` / ``cryolo``: a STAR file with rlnCoordinateX/Y (RELION's ``*_autopick.star``,
  crYOLO's ``STAR/*.star``); its other columns are kept;
* ``cbox``: crYOLO's CBOX, a STAR file whose ``data_cryolo`` loop holds ``_CoordinateX
  _CoordinateY`` = the box's lower-left corner (smallest indices) and ``_Width _Height``, so the
  centre is corner + size/2 (as crYOLO writes it: centre - box/2); ``_Confidence`` is kept;
* ``box``: EMAN ``x y width height`` (lower-left corner + size/2 = centre, as RELION converts it);
* ``xy``: ``x y`` text, particle centres;
* ``plt``: cisTEM's particle-position export, ``row column 1`` per line (``%14.5f``; ``#`` or
  ``C`` starts a comment) with row = height - y/pixel size + 1 and column = x/pixel size + 1
  (1-based, rows from the top), so x = column - 1 and y = height + 1 - row: reading it needs
  the micrograph's height.

One file for many micrographs (:func:`read_pick_list`):

* ``topaz``: ``topaz extract`` output, tab-separated with the header ``image_name x_coord
  y_coord score``; centres in pixels of the micrograph Topaz was given (often downsampled:
  ``--scale`` brings them to the micrographs of the STAR file);
* ``cistem``: the text cisTEM's particle-position import reads, ``micrograph x y`` per line
  with x, y in Å from the micrograph's origin (cisTEM's RELION export writes x/pixel size as
  rlnCoordinateX, which is the conversion used here); ``#`` starts a comment. cisTEM also
  accepts its database asset id instead of the name; that id means nothing outside its
  database, so a name is required here.

All return rlnCoordinateX/Y (pixels, or Å for ``cistem``) and, where the file has a score
(crYOLO confidence, Topaz score), rlnAutopickFigureOfMerit. Every user-fixable problem raises
:class:`cryolens.errors.InputError` with one sentence naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import read_star

__all__ = ["PER_MICROGRAPH", "PICK_LISTS", "detect_format", "read_coordinates", "read_pick_list", "match_names"]

XY = ["rlnCoordinateX", "rlnCoordinateY"]
FOM = "rlnAutopickFigureOfMerit"
PER_MICROGRAPH = ("relion", "cryolo", "box", "xy", "cbox", "plt")
PICK_LISTS = ("topaz", "cistem")
TOPAZ_HEADER = ["image_name", "x_coord", "y_coord"]


def _lines(path: Path) -> list[str]:
    """The non-blank lines of a text file (raises when the file is missing or holds nothing)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path.")
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{path}: the file is empty; give a coordinate file with picks.")
    return lines


def detect_format(path: str | os.PathLike) -> str:
    """The format of a coordinate file from its extension (``.star``, ``.cbox``, ``.box``, ``.plt``), a Topaz
    header (``image_name x_coord y_coord``), else ``xy``; cisTEM text is never guessed."""
    p = Path(path)
    suffix = p.suffix.lower()
    kinds = {".star": "relion", ".cbox": "cbox", ".box": "box", ".plt": "plt"}
    if suffix in kinds:
        return kinds[suffix]
    if p.is_file():
        with p.open(errors="replace") as f:
            first = next((ln for ln in f if ln.strip()), "")
        if first.split()[:3] == TOPAZ_HEADER:
            return "topaz"
    return "xy"


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


def _numbers(table: pd.DataFrame, columns: list[str], path: Path) -> pd.DataFrame:
    """``columns`` of ``table`` as float64 (raises when one holds something that is not a finite number)."""
    for c in columns:
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(np.float64)
    if not np.isfinite(table[columns].to_numpy()).all():
        raise InputError(f"{path}: some coordinates are not numbers; fix the file.")
    return table


def _read_cbox(p: Path) -> pd.DataFrame:
    """Centres (corner + size/2) and confidences of a crYOLO CBOX file."""
    if not p.is_file() or p.stat().st_size == 0:
        _lines(p)
    blocks = {n: b for n, b in read_star(p).items() if isinstance(b, pd.DataFrame)}
    loop = blocks.get("cryolo")
    if loop is None:
        loop = next((b for b in blocks.values() if "CoordinateX" in b.columns), None)
    need = ["CoordinateX", "CoordinateY", "Width", "Height"]
    if loop is None or any(c not in loop.columns for c in need):
        raise InputError(f"{p}: no data_cryolo loop with _CoordinateX _CoordinateY _Width _Height; give a crYOLO "
                         "CBOX file or choose another --format.")
    if "CoordinateZ" in loop.columns and np.isfinite(pd.to_numeric(loop["CoordinateZ"], errors="coerce")).any():
        raise InputError(f"{p}: holds 3D picks (_CoordinateZ) of a tomogram; give the CBOX files of micrographs.")
    t = _numbers(loop[need].copy(), need, p)
    out = pd.DataFrame({"rlnCoordinateX": t["CoordinateX"] + t["Width"] / 2,
                        "rlnCoordinateY": t["CoordinateY"] + t["Height"] / 2})
    if "Confidence" in loop.columns:
        conf = pd.to_numeric(loop["Confidence"], errors="coerce").astype(np.float64)
        if np.isfinite(conf.to_numpy()).all():
            out[FOM] = conf.to_numpy()
    return out.reset_index(drop=True)


def _read_plt(p: Path, height: int | None) -> pd.DataFrame:
    """Centres of a cisTEM ``.plt`` export (``row column 1``, 1-based, rows from the top)."""
    if height is None:
        raise InputError(f"{p}: a cisTEM .plt file counts rows from the top of its micrograph, whose height is not "
                         "known here; import it with `cryolens import coords` next to readable micrographs.")
    rows = [ln.split() for ln in _lines(p) if not ln.lstrip().startswith(("#", "C"))]
    try:
        if any(len(r) < 2 for r in rows):
            raise ValueError
        a = np.array([r[:2] for r in rows], dtype=np.float64).reshape(-1, 2)
    except ValueError:
        raise InputError(f"{p}: expected cisTEM's 'row column 1' numbers on every line; fix the file.") from None
    return pd.DataFrame({"rlnCoordinateX": a[:, 1] - 1.0, "rlnCoordinateY": height + 1.0 - a[:, 0]})


def read_coordinates(path: str | os.PathLike, fmt: str = "auto", *, height: int | None = None) -> pd.DataFrame:
    """Particle centres in pixels of one micrograph from a file of format ``fmt`` (see the module docstring).

    ``height``: the micrograph's number of rows [px], needed by ``plt`` only.
    Returns rlnCoordinateX/Y (+ the other columns of a STAR file, or rlnAutopickFigureOfMerit
    from a CBOX confidence).

    Raises:
        InputError: a missing or unreadable file, missing columns, or a format holding many micrographs.
    """
    p = Path(path)
    fmt = detect_format(p) if fmt == "auto" else fmt
    if fmt in PICK_LISTS:
        raise InputError(f"{p}: a {fmt} file holds the picks of many micrographs; import it with "
                         f"`cryolens import coords --format {fmt}` first.")
    if fmt in ("relion", "cryolo"):
        loops = [b for b in read_star(p).values() if isinstance(b, pd.DataFrame) and "rlnCoordinateX" in b.columns]
        if not loops or "rlnCoordinateY" not in loops[0].columns:
            raise InputError(f"{p}: no table with rlnCoordinateX and rlnCoordinateY; give a RELION coordinate file.")
        table = loops[0].copy()
        for c in XY:
            table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
        return table
    if fmt == "cbox":
        return _read_cbox(p)
    if fmt == "plt":
        return _read_plt(p, height)
    if fmt == "box":
        rows = _numeric_table(p, 4, "x y width height")
        return pd.DataFrame({"rlnCoordinateX": rows[:, 0] + rows[:, 2] / 2,
                             "rlnCoordinateY": rows[:, 1] + rows[:, 3] / 2})
    rows = _numeric_table(p, 2, "x y")
    return pd.DataFrame({"rlnCoordinateX": rows[:, 0], "rlnCoordinateY": rows[:, 1]})


def _read_topaz(p: Path) -> pd.DataFrame:
    lines = _lines(p)
    split = (lambda s: s.rstrip("\r\n").split("\t")) if "\t" in lines[0] else str.split
    header = [h.strip() for h in split(lines[0])]
    if header[:3] != TOPAZ_HEADER:
        raise InputError(f"{p}: the first line is not Topaz's header 'image_name x_coord y_coord score'; give the "
                         "output of `topaz extract` or choose another --format.")
    rows = [split(ln) for ln in lines[1:]]
    bad = next((i for i, r in enumerate(rows) if len(r) < len(header)), None)
    if bad is not None:
        raise InputError(f"{p}: line {bad + 2} has fewer than the {len(header)} columns of the header; fix the file.")
    t = pd.DataFrame([r[:len(header)] for r in rows], columns=header)
    out = pd.DataFrame({"rlnMicrographName": t["image_name"].str.strip().astype(str),
                        "rlnCoordinateX": t["x_coord"], "rlnCoordinateY": t["y_coord"]})
    cols = list(XY)
    if "score" in t.columns:
        out[FOM] = t["score"]
        cols.append(FOM)
    return _numbers(out, cols, p)


def _read_cistem(p: Path) -> pd.DataFrame:
    rows = []
    for i, line in enumerate(_lines(p)):
        tokens = line.split("#")[0].split()
        if not tokens:
            continue
        if len(tokens) < 3:
            raise InputError(f"{p}: line {i + 1} holds {len(tokens)} values, not 'micrograph x y' (Å); fix the file.")
        if tokens[0].isdigit():
            raise InputError(f"{p}: line {i + 1} names its micrograph by a cisTEM asset id ({tokens[0]}), which "
                             "means nothing outside cisTEM's database; write the micrograph's file name instead.")
        rows.append(tokens[:3])
    t = pd.DataFrame(rows, columns=["rlnMicrographName", *XY])
    return _numbers(t, XY, p)


def read_pick_list(path: str | os.PathLike, fmt: str) -> pd.DataFrame:
    """The picks of a file holding many micrographs (``topaz`` or ``cistem``).

    Returns rlnMicrographName (as the file names it), rlnCoordinateX/Y (pixels of the micrograph
    the picks were made on for ``topaz``; Å for ``cistem``) and, for Topaz, rlnAutopickFigureOfMerit
    (its score).

    Raises:
        InputError: an empty file, a missing header or column, or values that are not numbers.
    """
    p = Path(path)
    if fmt not in PICK_LISTS:
        raise ValueError(f"read_pick_list: {fmt!r} is not one of {PICK_LISTS}")
    t = _read_topaz(p) if fmt == "topaz" else _read_cistem(p)
    if t.empty:
        raise InputError(f"{p}: holds no picks; nothing to import.")
    return t


def match_names(names: list[str], micrographs: list[str], path: str | os.PathLike,
                star: str | os.PathLike) -> list[str]:
    """The micrograph (an entry of ``micrographs``) each of ``names`` means.

    A name matches the micrograph of the same name, else the one with the same file name,
    else the one with the same stem (Topaz names micrographs by their stem).

    Raises:
        InputError: a name that matches no micrograph of ``star``, or several.
    """
    full = set(micrographs)
    by_base: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for m in micrographs:
        by_base.setdefault(Path(m).name, []).append(m)
        by_stem.setdefault(Path(m).stem, []).append(m)
    out = {}
    for n in dict.fromkeys(names):
        if n in full:
            out[n] = n
            continue
        hits = by_base.get(Path(n).name) or by_stem.get(Path(n).name) or by_stem.get(Path(n).stem) or []
        if len(hits) != 1:
            why = "is not in" if not hits else "matches several micrographs of"
            raise InputError(f"{path}: micrograph {n} {why} {star}; give the right --micrographs or fix the names.")
        out[n] = hits[0]
    return [out[n] for n in names]
