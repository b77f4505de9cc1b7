"""CTF consensus between two estimates of the same micrographs (as Scipion's CTF consensus).

Rows of table A are matched to rows of table B by a key column (``rlnMicrographName``
for micrographs; by file name when the full names never match, so two jobs that
wrote the same micrographs under different folders still pair up). A row agrees when

* its mean defocus ``(U + V) / 2`` differs from B's by at most ``tolerance_defocus``
  times the pair's mean defocus (relative, e.g. 0.05 = 5 %), and
* where both estimates are astigmatic (``|U - V|`` above ``astigmatism_threshold`` Å),
  the astigmatism angles differ by at most ``tolerance_angle`` degrees (modulo 180°).

Rows without a partner in B disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from cryolens.select.rules import require_numeric

__all__ = ["Consensus", "ctf_consensus", "angle_difference"]


@dataclass
class Consensus:
    """Per row of A: matched, defocus agrees, angle agrees (True where not compared), and the differences."""

    matched: np.ndarray
    defocus_ok: np.ndarray
    angle_ok: np.ndarray
    relative_defocus_difference: np.ndarray  # |ΔA - ΔB| / mean, NaN when unmatched
    angle_difference_deg: np.ndarray  # NaN where not compared

    @property
    def agree(self) -> np.ndarray:
        return self.matched & self.defocus_ok & self.angle_ok


def angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Difference of two astigmatism angles (degrees) modulo 180°, in [0, 90]."""
    d = np.mod(np.abs(np.asarray(a, float) - np.asarray(b, float)), 180.0)
    return np.minimum(d, 180.0 - d)


def _match(a: pd.DataFrame, b: pd.DataFrame, key: str) -> np.ndarray:
    """Row index into B for each row of A (-1 when absent); ValueError when B repeats a key."""
    for table in (a, b):
        if key not in table.columns:
            raise ValueError(f"column {key} is needed to pair the two tables")
    names_b = b[key].astype(str)
    if names_b.duplicated().any():
        raise ValueError(f"the other table lists {names_b[names_b.duplicated()].iloc[0]} twice; "
                         "a consensus needs one estimate per micrograph")
    names_a = a[key].astype(str)
    lookup = pd.Series(np.arange(len(b)), index=names_b.to_numpy())
    idx = names_a.map(lookup)
    if idx.isna().all():  # same micrographs written under other folders: pair by file name
        base_b = names_b.map(lambda s: PurePosixPath(s).name)
        if not base_b.duplicated().any():
            idx = names_a.map(lambda s: PurePosixPath(s).name).map(pd.Series(np.arange(len(b)), index=base_b.to_numpy()))
    return idx.fillna(-1).to_numpy(dtype=np.int64)


def ctf_consensus(a: pd.DataFrame, b: pd.DataFrame, *, key: str = "rlnMicrographName",
                  tolerance_defocus: float = 0.05, tolerance_angle: float | None = None,
                  astigmatism_threshold: float = 300.0) -> Consensus:
    """Compare the CTF of each row of ``a`` with its partner in ``b`` (defocus in Å, angles in degrees)."""
    where = _match(a, b, key)
    matched = where >= 0
    ua, va = require_numeric(a, "rlnDefocusU"), require_numeric(a, "rlnDefocusV")
    ub, vb = require_numeric(b, "rlnDefocusU"), require_numeric(b, "rlnDefocusV")
    j = np.where(matched, where, 0)
    mean_a, mean_b = (ua + va) / 2, ((ub + vb) / 2)[j] if len(b) else np.full(len(a), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(mean_a - mean_b) / np.abs((mean_a + mean_b) / 2)
    rel = np.where(matched, rel, np.nan)
    with np.errstate(invalid="ignore"):
        defocus_ok = matched & (rel <= tolerance_defocus)
    angle_ok = np.ones(len(a), bool)
    diff = np.full(len(a), np.nan)
    if tolerance_angle is not None and len(b):
        ang_a, ang_b = require_numeric(a, "rlnDefocusAngle"), require_numeric(b, "rlnDefocusAngle")[j]
        astig = np.minimum(np.abs(ua - va), np.abs(ub - vb)[j])
        compared = matched & (astig > astigmatism_threshold)
        diff = np.where(compared, angle_difference(ang_a, ang_b), np.nan)
        with np.errstate(invalid="ignore"):
            angle_ok = ~compared | (diff <= tolerance_angle)
    return Consensus(matched=matched, defocus_ok=defocus_ok, angle_ok=angle_ok,
                     relative_defocus_difference=rel, angle_difference_deg=diff)
