"""cryoSPARC ``.cs`` files (numpy record arrays) through cryosparc-tools' :class:`cryosparc.dataset.Dataset`.

A ``.cs`` file holds one row per item (particle) with a ``uid`` and fields named ``group/name``
(``blob/path``, ``ctf/df1_A``, ``alignments3D/pose`` ...). A cryoSPARC job writes its own results in
``JNN_particles.cs`` and the fields it passed on unchanged in ``*_passthrough_*.cs`` beside it; the two
join on ``uid`` (:func:`join_passthrough`). Units are cryoSPARC's: Å, radians, kV, mm, pixels for
shifts. The conversion to RELION columns lives in :mod:`cryolens.jobs.cryosparc_tables`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from cryosparc.dataset import Dataset

from cryolens.errors import InputError
from cryolens.io.atomic import atomic_output

__all__ = ["Dataset", "read_cs", "write_cs", "require_fields", "find_passthroughs", "join_passthrough"]

PathLike = str | os.PathLike


def read_cs(path: PathLike) -> Dataset:
    """Read a ``.cs`` file; a missing, empty, truncated or non-``.cs`` file raises one-sentence InputError."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found; check the path.")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty; re-export it from cryoSPARC.")
    try:
        ds = Dataset.load(p)
    except Exception:  # noqa: BLE001 - DatasetLoadError, ValueError, numpy errors: all mean a bad file
        raise InputError(f"{p}: not a readable cryoSPARC .cs file (truncated or another format); re-export it "
                         "from cryoSPARC (Export or the job's Outputs tab).") from None
    return ds


def require_fields(ds: Dataset, fields: tuple[str, ...], path: PathLike, *, hint: str) -> None:
    """InputError naming ``path`` and the first field of ``fields`` that ``ds`` lacks (``hint``: the fix)."""
    have = set(ds.fields())
    missing = [f for f in fields if f not in have]
    if missing:
        raise InputError(f"{Path(path)}: has no field {missing[0]} ({len(missing)} of {', '.join(fields)} missing); "
                         f"{hint}")


def find_passthroughs(path: PathLike) -> list[Path]:
    """The ``*_passthrough_*.cs`` files beside ``path`` (cryoSPARC's name for a job's passed-on fields), sorted."""
    p = Path(path)
    return sorted(q for q in p.parent.glob("*passthrough*.cs") if q.is_file() and q.resolve() != p.resolve())


def join_passthrough(ds: Dataset, others: list[tuple[Path, Dataset]], path: PathLike, *,
                     strict: bool) -> tuple[Dataset, list[Path]]:
    """``ds`` with the fields it lacks taken from each passthrough in ``others`` (matched by ``uid``).

    ``strict`` (passthroughs the user named): one that does not hold every uid of ``ds`` is an InputError;
    otherwise (found beside the file) it is skipped. Returns the joined dataset and the files used.
    """
    used: list[Path] = []
    uids = np.asarray(ds["uid"])
    for where, other in others:
        new = [d for d in other.descr() if d[0] not in ds.fields()]
        if not new:
            continue
        theirs = np.asarray(other["uid"])
        order = np.argsort(theirs, kind="stable")
        pos = np.searchsorted(theirs, uids, sorter=order)
        pos = np.minimum(pos, max(len(theirs) - 1, 0))
        rows = order[pos] if len(theirs) else pos
        if len(theirs) == 0 or not (theirs[rows] == uids).all():
            if strict:
                raise InputError(f"{where}: does not hold every particle of {Path(path).name} (uids differ); give "
                                 f"the passthrough file of the same cryoSPARC job.")
            continue
        ds = ds.add_fields(new)
        for d in new:  # the main file's row order is kept
            ds[d[0]] = np.asarray(other[d[0]])[rows]
        used.append(where)
    return ds, used


def write_cs(path: PathLike, ds: Dataset) -> None:
    """Write ``ds`` as a ``.cs`` file atomically (a temporary name renamed into place)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            ds.save(f)
