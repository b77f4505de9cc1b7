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

from cryolens.params import Params, option
from cryolens.select.consensus import Consensus, angle_difference, ctf_consensus
from cryolens.select.rules import MissingColumnError, Rule, parse_classes, parse_rule, require_numeric

__all__ = ["SelectParams", "Selection", "select_rows", "Rule", "parse_rule", "parse_classes", "MissingColumnError",
           "Consensus", "ctf_consensus", "angle_difference"]


def class_list_text(classes: tuple[int, ...]) -> str:
    """``(1, 3)`` -> ``"1,3"``."""
    return ",".join(map(str, classes))


@dataclass
class SelectParams(Params):
    """What to keep (each option declared once: flag, help, unit, default, bounds)."""

    where: tuple[str, ...] = option(
        (), help="Rule 'COLUMN OP NUMBER' with OP one of < <= > >= == != (repeatable; all must hold), e.g. "
                 "'rlnCtfMaxResolution < 5'. Optics columns may be used too")
    classes: tuple[int, ...] = option((), flag="--class", parse=parse_classes, text=class_list_text, metavar="1,3",
                                      help="Keep these classes (rlnClassNumber), comma-separated, e.g. 1,3")
    tolerance_defocus: float = option(0.05, gt=0, help="Consensus: largest difference of mean defocus, as a fraction "
                                                       "of the mean (0.05 = 5 %)")
    tolerance_angle: float | None = option(None, unit="°", gt=0, le=90,
                                           help="Consensus: largest difference of astigmatism angle, compared where "
                                                "both are astigmatic")
    astigmatism_threshold: float = option(300.0, unit="Å", ge=0, help="Consensus: compare angles only where both "
                                                                      "|defocusU - defocusV| exceed this")

    def check(self) -> None:
        """Every rule parses; class numbers start at 1."""
        for text in self.where:
            try:
                parse_rule(text)
            except ValueError as e:
                raise ValueError(f"--where {text!r}: {e}") from None
        parse_classes(list(self.classes))

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
