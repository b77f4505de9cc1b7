"""RELION STAR files (starfile): reading any RELION version, writing RELION 3.1.

Tables are pandas DataFrames with RELION column names (no leading underscore).
Units follow RELION 3.1: pixel sizes and shifts (``rlnOriginXAngst``) in Å, voltage in
kV, Cs in mm, defocus in Å, angles in degrees. RELION 3.0 files (one table, no optics)
are upgraded to 3.1 form (optics + table) on read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import starfile

from cryolens.errors import InputError
from cryolens.io.atomic import write_text_atomic

__all__ = [
    "StarBlock", "read_star", "write_star", "read_particles", "read_micrographs",
    "write_particles", "write_micrographs", "merge_optics", "require_columns", "require_finite", "INT_LABELS",
]

PathLike = str | os.PathLike
StarBlock = pd.DataFrame | dict[str, Any]  # loop block | simple (key value) block

#: Columns moved from a RELION 3.0 table to the optics table on upgrade.
OPTICS_LABELS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnBeamTiltX", "rlnBeamTiltY")
#: RELION labels holding integers; kept integer on write.
INT_LABELS = frozenset({
    "rlnOpticsGroup", "rlnRandomSubset", "rlnImageSize", "rlnImageDimensionality", "rlnClassNumber",
    "rlnGroupNumber", "rlnNrOfSignificantSamples", "rlnNrOfFrames", "rlnCtfDataAreCtfPremultiplied",
    "rlnMicrographFrameNumber", "rlnHelicalTubeID", "rlnSpectralIndex", "rlnMicrographId",
    "rlnAutopickClassNumber", "rlnTomoSubtomogramBinning", "rlnImageId", "rlnMotionModelVersion",
    "rlnMicrographBinning", "rlnEERUpsampling", "rlnEERGrouping", "rlnGroupNrParticles",
})
#: RELION labels holding text, never parsed as numbers (a micrograph may be named "1").
STRING_LABELS = [
    "rlnImageName", "rlnImageOriginalName", "rlnMicrographName", "rlnMicrographMovieName",
    "rlnMicrographOriginalName", "rlnOpticsGroupName", "rlnCtfImage", "rlnMicrographMetadata",
    "rlnMicrographGainName", "rlnMicrographDefectFile", "rlnMtfFileName", "rlnReferenceImage",
    "rlnMicrographCoordinates", "rlnTomoName",
]
#: Optics values that are real numbers even when a file writes "300".
FLOAT_LABELS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                "rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize", "rlnBeamTiltX", "rlnBeamTiltY")
_VERSION_LINE = "# version 30001"
#: Optics values checked on read: label -> (lower bound or None, whether the bound itself is allowed,
#: exclusive upper bound or None, unit).
OPTICS_BOUNDS = {
    "rlnVoltage": (0.0, False, None, "kV"),
    "rlnImagePixelSize": (0.0, False, None, "Å"),
    "rlnMicrographPixelSize": (0.0, False, None, "Å"),
    "rlnMicrographOriginalPixelSize": (0.0, False, None, "Å"),
    "rlnSphericalAberration": (None, True, None, "mm"),
    "rlnAmplitudeContrast": (0.0, True, 1.0, ""),
}


def read_star(path: PathLike) -> dict[str, StarBlock]:
    """Read every data block of a STAR file.

    Returns:
        ``{block name without "data_": DataFrame (loop) or dict (simple block)}``.

    Raises:
        InputError: the file is missing, unparseable or has no data block.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: file not found; check the path.")
    try:
        blocks = starfile.read(p, always_dict=True, parse_as_string=STRING_LABELS)
    except Exception as e:  # starfile / pandas raise many types on malformed text
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: could not be parsed as a STAR file ({detail}); "
                         "check that it is a complete STAR file.") from None
    if not blocks:
        raise InputError(f"{path}: contains no data_ block; check that it is a STAR file.")
    return dict(blocks)


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: PathLike, block: str) -> None:
    """Raise InputError naming the file, block and missing columns if any are absent."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        one = len(missing) == 1
        what = f"column {missing[0]} is" if one else f"columns {', '.join(missing)} are"
        raise InputError(f"{path}: {what} missing from data_{block}; add {'it' if one else 'them'} "
                         "or re-run the job that made this file.")


def require_finite(df: pd.DataFrame, columns: Iterable[str], path: PathLike, block: str) -> None:
    """Raise InputError naming the file, block, column and first bad row when one of ``columns`` (those
    present in ``df``) holds a value that is not a finite number (text, NaN, infinity)."""
    for c in columns:
        if c not in df.columns:
            continue
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path}: column {c} of data_{block} holds {df[c].iloc[row]!r} in row {row + 1}, "
                             "not a finite number; fix or remove that row.")


def _check_optics_values(optics: pd.DataFrame, path: PathLike) -> None:
    """Optics values a microscope can have (:data:`OPTICS_BOUNDS`); InputError naming the file otherwise."""
    require_finite(optics, OPTICS_BOUNDS, path, "optics")
    for label, (low, low_ok, high, unit) in OPTICS_BOUNDS.items():
        if label not in optics.columns:
            continue
        values = optics[label].astype(np.float64).to_numpy()
        bad = np.zeros(len(values), bool)
        if low is not None:
            bad |= values < low if low_ok else values <= low
        if high is not None:
            bad |= values >= high
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            rule = " and ".join(r for r in (
                None if low is None else f"{'≥' if low_ok else '>'} {low:g}",
                None if high is None else f"< {high:g}") if r)
            raise InputError(f"{path}: data_optics gives {label} {values[row]:g}{' ' + unit if unit else ''} in row "
                             f"{row + 1}; it must be {rule}; fix the optics table.")


def _int_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Cast integer RELION labels held as whole floats back to int64."""
    for c in df.columns:
        if c in INT_LABELS and pd.api.types.is_float_dtype(df[c]):
            v = df[c].to_numpy()
            if np.all(np.isfinite(v)) and np.all(v == np.round(v)):
                df[c] = v.astype(np.int64)
    return df


def _finish(optics: pd.DataFrame, table: pd.DataFrame, path: PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    _check_optics_values(optics, path)
    for c in FLOAT_LABELS:
        if c in optics.columns and pd.api.types.is_numeric_dtype(optics[c]):
            optics[c] = optics[c].astype(np.float64)
    return _int_columns(optics), _int_columns(table)


def _pick_table(loops: dict[str, pd.DataFrame], names: tuple[str, ...], key: str, path: PathLike,
                all_names: Iterable[str]) -> tuple[str, pd.DataFrame]:
    """The data table: a block with an expected name, else the one loop holding ``key``."""
    for n in names:
        if n in loops:
            return n, loops[n]
    with_key = [n for n, df in loops.items() if key in df.columns]
    if len(with_key) == 1:
        return with_key[0], loops[with_key[0]]
    found = ", ".join(f"data_{n}" for n in all_names) or "none"
    raise InputError(f"{path}: no data_{names[0]} table with {key} found (blocks: {found}); "
                     f"give a RELION {names[0]} STAR file.")


def _upgrade(table: pd.DataFrame, *, kind: str, path: PathLike, pixel_size: float | None,
             image_size: int | None, block: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.0 table -> (optics, table) in RELION 3.1 form, as ``relion_convert_star`` does."""
    t = table.copy()
    pix_label = "rlnImagePixelSize" if kind == "particles" else "rlnMicrographPixelSize"
    require_finite(t, ("rlnImagePixelSize", "rlnMicrographPixelSize", "rlnDetectorPixelSize", "rlnMagnification",
                       "rlnOriginX", "rlnOriginY", "rlnOriginZ"), path, block)
    given = [c for c in (pix_label, "rlnImagePixelSize", "rlnMicrographPixelSize") if c in t.columns]
    if given:
        apix = t[given[0]].astype(float).to_numpy()
    elif "rlnDetectorPixelSize" in t.columns and "rlnMagnification" in t.columns:
        # detector pixel size in µm, magnification dimensionless -> Å
        apix = t["rlnDetectorPixelSize"].astype(float).to_numpy() * 1e4 / t["rlnMagnification"].astype(float).to_numpy()
    elif pixel_size is not None:
        apix = np.full(len(t), float(pixel_size))
    else:
        raise InputError(f"{path}: no pixel size (rlnImagePixelSize, or rlnDetectorPixelSize with rlnMagnification); "
                         "add the column or give the pixel size in Å.")
    apix = np.round(apix, 6)
    t = t.drop(columns=[c for c in ("rlnImagePixelSize", "rlnMicrographPixelSize", "rlnDetectorPixelSize",
                                    "rlnMagnification") if c in t.columns])
    t["_apix"] = apix
    keys = [c for c in ("rlnOpticsGroup", *OPTICS_LABELS) if c in t.columns] + ["_apix"]
    combos = t[keys].drop_duplicates().reset_index(drop=True)
    if "rlnOpticsGroup" in t.columns and combos["rlnOpticsGroup"].is_unique:
        combos["_group"] = combos["rlnOpticsGroup"].astype(np.int64)
    else:
        combos["_group"] = np.arange(1, len(combos) + 1, dtype=np.int64)
    group = t[keys].merge(combos, on=keys, how="left")["_group"].to_numpy()
    optics = pd.DataFrame({"rlnOpticsGroup": combos["_group"].to_numpy(),
                           "rlnOpticsGroupName": [f"opticsGroup{g}" for g in combos["_group"]]})
    for c in keys:
        if c not in ("rlnOpticsGroup", "_apix"):
            optics[c] = combos[c].to_numpy()
    optics[pix_label] = combos["_apix"].to_numpy()
    if kind == "particles" and image_size is not None:
        optics["rlnImageSize"] = int(image_size)
        optics["rlnImageDimensionality"] = 2
    t = t.drop(columns=[c for c in keys if c != "rlnOpticsGroup"])
    t["rlnOpticsGroup"] = group
    if kind == "particles":
        for axis in "XYZ":
            old = f"rlnOrigin{axis}"
            if old in t.columns:
                t.insert(t.columns.get_loc(old), f"{old}Angst", t[old].astype(float).to_numpy() * apix)
                t = t.drop(columns=[old])
    return optics, t


def _read_relion(path: PathLike, *, kind: str, names: tuple[str, ...], key: str,
                 pixel_size: float | None, image_size: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    blocks = read_star(path)
    loops = {n: b for n, b in blocks.items() if isinstance(b, pd.DataFrame)}
    if "optics" not in loops:
        name, table = _pick_table(loops, names, key, path, blocks)
        return _finish(*_upgrade(table, kind=kind, path=path, pixel_size=pixel_size, image_size=image_size,
                                 block=name), path)
    others = {n: b for n, b in loops.items() if n != "optics"}
    name, table = _pick_table(others, names, key, path, blocks)
    optics, table = loops["optics"].copy(), table.copy()
    require_columns(optics, ["rlnOpticsGroup"], path, "optics")
    if "rlnOpticsGroup" not in table.columns:
        if len(optics) != 1:
            require_columns(table, ["rlnOpticsGroup"], path, name)
        table["rlnOpticsGroup"] = optics["rlnOpticsGroup"].iloc[0]
    unknown = sorted(set(table["rlnOpticsGroup"].tolist()) - set(optics["rlnOpticsGroup"].tolist()))
    if unknown:
        raise InputError(f"{path}: data_{name} uses optics group(s) {', '.join(map(str, unknown))} that data_optics "
                         "does not define; add them to data_optics or fix rlnOpticsGroup.")
    pix_label = "rlnImagePixelSize" if kind == "particles" else "rlnMicrographPixelSize"
    if pix_label not in optics.columns:
        if kind == "micrographs" and name == "movies" and "rlnMicrographOriginalPixelSize" in optics.columns:
            optics[pix_label] = optics["rlnMicrographOriginalPixelSize"]
        elif pixel_size is not None:
            optics[pix_label] = float(pixel_size)
        else:
            require_columns(optics, [pix_label], path, "optics")
    if kind == "particles" and image_size is not None and "rlnImageSize" not in optics.columns:
        optics["rlnImageSize"] = int(image_size)
    if "rlnOpticsGroupName" not in optics.columns:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    return _finish(optics, table, path)


def read_particles(path: PathLike, *, pixel_size: float | None = None,
                   image_size: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a particle STAR file of any RELION version as ``(optics, particles)`` in 3.1 form.

    Args:
        path: STAR file; RELION 3.1+ (``data_optics`` + ``data_particles``, any order) or
            3.0 (one table under any block name).
        pixel_size: Å per pixel to use when the file gives none.
        image_size: box size in pixels, added to optics (``rlnImageSize``) when missing.

    Returns:
        optics with ``rlnOpticsGroup``, ``rlnOpticsGroupName``, ``rlnImagePixelSize`` (Å) and
        whatever else the file has; particles with ``rlnOpticsGroup`` and shifts in Å.

    Raises:
        InputError: the file cannot be read, lacks the table or the pixel size, or its optics hold
            impossible values (:data:`OPTICS_BOUNDS`: a voltage or pixel size that is not > 0, ...).
    """
    return _read_relion(path, kind="particles", names=("particles", "images"), key="rlnImageName",
                        pixel_size=pixel_size, image_size=image_size)


def read_micrographs(path: PathLike, *, pixel_size: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a micrograph or movie STAR file as ``(optics, micrographs)`` in RELION 3.1 form.

    Optics carries ``rlnMicrographPixelSize`` (Å); for a ``data_movies`` file lacking it,
    ``rlnMicrographOriginalPixelSize`` is used. ``pixel_size`` (Å) fills it when absent.
    Impossible optics values (:data:`OPTICS_BOUNDS`) raise InputError as in :func:`read_particles`.
    """
    return _read_relion(path, kind="micrographs", names=("micrographs", "movies"), key="rlnMicrographName",
                        pixel_size=pixel_size, image_size=None)


def merge_optics(optics: pd.DataFrame, particles: pd.DataFrame) -> pd.DataFrame:
    """Per-row table: ``particles`` plus its optics group's columns (voltage, Cs, Q0, pixel size...).

    Row order and index of ``particles`` are kept; particle columns win over optics
    columns of the same name.
    """
    for df, what in ((optics, "optics"), (particles, "particle")):
        if "rlnOpticsGroup" not in df.columns:
            raise InputError(f"the {what} table has no rlnOpticsGroup column; "
                             "read it with read_particles or add the column.")
    table = optics.set_index("rlnOpticsGroup")
    if not table.index.is_unique:
        raise InputError("the optics table defines an optics group twice; give each rlnOpticsGroup one row.")
    groups = particles["rlnOpticsGroup"]
    unknown = sorted(set(groups.tolist()) - set(table.index.tolist()))
    if unknown:
        raise InputError(f"particles use optics group(s) {', '.join(map(str, unknown))} that the optics table does not "
                         "define; add them to data_optics.")
    out = particles.copy()
    for c in table.columns:
        if c not in out.columns:
            out[c] = groups.map(table[c]).to_numpy()
    return out


def _float_text(x: float) -> str:
    """Shortest text that reads back as the same float (RELION reads any of these)."""
    return repr(float(x))


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        s = out[c]
        if s.dtype == np.float32:  # shortest float32 text, not 0.10000000149
            out[c] = pd.to_numeric(s.astype(str))
        elif s.dtype == bool:
            out[c] = s.astype(np.int64)
    return _int_columns(out)


def write_star(path: PathLike, blocks: dict[str, StarBlock]) -> None:
    """Write STAR blocks atomically, each preceded by RELION 3.1's ``# version 30001`` line.

    ``blocks`` maps block names (with or without ``data_``) to DataFrames (loops) or
    dicts (simple blocks), written in the given order.
    """
    parts = []
    for name, block in blocks.items():
        name = name[5:] if name.startswith("data_") else name
        data = _prepare(block) if isinstance(block, pd.DataFrame) else dict(block)
        text = starfile.to_string({name: data}, float_format=_float_text)  # type: ignore[arg-type]
        parts.append(f"{_VERSION_LINE}\n\n{text[text.index('data_'):]}")
    write_text_atomic(path, "\n" + "".join(parts))


def _check_optics(optics: pd.DataFrame, table: pd.DataFrame, pix_label: str) -> pd.DataFrame:
    for label, df in (("rlnOpticsGroup", optics), ("rlnOpticsGroup", table), (pix_label, optics)):
        if label not in df.columns:
            raise ValueError(f"cannot write a RELION 3.1 file: {label} is missing")
    optics = optics.copy()
    if "rlnOpticsGroupName" not in optics.columns:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{int(g)}" for g in optics["rlnOpticsGroup"]])
    return optics


def write_particles(path: PathLike, optics: pd.DataFrame, particles: pd.DataFrame) -> None:
    """Write a RELION 3.1 particle file (``data_optics`` then ``data_particles``) atomically."""
    write_star(path, {"optics": _check_optics(optics, particles, "rlnImagePixelSize"), "particles": particles})


def write_micrographs(path: PathLike, optics: pd.DataFrame, micrographs: pd.DataFrame, *,
                      block: str = "micrographs") -> None:
    """Write a RELION 3.1 micrograph (or, with ``block="movies"``, movie) file atomically."""
    write_star(path, {"optics": _check_optics(optics, micrographs, "rlnMicrographPixelSize"), block: micrographs})
