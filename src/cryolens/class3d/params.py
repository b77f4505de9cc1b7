"""Options of the maximum-likelihood 3D classification, each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.core.symmetry import SYMMETRY_HELP, SYMMETRY_RULE
from cryolens.params import Params, option

__all__ = ["Class3DParams", "SEARCH_MODES"]

#: Pose handling: keep the input poses, search locally around them, or search the whole grid.
SEARCH_MODES = ("auto", "skip", "local", "global")


@dataclass
class Class3DParams(Params):
    """Options of :func:`cryolens.class3d.classify_3d`; see each field's help (units in brackets there).

    ``search`` ``auto`` searches locally around the input poses when the particles carry them
    (``--local-range`` degrees, steps of ``--angular-step``) and globally (HEALPix order
    ``--healpix-order``) when they do not; ``--skip-align`` keeps the input poses. The
    alignment limit starts at ``ini_high`` and then follows the best class's estimated
    resolution (where its SSNR falls below 1) plus ``band_margin`` shells.
    """

    classes: int = option(4, flag="--classes", short="-K", ge=2, help="Number of classes K (at least 2)")
    iterations: int = option(25, flag="--iter", ge=1, help="EM iterations")
    symmetry: str = option("C1", flag="--sym", help=SYMMETRY_HELP, rule=SYMMETRY_RULE)
    ini_high: float = option(40.0, unit="Å", gt=0, help="Low-pass the references to this resolution; also the "
                                                       "first iteration's alignment limit")
    particle_diameter: float | None = option(None, unit="Å", gt=0, help="Diameter of the soft spherical mask of "
                                                                       "images and references; default 90% of "
                                                                       "the box")
    skip_align: bool = option(False, help="Keep the input poses: classify over classes only (RELION's "
                                          "--skip_align)")
    search: str = option("auto", choices=SEARCH_MODES,
                         help="Pose search: auto (local when the particles carry poses, else global), skip (as "
                              "--skip-align), local or global")
    local_range: float = option(10.0, unit="°", gt=0, le=90, help="Radius of the local angular search around "
                                                                  "the input poses (about 2x RELION's "
                                                                  "--sigma_ang)")
    angular_step: float = option(5.0, unit="°", gt=0, le=30, help="Angular step of the local search (a second "
                                                                  "pass halves it)")
    healpix_order: int = option(2, ge=0, le=4, help="HEALPix order of the global search grid (2 = 15°)")
    global_top_k: int = option(4, ge=1, help="Candidates of the global grid per class refined by local passes")
    offset_range: float = option(3.0, unit="px", ge=0, help="Translational search range around the current "
                                                            "origins (global: around 0)")
    offset_step: float = option(1.0, unit="px", gt=0, help="Translational search step")
    tau2_fudge: float = option(4.0, gt=0, help="Regularisation: weight of the data against the prior (RELION's "
                                               "T; 2-4 for 3D classification)")
    band_margin: int = option(2, ge=0, help="Fourier shells aligned beyond the current resolution's shell")
    hard_iterations: int = option(2, ge=0, help="First iterations that give each particle wholly to its most "
                                                "probable class (K-means-like: separates classes that start from "
                                                "one map; later iterations are soft)")
    stop_change: float = option(0.005, ge=0, lt=1, help="Convergence stop: once fewer than this fraction of the "
                                                        "particles change class in an iteration after the hard "
                                                        "iterations, the next iteration is the last (it inserts the "
                                                        "full box for the final maps); 0 runs all --iter iterations "
                                                        "(RELION stops only at --iter)")
    plateau: int = option(3, ge=0, help="Plateau stop: once fewer than --plateau-change of the particles have "
                                        "changed class in each of this many iterations in a row after the hard "
                                        "iterations, the next iteration is the last (the assignments only "
                                        "fluctuate between ambiguous particles by then); 0: off")
    plateau_change: float = option(0.02, gt=0, lt=1, help="Fraction of the particles changing class per "
                                                          "iteration below which an iteration counts towards "
                                                          "--plateau")
    narrow: bool = option(True, help="Local searches: once the poses settle (median change below half "
                                     "--angular-step, rms shift change below half --offset-step, from the last "
                                     "hard iteration on), search only the nearest lattice neighbours of each pose (one "
                                     "--angular-step, one --offset-step) before the half-step pass; "
                                     "--no-narrow keeps the full --local-range window")
    perturb: float = option(0.3, ge=0, help="Noise added to each class's starting reference when fewer maps "
                                            "than classes are given (fraction of the map's power per shell)")
    init: str = option("variability", choices=("variability", "perturb"),
                       help="Starting classes when the particles carry poses: variability (K-means of the "
                            "particles' coordinates along the principal directions of heterogeneity, found by "
                            "probabilistic PCA at the input poses) or perturb (the reference copied K times with "
                            "noise, as without poses)")
    init_resolution: float = option(25.0, unit="Å", gt=0, help="Resolution limit of the principal directions "
                                                              "(--init variability; two thirds of the "
                                                              "passes at 1.5x this)")
    init_components: int | None = option(None, ge=1, help="Principal directions whose coordinates the starting "
                                                        "K-means clusters (--init variability); default K-1. 1 "
                                                        "follows a continuous change better: on a morph the "
                                                        "second direction is not the morph yet as reproducible")
    init_iterations: int = option(20, ge=1, help="EM passes of the probabilistic PCA (--init variability)")
    local_sigma: float = option(3.0, unit="px", ge=0, help="Window (Gaussian sigma) of the local correlation of "
                                                           "the two half sets' class deviations from the "
                                                           "consensus, which confines each class's difference to "
                                                           "where it is reproducible (0: no real-space shrinkage)")
    ctf: bool = option(True, help="Model the CTF when the particles carry defocus values (--no-ctf ignores it)")
    seed: int = option(0, help="Seed for the perturbation of the starting references")
    batch_size: int = option(256, ge=1, help="Images per batch (bounds memory)")
    cache_mb: float = option(2048.0, unit="MB", ge=0, help="Memory for keeping the images' transforms and CTFs "
                                                          "between iterations (beyond it they are re-read)")
    max_block: int = option(2**22, ge=2**12, help="Elements of one score/projection block (bounds memory)")

    def mode(self, has_poses: bool) -> str:
        """The pose search this run does: ``skip``, ``local`` or ``global``."""
        if self.skip_align or self.search == "skip":
            return "skip"
        if self.search == "auto":
            return "local" if has_poses else "global"
        return self.search
