"""cryoSPARC particle fields <-> RELION 3.1 particle tables (the conversion behind ``import particles --in X.cs``
and ``export cryosparc``).

Field by field (cryoSPARC -> RELION; the export is the inverse):

* ``blob/path`` + ``blob/idx`` (0-based) -> ``rlnImageName`` ``idx+1@path`` (the path resolved by the job);
  ``blob/psize_A`` -> ``rlnImagePixelSize`` Å; ``blob/shape`` ``(ny, nx)`` -> ``rlnImageSize``.
* ``ctf/df1_A``, ``ctf/df2_A`` -> ``rlnDefocusU``, ``rlnDefocusV`` Å; ``ctf/df_angle_rad`` -> ``rlnDefocusAngle``
  degrees; ``ctf/phase_shift_rad`` -> ``rlnPhaseShift`` degrees; ``ctf/bfactor`` -> ``rlnCtfBfactor`` Å²;
  ``ctf/scale`` -> ``rlnCtfScalefactor``; ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast`` -> optics
  ``rlnVoltage`` kV, ``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``.
* Optics groups: one per distinct ``ctf/exp_group_id`` and acquisition values (voltage, Cs, amplitude
  contrast, pixel size, box), numbered in order of first appearance.
* ``alignments3D/pose`` (rotation vector, radians) -> ``rlnAngleRot/Tilt/Psi`` degrees through
  :func:`cryolens.core.rotations.cryosparc_pose_to_euler`; ``alignments3D/shift`` (pixels of
  ``alignments3D/psize_A``) -> ``rlnOriginXAngst/YAngst`` = shift x pixel size, same sign (pyem's rule);
  ``alignments3D/split`` 0/1 -> ``rlnRandomSubset`` 1/2; ``alignments3D/class`` (else ``alignments2D/class``)
  0-based -> ``rlnClassNumber`` 1-based.
* ``location/micrograph_path`` -> ``rlnMicrographName``; ``location/center_x_frac`` x width and
  ``center_y_frac`` x height (``location/micrograph_shape`` = ``(ny, nx)``) -> ``rlnCoordinateX/Y`` pixels
  (import only: a STAR file does not carry the micrograph size the export would need).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.core.rotations import cryosparc_pose_to_euler, euler_to_cryosparc_pose
from cryolens.errors import InputError
from cryolens.io.cryosparc import Dataset, require_fields
from cryolens.io.star import merge_optics

__all__ = ["IMAGE_FIELDS", "CTF_FIELDS", "cs_to_relion", "relion_to_cs", "blob_name"]

IMAGE_FIELDS = ("blob/path", "blob/idx", "blob/shape", "blob/psize_A")
CTF_FIELDS = ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad")
_FIX = "give the particles .cs of an Extract, Restack or refinement job, with its passthrough file (--passthrough)."


def blob_name(value) -> str:
    """A ``blob/path`` entry as text without cryoSPARC's leading ``>`` (its mark for an imported, linked file)."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text[1:] if text.startswith(">") else text


def _finite(ds: Dataset, fields: list[str], path: Path) -> None:
    for f in fields:
        v = np.asarray(ds[f], dtype=np.float64)
        if not np.isfinite(v).all():
            row = int(np.flatnonzero(~np.isfinite(v).reshape(len(v), -1).all(axis=1))[0])
            raise InputError(f"{path}: field {f} is NaN or infinite in row {row + 1}; fix or re-export the file.")


def cs_to_relion(ds: Dataset, path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """RELION 3.1 ``(optics, particles)`` of a cryoSPARC particle dataset, and each row's stack name.

    ``particles`` lacks ``rlnImageName`` (the caller resolves the stacks, see the third item: ``blob/path``
    without a leading ``>``, one per row). Raises InputError naming ``path`` for missing fields, no rows,
    non-finite values, non-square or mixed boxes, impossible acquisition values.
    """
    path = Path(path)
    require_fields(ds, IMAGE_FIELDS, path, hint=_FIX)
    require_fields(ds, CTF_FIELDS, path, hint="run a CTF estimation in cryoSPARC before exporting, or " + _FIX)
    n = len(ds)
    if n == 0:
        raise InputError(f"{path}: holds no particles; export a particle set that is not empty.")
    names = set(ds.fields())
    floats = [f for f in (*CTF_FIELDS, "blob/psize_A", "ctf/phase_shift_rad", "ctf/bfactor",
                          "alignments3D/pose", "alignments3D/shift", "alignments3D/psize_A") if f in names]
    _finite(ds, floats, path)
    shape = np.asarray(ds["blob/shape"]).reshape(n, -1)
    if shape.shape[1] != 2 or (shape[:, 0] != shape[:, 1]).any() or (shape < 2).any():
        raise InputError(f"{path}: blob/shape {shape[0].tolist()} is not a square box; re-extract with a square box.")
    box = shape[:, 0].astype(np.int64)
    f64 = lambda f: np.asarray(ds[f], dtype=np.float64)  # noqa: E731
    raw = lambda f: np.asarray(ds[f]).astype(np.float32)  # noqa: E731 - copied values keep float32 (its text)
    acq = pd.DataFrame({
        "group": np.asarray(ds["ctf/exp_group_id"], np.int64) if "ctf/exp_group_id" in names else np.zeros(n, int),
        "rlnVoltage": raw("ctf/accel_kv"), "rlnSphericalAberration": raw("ctf/cs_mm"),
        "rlnAmplitudeContrast": raw("ctf/amp_contrast"), "rlnImagePixelSize": raw("blob/psize_A"), "rlnImageSize": box})
    for col, field, lo in (("rlnVoltage", "ctf/accel_kv", 0.0), ("rlnImagePixelSize", "blob/psize_A", 0.0)):
        if not (acq[col] > lo).all():
            raise InputError(f"{path}: {field} is {acq[col].min():g} for some particles; it must be positive.")
    if not acq["rlnAmplitudeContrast"].between(0, 1, inclusive="left").all():
        raise InputError(f"{path}: ctf/amp_contrast must lie in [0, 1); fix the file.")
    keys = list(acq.columns)
    codes = acq.groupby(keys, sort=False).ngroup().to_numpy() + 1
    optics = acq.assign(rlnOpticsGroup=codes).drop_duplicates("rlnOpticsGroup").drop(columns="group")
    optics.insert(0, "rlnOpticsGroup", optics.pop("rlnOpticsGroup"))
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    optics["rlnImageDimensionality"] = 2
    optics = optics.reset_index(drop=True)

    parts = pd.DataFrame({"rlnDefocusU": raw("ctf/df1_A"), "rlnDefocusV": raw("ctf/df2_A"),
                          "rlnDefocusAngle": np.rad2deg(f64("ctf/df_angle_rad"))})
    if "ctf/phase_shift_rad" in names:
        parts["rlnPhaseShift"] = np.rad2deg(f64("ctf/phase_shift_rad"))
    if "ctf/bfactor" in names:
        parts["rlnCtfBfactor"] = raw("ctf/bfactor")
    if "ctf/scale" in names:
        parts["rlnCtfScalefactor"] = raw("ctf/scale")
    if {"alignments3D/pose", "alignments3D/shift"} <= names:
        rot, tilt, psi = (a.numpy() for a in cryosparc_pose_to_euler(torch.from_numpy(f64("alignments3D/pose"))))
        apix = f64("alignments3D/psize_A") if "alignments3D/psize_A" in names else f64("blob/psize_A")
        apix = np.where(apix > 0, apix, f64("blob/psize_A"))
        shift = f64("alignments3D/shift").reshape(n, 2)
        parts = parts.assign(rlnAngleRot=rot, rlnAngleTilt=tilt, rlnAnglePsi=psi,
                             rlnOriginXAngst=shift[:, 0] * apix, rlnOriginYAngst=shift[:, 1] * apix)
    if "alignments3D/split" in names:
        parts["rlnRandomSubset"] = np.asarray(ds["alignments3D/split"], np.int64) + 1
    for field in ("alignments3D/class", "alignments2D/class"):
        if field in names:
            parts["rlnClassNumber"] = np.asarray(ds[field], np.int64) + 1
            break
    loc = ("location/micrograph_path", "location/micrograph_shape", "location/center_x_frac", "location/center_y_frac")
    if set(loc) <= names:
        mshape = np.asarray(ds["location/micrograph_shape"], np.float64).reshape(n, 2)
        parts["rlnMicrographName"] = [blob_name(p) for p in ds["location/micrograph_path"]]
        parts["rlnCoordinateX"] = f64("location/center_x_frac") * mshape[:, 1]
        parts["rlnCoordinateY"] = f64("location/center_y_frac") * mshape[:, 0]
    parts["rlnOpticsGroup"] = codes
    return optics, parts, [blob_name(p) for p in ds["blob/path"]]


def relion_to_cs(optics: pd.DataFrame, parts: pd.DataFrame, *, blob_paths: list[str],
                 blob_idx: np.ndarray) -> Dataset:
    """The cryoSPARC particle dataset of a RELION 3.1 particle table (the inverse of :func:`cs_to_relion`).

    ``blob_paths`` / ``blob_idx``: each row's stack name as it is to be written and 0-based image index.
    Optics groups become ``ctf/exp_group_id``; poses and shifts are written (``alignments3D``) when the table
    has ``rlnAngleRot/Tilt/Psi``; ``blob/sign`` is -1 (protein bright, the RELION and cryolens convention).
    """
    t = merge_optics(optics, parts)
    n = len(t)
    col = lambda c, default=0.0: (t[c].to_numpy(np.float64) if c in t.columns  # noqa: E731
                                  else np.full(n, default, np.float64))
    apix, box = col("rlnImagePixelSize"), col("rlnImageSize").astype(np.int64)
    fields = [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
              ("blob/sign", "<f4"), ("ctf/type", "O"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"),
              ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
              ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"), ("ctf/scale", "<f4"),
              ("ctf/scale_const", "<f4"), ("ctf/bfactor", "<f4")]
    poses = {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(t.columns)
    if poses:
        fields += [("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
                   ("alignments3D/psize_A", "<f4"), ("alignments3D/class", "<u4"),
                   ("alignments3D/class_posterior", "<f4"), ("alignments3D/alpha", "<f4")]
    ds = Dataset.allocate(n, fields)
    ds["blob/path"] = np.array(blob_paths, dtype=object)
    ds["blob/idx"] = np.asarray(blob_idx, np.uint32)
    ds["blob/shape"] = np.stack([box, box], axis=1).astype(np.uint32)
    ds["blob/psize_A"] = apix
    ds["blob/sign"] = -1.0
    ds["ctf/type"] = np.array(["imported"] * n, dtype=object)
    ds["ctf/exp_group_id"] = t["rlnOpticsGroup"].to_numpy(np.int64)
    for field, c, default in (("ctf/accel_kv", "rlnVoltage", 0.0), ("ctf/cs_mm", "rlnSphericalAberration", 0.0),
                              ("ctf/amp_contrast", "rlnAmplitudeContrast", 0.0), ("ctf/df1_A", "rlnDefocusU", 0.0),
                              ("ctf/df2_A", "rlnDefocusV", 0.0), ("ctf/bfactor", "rlnCtfBfactor", 0.0),
                              ("ctf/scale", "rlnCtfScalefactor", 1.0)):
        ds[field] = col(c, default)
    ds["ctf/df_angle_rad"] = np.deg2rad(col("rlnDefocusAngle"))
    ds["ctf/phase_shift_rad"] = np.deg2rad(col("rlnPhaseShift"))
    if poses:
        pose = euler_to_cryosparc_pose(*(torch.tensor(col(c)) for c in ("rlnAngleRot", "rlnAngleTilt",
                                                                           "rlnAnglePsi")))
        ds["alignments3D/pose"] = pose.numpy()
        ds["alignments3D/shift"] = np.stack([col("rlnOriginXAngst") / apix, col("rlnOriginYAngst") / apix], axis=1)
        ds["alignments3D/psize_A"] = apix
        ds["alignments3D/split"] = np.clip(col("rlnRandomSubset", 1.0) - 1, 0, 1).astype(np.uint32)
        ds["alignments3D/class"] = np.maximum(col("rlnClassNumber", 1.0) - 1, 0).astype(np.uint32)
        ds["alignments3D/class_posterior"] = 1.0
        ds["alignments3D/alpha"] = 1.0
    return ds
