"""Checks every recorded output of a job passes before the job may say SUCCESS.

* MRC/MRCS/MAP files: the file is as long as its header says (header + extended header + nx·ny·nz
  voxels of its mode) and, for float modes, holds no NaN or Inf. The data are memory-mapped and read in
  chunks of :data:`CHUNK_BYTES`, so memory stays bounded whatever the file's size.
* STAR files: every ``data_particles``, ``data_micrographs`` or ``data_movies`` table has at least one
  row (those tables exist to list something; an empty one means nothing was produced). The text is
  streamed and reading stops at the first row of each such table.
* Every recorded output file exists.

:func:`check_outputs` returns the first problem as one sentence naming the file, or None.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

__all__ = ["check_outputs", "check_mrc", "check_star", "CHUNK_BYTES", "ROW_TABLES"]

CHUNK_BYTES = 64 * 2**20
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".ali")
#: STAR tables that must hold at least one row.
ROW_TABLES = ("particles", "micrographs", "movies")


def check_outputs(outputs: Mapping[str, str | os.PathLike], *, empty_ok: Collection[str] = ()) -> str | None:
    """The first problem among the recorded outputs (one sentence naming the file), or None when all pass.

    ``empty_ok``: names of STAR outputs whose tables may be empty (not checked for rows).
    """
    for name, value in outputs.items():
        p = Path(value)
        if not p.exists():
            return f"{p}: output {name} was recorded but not written"
        if not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix in MRC_SUFFIXES:
            problem = check_mrc(p)
        else:
            problem = check_star(p) if suffix == ".star" and name not in empty_ok else None
        if problem:
            return problem
    return None


def check_mrc(path: str | os.PathLike) -> str | None:
    """Size as the header says and no NaN/Inf (float modes), in bounded memory; a problem sentence or None."""
    import mrcfile
    from mrcfile.utils import data_dtype_from_header

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(p, header_only=True, permissive=True) as m:
                h = m.header
                shape = (int(h.nz), int(h.ny), int(h.nx))
                dtype = data_dtype_from_header(h)
                offset = 1024 + int(h.nsymbt)
    except Exception as e:  # noqa: BLE001 - any unreadable header is the problem reported
        return f"{p}: the written MRC header cannot be read ({type(e).__name__}: {e})"
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = p.stat().st_size
    if size != expected:
        return (f"{p}: is {size} bytes but its header ({shape[2]}x{shape[1]}x{shape[0]} {dtype.name}) says "
                f"{expected}")
    if dtype.kind not in "fc" or expected == offset:
        return None
    data = np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=(int(np.prod(shape)),))
    step = max(1, CHUNK_BYTES // dtype.itemsize)
    try:
        for start in range(0, data.shape[0], step):
            chunk = data[start:start + step]
            if not np.isfinite(chunk).all():
                bad = int((~np.isfinite(chunk)).sum())
                return (f"{p}: holds non-finite values (NaN or Inf; {bad} in the chunk from value {start}); "
                        "the computation diverged, check the parameters")
    finally:
        del data
    return None


_BLOCK = re.compile(r"^data_(\S*)\s*$")


def check_star(path: str | os.PathLike) -> str | None:
    """Every :data:`ROW_TABLES` block of a STAR file has at least one row; a problem sentence or None."""
    p = Path(path)
    block: str | None = None
    rows = 0
    in_loop = False
    empty: list[str] = []
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                text = line.strip()
                m = _BLOCK.match(text)
                if m:
                    if block in ROW_TABLES and rows == 0:
                        empty.append(block)
                    block, rows, in_loop = m.group(1), 0, False
                    continue
                if block not in ROW_TABLES or rows or not text or text.startswith("#"):
                    continue
                if text.startswith("loop_"):
                    in_loop = True
                elif not text.startswith("_") or not in_loop:  # a loop row, or a key-value pair
                    rows = 1
    except OSError as e:
        return f"{p}: the written STAR file cannot be read ({e})"
    if block in ROW_TABLES and rows == 0:
        empty.append(block)
    if empty:
        return f"{p}: its data_{empty[0]} table has no rows; nothing was produced, check the inputs and options"
    return None
