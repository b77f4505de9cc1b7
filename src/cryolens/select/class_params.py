"""What ``cryolens select classes`` keeps, each option declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option
from cryolens.select.params import class_list_text
from cryolens.select.rules import parse_classes

__all__ = ["ClassSelectParams", "AUTO_PARTICLE_Z", "AUTO_IMAGE_Z", "AUTO_LOGLIK_Z"]

#: ``--auto``'s default ``--min-particle-z``. Pure noise reaches z 2-3 after the classification's pose search.
#: Measured 2026-12-03 (3 000 particles, box 64, SNR 0.05, 20 % junk, K 20; junk dropped / good kept at 3 -> 3.3):
#: haemoglobin seed 11 72.7/94.9 -> 80.7/89.9 %, seed 21 70.8/96.9 -> 79.3/94.0 %, seed 1 (1 000 particles)
#: 78.5/88.0 -> 82.5/84.4 %, ribosome seed 12 57.8/100 -> 64.8/100 %; at 3.6 haemoglobin lost 12-23 % of its
#: good particles, at 4 up to 36 %.
#: Remeasured 2026-12-04 after class2d's DC fix and finer psi step, with --max-loglik-z 3 and the edge weight 0.5
#: (haemoglobin seeds 5 / 11 / 21): at 3.3 81.2/91.4, 80.8/93.2, 81.2/93.9 %; at 3.5 86.3/88.3, 82.2/90.5,
#: 84.3/90.8 %; at 3.7 88.5/84.8, 85.3/87.0, 87.5/86.8 %.
AUTO_PARTICLE_Z = 3.5

#: ``--auto``'s default ``--max-image-z``: images whose mean, SD, min or max is this many robust SDs from the stack's
#: median are dropped (Scipion's screen particles, whose default is 3). Measured 2026-12-04 on the simulated sets
#: above (box 64, SNR 0.05, 20 % junk): at 5, 32-35 % of the carbon edges and 0.7-7 % of the blobs go, and at most
#: 0.2 % of the good particles (at 4: 46-53 % of the carbon, 0.6-0.8 % of the good; at 3: 2.5-3.2 % of the good).
#: Carbon edges are the junk kind that the classification most often mixes into good classes.
AUTO_IMAGE_Z = 5.0

#: ``--auto``'s default ``--max-loglik-z``: particles whose ``rlnLogLikeliContribution`` lies more than this many
#: robust SDs below the median of all particles are dropped (:func:`cryolens.select.screen.loglik_zscores`).
AUTO_LOGLIK_Z = 3.0


@dataclass
class ClassSelectParams(Params):
    """Classes to keep: a list (``--class``) or those whose automatic score reaches ``--min-score`` (``--auto``).

    The score (0 to 1) of :func:`cryolens.select.class_scores.score_classes` is a weighted
    product of sub-scores: contrast, centring, concentration inside the particle circle, straight
    edges (carbon), estimated resolution and population (in-plane structure is reported, not scored).
    :meth:`particle_z_threshold`
    is the per-particle fit threshold in use, :meth:`loglik_z_threshold` the log-likelihood one and
    :meth:`image_z_threshold` the image-statistics one (None: no such screening).
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
                                                           "all). Default: 3.5 with --auto, off with --class")
    max_image_z: float | None = option(None, ge=0, help="Also drop particles whose image mean, SD, min or max lies "
                                                        "more than this many robust SDs from the stack's median "
                                                        "(Scipion's screen particles: carbon edges, ice; 0 keeps "
                                                        "all). Default: 5 with --auto, off with --class")
    max_loglik_z: float | None = option(None, ge=0, help="Also drop particles whose rlnLogLikeliContribution lies "
                                                          "more than this many robust SDs below the median of all "
                                                          "particles (fits its class average worse than most: dense "
                                                          "junk, carbon; 0 keeps all). Default: 3 with --auto, off "
                                                          "with --class")
    particle_diameter: float | None = option(None, unit="Å", gt=0,
                                             help="Circle in which a class average is scored. Default: the 2D "
                                                  "classification's --particle-diameter (its job.json), else 90 % "
                                                  "of the box")

    def check(self) -> None:
        """Exactly one of --class and --auto."""
        if bool(self.classes) == bool(self.auto):
            raise ValueError("--class: give either a class list (--class 1,3) or --auto, not both or neither")

    def image_z_threshold(self) -> float | None:
        """The image-statistics z threshold in use: ``--max-image-z``, else :data:`AUTO_IMAGE_Z` with --auto; None
        when off."""
        z = self.max_image_z if self.max_image_z is not None else (AUTO_IMAGE_Z if self.auto else None)
        return z if z else None

    def loglik_z_threshold(self) -> float | None:
        """The log-likelihood z threshold in use: ``--max-loglik-z``, else :data:`AUTO_LOGLIK_Z` with --auto; None
        when off."""
        z = self.max_loglik_z if self.max_loglik_z is not None else (AUTO_LOGLIK_Z if self.auto else None)
        return z if z else None

    def particle_z_threshold(self) -> float | None:
        """The per-particle z threshold in use: ``--min-particle-z``, else :data:`AUTO_PARTICLE_Z` with --auto; None
        when off."""
        z = self.min_particle_z if self.min_particle_z is not None else (AUTO_PARTICLE_Z if self.auto else None)
        return z if z else None
