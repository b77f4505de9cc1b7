"""Particle metadata (RELION 3.1 columns, optics merged in) <-> batched tensors.

Stages receive a per-particle table in which the optics columns have been joined
(:func:`cryolens.io.merge_optics`), so every row carries its pixel size, voltage,
Cs and amplitude contrast. Origins are ``rlnOriginXAngst/YAngst`` in Å in the table
and in pixels in the tensors (divided by ``rlnImagePixelSize``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cryolens.core.ctf import CTFParams
from cryolens.core.rotations import euler_to_matrix

__all__ = ["POSE_COLUMNS", "CTF_COLUMNS", "rotations_from_table", "origins_px_from_table",
           "ctf_params_from_table", "has_ctf", "assign_half_sets"]

POSE_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
CTF_COLUMNS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]


def _col(df: pd.DataFrame, name: str, default: float, device=None) -> torch.Tensor:
    if name in df.columns:
        return torch.as_tensor(df[name].to_numpy(dtype=np.float32), device=device)
    return torch.full((len(df),), float(default), dtype=torch.float32, device=device)


def rotations_from_table(df: pd.DataFrame, device=None) -> torch.Tensor:
    """``(B, 3, 3)`` RELION matrices from rlnAngleRot/Tilt/Psi (missing angles read as 0)."""
    rot, tilt, psi = (_col(df, c, 0.0, device) for c in POSE_COLUMNS)
    return euler_to_matrix(rot, tilt, psi)


def origins_px_from_table(df: pd.DataFrame, device=None) -> torch.Tensor:
    """``(B, 2)`` origins in pixels from rlnOriginXAngst/YAngst and rlnImagePixelSize."""
    apix = _col(df, "rlnImagePixelSize", 1.0, device)
    ox = _col(df, "rlnOriginXAngst", 0.0, device)
    oy = _col(df, "rlnOriginYAngst", 0.0, device)
    return torch.stack([ox / apix, oy / apix], dim=1)


def has_ctf(df: pd.DataFrame) -> bool:
    """True when the table carries defocus values (so the CTF should be modelled)."""
    return all(c in df.columns for c in CTF_COLUMNS[:2])


def ctf_params_from_table(df: pd.DataFrame, device=None) -> CTFParams:
    """Per-particle :class:`CTFParams` from RELION columns (defaults where optional columns are absent)."""
    return CTFParams(
        defocus_u=_col(df, "rlnDefocusU", 0.0, device),
        defocus_v=_col(df, "rlnDefocusV", 0.0, device),
        defocus_angle=_col(df, "rlnDefocusAngle", 0.0, device),
        voltage=_col(df, "rlnVoltage", 300.0, device),
        cs=_col(df, "rlnSphericalAberration", 2.7, device),
        amplitude_contrast=_col(df, "rlnAmplitudeContrast", 0.1, device),
        phase_shift=_col(df, "rlnPhaseShift", 0.0, device),
        bfactor=_col(df, "rlnCtfBfactor", 0.0, device),
        scale=_col(df, "rlnCtfScalefactor", 1.0, device),
    )


def assign_half_sets(df: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Return a copy with rlnRandomSubset (1/2) assigned at random when absent or invalid.

    Halves are balanced (sizes differ by at most one). Existing valid assignments are kept.
    """
    out = df.copy()
    if "rlnRandomSubset" in out.columns and out["rlnRandomSubset"].isin([1, 2]).all():
        out["rlnRandomSubset"] = out["rlnRandomSubset"].astype(int)
        return out
    rng = np.random.default_rng(seed)
    halves = np.tile([1, 2], (len(out) + 1) // 2)[: len(out)]
    out["rlnRandomSubset"] = rng.permutation(halves).astype(int)
    return out
