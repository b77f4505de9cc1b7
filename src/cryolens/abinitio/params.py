"""Options of ab-initio 3D (``cryolens abinitio``), each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.core.symmetry import SYMMETRY_HELP, SYMMETRY_RULE
from cryolens.params import Params, option

__all__ = ["AbinitioParams"]


@dataclass
class AbinitioParams(Params):
    """Options of :func:`cryolens.abinitio.abinitio`; see each field's help (units in brackets there).

    The resolution limit of the alignment falls geometrically from ``ini_resolution`` to
    ``final_resolution`` over ``iterations`` mini-batches of ``batch_size`` particles; ``starts``
    random starts run side by side for the first ``prune_after`` iterations, then the one with the
    best likelihood on the same mini-batches goes on. Near-spherical particles (apoferritin) align
    better with higher limits, e.g. ``--ini-resolution 20 --final-resolution 8``.
    """

    classes: int = option(1, ge=1, help="Number of classes (maps)")
    symmetry: str = option("C1", flag="--sym", help=SYMMETRY_HELP, rule=SYMMETRY_RULE)
    ini_resolution: float = option(35.0, unit="Å", gt=0, help="Alignment resolution limit of the first iteration")
    final_resolution: float = option(12.0, unit="Å", gt=0, help="Alignment resolution limit of the last iterations")
    iterations: int = option(40, flag="--iterations", ge=2, help="Mini-batch iterations")
    batch_size: int = option(300, ge=10, help="Particles per mini-batch")
    starts: int = option(3, ge=1, help="Random starts, pruned to the most likely one")
    prune_after: int = option(8, ge=1, help="Iterations after which the random starts are pruned")
    particle_diameter: float | None = option(None, unit="Å", gt=0, help="Mask diameter; default 90% of the box")
    offset_range: float = option(4.0, unit="px", ge=0, help="Translational search range")
    healpix_order: int = option(2, ge=1, le=3, help="HEALPix order of the global search grid (2 = 15°)")
    top_k: int = option(4, ge=1, help="Poses per particle and class kept in the soft assignment")
    final_passes: int = option(2, ge=1, help="Passes over all particles at the final resolution (poses, map)")
    ctf: bool = option(True, help="Model the CTF when the particles carry defocus values (--no-ctf ignores it)")
    seed: int = option(0, help="Random seed (starting maps, mini-batches)")
    memory: float = option(3.0, gt=0, help="Mini-batches the running sums remember (older ones fade)", cli=False)
    tau2_fudge: float = option(4.0, gt=0, help="Scale of the map power prior (RELION's --tau2_fudge)", cli=False)
    max_block: int = option(2**22, ge=2**12, help="Elements of one score block (bounds memory)", cli=False)

    def check(self) -> None:
        if self.final_resolution > self.ini_resolution:
            raise ValueError(f"{self.flag('final_resolution')} {self.final_resolution:g}: must not exceed "
                             f"{self.flag('ini_resolution')} {self.ini_resolution:g} Å")
