"""Options of the maximum-likelihood 2D classification, each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option

__all__ = ["Class2DParams"]


@dataclass
class Class2DParams(Params):
    """Options of :func:`cryolens.class2d.classify_2d`; see each field's help (units in brackets there).

    The alignment resolution limit rises from ``res_start`` to ``res_end`` (linearly in spatial
    frequency over the first 70 % of the iterations, never beyond Nyquist); the in-plane
    step follows it (``degrees(resolution / mask diameter)``, between ``psi_step`` and 15°)
    and so does the shift step (``resolution / 6``, at least ``shift_step_min`` px).
    ``subset`` ``auto`` follows cisTEM: about ``particles_per_class`` particles per class in
    the first 30 % of the iterations, then 30 % of the particles, then all of them.
    """

    classes: int = option(20, flag="--classes", short="-K", ge=1, help="Number of classes K")
    iterations: int = option(20, flag="--iter", ge=1, help="EM iterations")
    particle_diameter: float | None = option(None, unit="Å", gt=0, help="Diameter of the circular soft mask "
                                                                       "applied to images and averages; default "
                                                                       "90% of the box")
    tau2_fudge: float = option(4.0, gt=0, help="Regularisation: weight of the data against the prior (RELION's "
                                               "T; higher gives noisier averages at higher resolution, which "
                                               "separate junk from particles better)")
    res_start: float = option(30.0, unit="Å", gt=0, help="Resolution limit of the first iteration")
    res_end: float = option(8.0, unit="Å", gt=0, help="Resolution limit reached late in the run (capped at "
                                                      "Nyquist)")
    offset_range: float = option(10.0, unit="Å", ge=0, help="Translational search range (radius, around the "
                                                            "box centre)")
    offset_prior: bool = option(True, help="A Gaussian prior on the origins about the box centre, its width "
                                           "re-estimated every iteration from the origins found (RELION's); "
                                           "without it every origin within --offset-range is equally likely")
    particle_scale: bool = option(False, help="Fit each particle's amplitude scale (the model image is scale × CTF × "
                                              "class, refitted every iteration from the second): faint images (empty "
                                              "boxes, edge-cut particles) then spread over the classes instead of "
                                              "gathering with good particles in the weakest one; purer classes, but "
                                              "select classes --auto then drops less of that junk")
    psi_step: float = option(5.0, unit="°", gt=0, le=15, help="Finest in-plane angular step (the step starts "
                                                              "at 15° and refines with the resolution)")
    shift_step_min: float = option(1.0, unit="px", gt=0, help="Finest translational step")
    significance: float = option(1e-4, ge=0, lt=1, help="Poses with a posterior below this fraction of a "
                                                       "particle's best are dropped (speed; 0 keeps all)")
    subset: str = option("auto", choices=("auto", "all"), help="Particles per iteration: auto (cisTEM's schedule: "
                                                                "~--particles-per-class per class, then 30%, then "
                                                                "all) or all")
    particles_per_class: int = option(300, ge=1, help="Particles per class in the early iterations of "
                                                      "--subset auto")
    uniform_prior: bool = option(False, help="Give every class the same prior probability in the E-step instead "
                                             "of weighing classes by their population (RELION); fewer particles "
                                             "pile into one class at large K, but surplus classes stay mixed "
                                             "instead of emptying at small K")
    center: bool = option(True, help="Recentre the class averages on their centre of mass each iteration")
    reseed: bool = option(True, help="Reseed empty or tiny classes from the worst-fitting particles of the "
                                     "largest class (all but the last 10 % of the iterations)")
    empty_class: bool = option(True, help="Add a class K+1 held at zero, a model of an image without particle "
                                          "signal: empty boxes and edge-cut particles that fit no average better "
                                          "land there instead of in a weak average that then draws faint good "
                                          "particles in too; select classes --auto drops it. With wrong CTF "
                                          "parameters no average explains the images and it takes most of them: "
                                          "the job then warns")
    match_power: bool = option(True, help="From half the run on, score the images against the class averages "
                                          "weaker than the median class scaled up to the median's power (the "
                                          "averages written keep their own scale): a class made faint by the "
                                          "faint images it holds then stops drawing in more of them")
    temper_last: bool = option(True, help="Score the last iteration at the temperature --last-temperature / "
                                          "mean(mask²): the masked images' noise is correlated, so the likelihood "
                                          "counts too many independent coefficients and over-fits the noise of "
                                          "the previous averages; the softer posteriors give averages closer to "
                                          "the truth, with the same best poses")
    last_temperature: float = option(1.6, ge=1, help="The last iteration's temperature with --temper-last, as a "
                                                    "multiple of 1 / mean(mask²) (1.6: 2.6 for an 80 Å mask in a 96 Å "
                                                    "box); higher softens the final averages more")
    ctf: bool = option(True, help="Model the CTF when the particles carry defocus values (--no-ctf ignores it)")
    seed: int = option(0, help="Seed for the initial classes, particle subsets and in-plane offsets")
    batch_size: int = option(128, ge=1, help="Images per batch (bounds memory)")
    cache_mb: float = option(2048.0, unit="MB", ge=0, help="Memory for keeping the Fourier-cropped images between "
                                                          "iterations (beyond it they are re-read each iteration)")

    def model_classes(self) -> int:
        """Classes scored in the E-step: the K averages, and the empty class last with ``empty_class``."""
        return self.classes + int(self.empty_class)

    def check(self) -> None:
        if self.res_end > self.res_start:
            raise ValueError(f"{self.flag('res_end')} {self.res_end:g} must not exceed {self.flag('res_start')} "
                             f"{self.res_start:g} Å (the limit rises from the start to the end value)")
