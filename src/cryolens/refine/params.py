"""Options of the gold-standard 3D auto-refinement, each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.core.symmetry import SYMMETRY_HELP, SYMMETRY_RULE
from cryolens.params import Params, option

__all__ = ["RefineParams"]

@dataclass
class RefineParams(Params):
    """Options of :func:`cryolens.refine.auto_refine`; see each field's help (units in brackets there).

    ``auto_mask``: from the iteration after the resolution passes ``auto_mask_resolution``, the
    references are masked with a soft mask from their own (half) map (cryoSPARC's dynamic mask:
    threshold, dilation and a soft edge), intersected with the sphere. ``global_top_k`` candidates
    of the global grid go on to local refinement; the global grid is searched for
    ``global_iterations`` iterations, the later ones search locally at halving steps.
    """

    symmetry: str = option("C1", flag="--sym", help=SYMMETRY_HELP, rule=SYMMETRY_RULE)
    ini_high: float = option(40.0, unit="Å", gt=0, help="Low-pass the reference to this resolution; also the "
                                                       "first iteration's alignment limit")
    particle_diameter: float | None = option(None, unit="Å", gt=0,
                                             help="Mask diameter; default 90% of the box")
    global_order: int = option(2, flag="--healpix-order", ge=0, le=4,
                               help="HEALPix order of the global search grid (2 = 15°)")
    global_top_k: int = option(6, ge=1, help="Candidates of the global grid kept for local refinement")
    global_iterations: int = option(3, ge=1, help="Iterations that search the global grid (later ones search "
                                                  "locally)")
    offset_range: float = option(5.0, unit="px", ge=0, help="Global translational search range")
    offset_step: float = option(1.0, unit="px", gt=0, help="Translational step of the global search")
    min_angular_step: float = option(0.5, unit="°", gt=0, help="Finest angular step of the local searches")
    min_offset_step: float = option(0.1, unit="px", gt=0, help="Finest translational step")
    max_iterations: int = option(12, flag="--max-iter", ge=1,
                                 help="Iteration cap (convergence usually stops earlier)")
    min_iterations: int = option(4, flag="--min-iter", ge=1, help="Iterations before convergence may be declared")
    band_margin: int = option(3, ge=0, help="Fourier shells aligned beyond the current resolution's shell")
    auto_mask: bool = option(True, help="Mask the references with a soft mask from their own maps once the "
                                        "resolution passes --auto-mask-resolution")
    auto_mask_resolution: float = option(20.0, unit="Å", gt=0, help="Resolution from which --auto-mask applies")
    pad: int = option(2, ge=2, help="Fourier padding of projector and back-projector")
    batch_size: int = option(256, ge=1, help="Images per search batch (bounds memory)")
    max_block: int = option(2**22, ge=2**12, help="Elements of one score/projection block (bounds memory)")
    ctf: bool = option(True, help="Model the CTF when the particles carry defocus values (--no-ctf ignores it)")
    seed: int = option(0, help="Seed for half-set assignment when rlnRandomSubset is absent")
