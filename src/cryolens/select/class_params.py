"""What ``cryolens select classes`` keeps, each option declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option
from cryolens.select.params import class_list_text
from cryolens.select.rules import parse_classes

__all__ = ["ClassSelectParams"]


@dataclass
class ClassSelectParams(Params):
    """Classes to keep: a list (``--class``) or those whose automatic score reaches ``--min-score`` (``--auto``).

    The score (0 to 1) of :func:`cryolens.select.class_scores.score_classes` is a weighted
    product of sub-scores: contrast, centring, concentration inside the particle circle, straight
    edges (carbon), estimated resolution and population (in-plane structure is reported, not scored).
    :meth:`particle_z_threshold`
    is the per-particle fit threshold in use (None: no particle screening).
    """

    classes: tuple[int, ...] = option((), flag="--class", parse=parse_classes, text=class_list_text, metavar="1,3",
                                      help="Keep these classes (rlnClassNumber), comma-separated, e.g. 1,3")
    auto: bool = option(False, help="Score every class from its contrast, centring, concentration, straight "
                                    "edges, estimated resolution and population, and keep those scoring at "
                                    "least --min-score")
    min_score: float = option(0.5, ge=0, le=1, help="--auto: keep classes scoring at least this (0 to 1; "
                                                    "lower keeps more)")
    min_particle_z: float | None = option(None, ge=0, help="Also drop particles of the kept classes that fit their "
                                                           "class average worse than this z-score (correlation in "
                                                           "noise SDs, see cryolens.select.particle_fit; 0 keeps "
                                                           "all). Default: 3 with --auto, off with --class")
    particle_diameter: float | None = option(None, unit="Å", gt=0,
                                             help="Circle in which a class average is scored. Default: the 2D "
                                                  "classification's --particle-diameter (its job.json), else 90 % "
                                                  "of the box")

    def check(self) -> None:
        """Exactly one of --class and --auto."""
        if bool(self.classes) == bool(self.auto):
            raise ValueError("--class: give either a class list (--class 1,3) or --auto, not both or neither")

    def particle_z_threshold(self) -> float | None:
        """The per-particle z threshold in use: ``--min-particle-z``, else 3 with --auto; None when off."""
        z = self.min_particle_z if self.min_particle_z is not None else (3.0 if self.auto else None)
        return z if z else None
