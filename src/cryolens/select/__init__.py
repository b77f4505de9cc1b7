"""Rule-based selection of micrographs and particles (the non-interactive subset selection).

A row is kept when it passes every criterion:

* each ``where`` rule (``"rlnCtfMaxResolution < 5"``, see :mod:`cryolens.select.rules`);
* ``rlnClassNumber`` in ``classes`` when classes are given (2D/3D class selection);
* agreement with a second CTF estimate when one is given (:mod:`cryolens.select.consensus`).

Example::

    params = SelectParams(where=("rlnCtfMaxResolution < 5", "rlnCtfFigureOfMerit >= 0.1"))
    sel = select_rows(micrographs, params)
    kept, rejected = micrographs[sel.keep], micrographs[~sel.keep]
    sel.summary   # {"rlnCtfMaxResolution < 5": {"passed": 18, "failed": 2}, ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cryolens.select.consensus import Consensus, angle_difference, ctf_consensus
from cryolens.select.rules import MissingColumnError, Rule, parse_classes, parse_rule, require_numeric

__all__ = ["SelectParams", "Selection", "select_rows", "Rule", "parse_rule", "parse_classes", "MissingColumnError",
           "Consensus", "ctf_consensus", "angle_difference"]


@dataclass
class SelectParams:
    """What to keep.

    Attributes:
        where: rules ``COLUMN OP NUMBER``, all must hold.
        classes: keep rows whose ``rlnClassNumber`` is one of these (empty: no class criterion).
        tolerance_defocus: consensus: largest relative difference of mean defocus (fraction of the mean).
        tolerance_angle: consensus: largest astigmatism-angle difference (degrees); None: not compared.
        astigmatism_threshold: consensus: angles are compared only where both |U - V| exceed this (Å).
    """

    where: tuple[str, ...] = ()
    classes: tuple[int, ...] = ()
    tolerance_defocus: float = 0.05
    tolerance_angle: float | None = None
    astigmatism_threshold: float = 300.0

    def validate(self) -> None:
        for text in self.where:
            parse_rule(text)
        parse_classes(list(self.classes))
        if not self.tolerance_defocus > 0:
            raise ValueError(f"tolerance_defocus must be > 0 (a fraction of the mean defocus), got {self.tolerance_defocus}")
        if self.tolerance_angle is not None and not 0 < self.tolerance_angle <= 90:
            raise ValueError(f"tolerance_angle must be in (0, 90] degrees, got {self.tolerance_angle}")
        if self.astigmatism_threshold < 0:
            raise ValueError(f"astigmatism_threshold must be >= 0 Å, got {self.astigmatism_threshold}")

    def rules(self) -> list[Rule]:
        return [parse_rule(t) for t in self.where]


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
