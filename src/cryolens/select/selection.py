"""Evaluate the selection criteria on a table (see :mod:`cryolens.select`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cryolens.select.consensus import Consensus, ctf_consensus
from cryolens.select.params import SelectParams
from cryolens.select.rules import require_numeric

__all__ = ["Selection", "select_rows"]


@dataclass
class Selection:
    """``keep`` per row; ``summary`` per criterion: rows that passed / failed it (each counted on its own)."""

    keep: np.ndarray
    summary: dict[str, dict[str, int]] = field(default_factory=dict)
    consensus: Consensus | None = None


def _count(mask: np.ndarray) -> dict[str, int]:
    return {"passed": int(mask.sum()), "failed": int((~mask).sum())}


def select_rows(table: pd.DataFrame, params: SelectParams, *, other: pd.DataFrame | None = None,
                key: str = "rlnMicrographName", other_name: str = "other") -> Selection:
    """Evaluate every criterion on ``table`` (optics columns merged in, if rules need them).

    Args:
        other: a second CTF estimate of the same items for the consensus (None: no consensus).
        key: the column pairing ``table`` with ``other``.
        other_name: how the summary names ``other`` (e.g. its file name).

    Raises:
        MissingColumnError: a rule's column is absent. ValueError: a bad rule or a non-numeric column.
    """
    params.validate()
    keep = np.ones(len(table), bool)
    summary: dict[str, dict[str, int]] = {}
    for rule in params.rules():
        m = rule.mask(table)
        summary[str(rule)] = _count(m)
        keep &= m
    if params.classes:
        classes = require_numeric(table, "rlnClassNumber")
        m = np.isin(classes, np.asarray(params.classes, float))
        summary[f"rlnClassNumber in {{{', '.join(map(str, params.classes))}}}"] = _count(m)
        keep &= m
    consensus = None
    if other is not None:
        consensus = ctf_consensus(table, other, key=key, tolerance_defocus=params.tolerance_defocus,
                                  tolerance_angle=params.tolerance_angle,
                                  astigmatism_threshold=params.astigmatism_threshold)
        summary[f"present in {other_name}"] = _count(consensus.matched)
        summary[f"defocus within {params.tolerance_defocus:g} of the mean vs {other_name}"] = _count(consensus.defocus_ok)
        if params.tolerance_angle is not None:
            summary[f"angle within {params.tolerance_angle:g}° vs {other_name} "
                    f"(where astigmatism > {params.astigmatism_threshold:g} Å)"] = _count(consensus.angle_ok)
        keep &= consensus.agree
    return Selection(keep=keep, summary=summary, consensus=consensus)
