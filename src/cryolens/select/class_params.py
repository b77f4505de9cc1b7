"""What ``cryolens select classes`` keeps, each option declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option
from cryolens.select.params import class_list_text
from cryolens.select.rules import parse_classes

__all__ = ["ClassSelectParams", "AUTO_PARTICLE_Z"]

#: ``--auto``'s default ``--min-particle-z``. Pure noise reaches z 2-3 after the classification's pose search.
#: Measured 2026-12-03 (3 000 particles, box 64, SNR 0.05, 20 % junk, K 20; junk dropped / good kept at 3 -> 3.3):
#: haemoglobin seed 11 72.7/94.9 -> 80.7/89.9 %, seed 21 70.8/96.9 -> 79.3/94.0 %, seed 1 (1 000 particles)
#: 78.5/88.0 -> 82.5/84.4 %, ribosome seed 12 57.8/100 -> 64.8/100 %; at 3.6 haemoglobin lost 12-23 % of its
#: good particles, at 4 up to 36 %.
AUTO_PARTICLE_Z = 3.3


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
                                                           "all). Default: 3.3 with --auto, off with --class")
    particle_diameter: float | None = option(None, unit="Å", gt=0,
                                             help="Circle in which a class average is scored. Default: the 2D "
                                                  "classification's --particle-diameter (its job.json), else 90 % "
                                                  "of the box")

    def check(self) -> None:
        """Exactly one of --class and --auto."""
        if bool(self.classes) == bool(self.auto):
            raise ValueError("--class: give either a class list (--class 1,3) or --auto, not both or neither")

    def particle_z_threshold(self) -> float | None:
        """The per-particle z threshold in use: ``--min-particle-z``, else :data:`AUTO_PARTICLE_Z` with --auto; None
        when off."""
        z = self.min_particle_z if self.min_particle_z is not None else (AUTO_PARTICLE_Z if self.auto else None)
        return z if z else None
