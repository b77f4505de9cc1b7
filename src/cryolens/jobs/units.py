"""Per-micrograph units that resume: fingerprints, unique output names, a results JSON written last.

A per-micrograph job (motion, ctf; picking and extraction next) maps one function over
units, one per movie or micrograph, through a compute backend. Each unit writes its
files atomically and then, LAST, a small results JSON carrying the unit's fingerprint
and the names of its files. A rerun with the same inputs and parameters finds that JSON,
sees the same fingerprint and every file present, and takes the recorded results
instead of computing again; a unit killed half-way has no JSON and is redone. How a
stage uses it::

    stems = unique_stems(paths)                      # one output name per micrograph
    key = fingerprint({"params": asdict(params), "pixel_size": apix}, files=[path])
    record = UnitRecord(str(out / "picks" / f"{stem}.json"), key)   # picklable, in the unit

    def pick_unit(unit):                             # runs on a worker
        done = unit.record.done()
        if done is not None:
            return {**done, "reused": True}
        ...                                          # compute, write the outputs atomically
        return {**unit.record.finish({"n": n}, outputs=[coords_path, png_path]), "reused": False}

The fingerprint covers what the caller puts in ``data`` plus each input file's resolved
path, size and modification time (ns): a file changed in place gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryolens.errors import InputError
from cryolens.io.atomic import write_json_atomic
from cryolens.io.mrc import read_mrc_header

__all__ = ["UnitRecord", "file_stamp", "fingerprint", "unique_stems", "PIXEL_TOLERANCE", "check_pixel_size",
           "check_micrograph_header"]

#: Relative disagreement between a micrograph header's pixel size and its optics group's that is an error.
PIXEL_TOLERANCE = 0.02


def file_stamp(path: str | os.PathLike) -> list:
    """A file's identity for fingerprints: ``[resolved path, size in bytes, mtime in ns]``."""
    p = Path(path)
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def fingerprint(data: Mapping[str, Any], *, files: Sequence[str | os.PathLike] = ()) -> str:
    """SHA-1 hex digest of ``data`` (JSON with sorted keys; other objects by ``str``) and of the
    :func:`file_stamp` of each input file in ``files`` (in the order given)."""
    payload = {"data": data, "files": [file_stamp(f) for f in files]}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def unique_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One output name per input file, in order: its stem (``a/mic_01.mrc`` -> ``mic_01``); stems
    that occur more than once get their parent folder's name in front (``a_mic_01``, ``b_mic_01``),
    and names still equal a counter after them (``a_mic_01_2``)."""
    stems = [Path(p).stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out: list[str] = []
    used: set[str] = set()
    for p, s in zip(paths, stems):
        parent = Path(p).parent.name
        name = f"{parent}_{s}" if counts[s] > 1 and parent else s
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        out.append(name)
    return out


@dataclass(frozen=True)
class UnitRecord:
    """The results JSON of one unit (``path``) and the fingerprint (``key``) it must carry to count as done.

    The JSON holds ``{"key": ..., "files": [names of the unit's outputs relative to the JSON's
    folder], **results}``.
    """

    path: str
    key: str

    def done(self) -> dict | None:
        """The recorded results (without ``key`` and ``files``) when the JSON exists, parses, carries
        this fingerprint and every file it lists exists; else None (the unit must run)."""
        p = Path(self.path)
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("key") != self.key:
            return None
        files = rec.get("files")
        if not isinstance(files, list) or not all((p.parent / str(f)).is_file() for f in files):
            return None
        return {k: v for k, v in rec.items() if k not in ("key", "files")}

    def finish(self, results: Mapping[str, Any], outputs: Iterable[str | os.PathLike] = ()) -> dict:
        """Write the JSON atomically; call it LAST, after every file in ``outputs`` is in place.
        Returns ``results`` as a dict (what :meth:`done` gives back on a rerun)."""
        p = Path(self.path)
        names = [os.path.relpath(Path(f).absolute(), p.parent.absolute()) for f in outputs]
        record = {"key": self.key, "files": names, **results}
        write_json_atomic(p, record)
        return dict(results)


def check_pixel_size(path: str | os.PathLike, header_apix: float, apix: float,
                     label: str = "rlnMicrographPixelSize") -> None:
    """One policy for every stage: an image header's pixel size (0 = unset) that disagrees with the optics
    group's (``label``) by more than :data:`PIXEL_TOLERANCE` is an InputError naming both values and the fix."""
    if header_apix > 0 and abs(header_apix - apix) > PIXEL_TOLERANCE * apix:
        raise InputError(f"{path}: the header pixel size {header_apix:.4f} Å disagrees with {label} {apix:.4f} Å of "
                         "its optics group; correct the STAR file's optics (or the MRC header).")


def check_micrograph_header(path: Path, apix: float) -> tuple[int, int]:
    """``(rows, columns)`` of a micrograph from its header alone (cheap, before a job starts): one image, not
    truncated (:func:`cryolens.io.mrc.read_mrc_header` compares the file size), its pixel size as the optics say
    (:func:`check_pixel_size`); InputError naming the file otherwise."""
    info = read_mrc_header(path)
    nz, ny, nx = info.shape
    if nz != 1:
        raise InputError(f"{path}: holds {nz} images, not one micrograph; give single-image micrographs in "
                         "rlnMicrographName.")
    check_pixel_size(path, info.voxel_size, apix)
    return ny, nx
