"""What ``cryolens select`` keeps, each option declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option
from cryolens.select.rules import Rule, parse_classes, parse_rule

__all__ = ["SelectParams", "class_list_text"]


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
    max_zscore: float | None = option(None, gt=0, help="Particles: reject images whose robust z-score of mean, SD, "
                                                       "min or max against the stack exceeds this (Scipion's screen "
                                                       "particles; 3 is its default)")
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
