"""Options of ab-initio 3D (``cryolens abinitio``), each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cryolens.core.symmetry import SYMMETRY_HELP, SYMMETRY_RULE
from cryolens.params import Params, option

__all__ = ["AbinitioParams"]


@dataclass
class AbinitioParams(Params):
    """Options of :func:`cryolens.abinitio.abinitio`; see each field's help (units in brackets there).

    The resolution limit of the alignment falls geometrically from ``ini_resolution`` to
    ``final_resolution`` over ``iterations`` mini-batches of ``batch_size`` particles; ``starts``
    random starts run side by side for the first ``prune_after`` iterations, then the one with the
    best likelihood on the same mini-batches goes on. Unset limits follow the symmetry
    (:meth:`ini_limit`, :meth:`final_limit`): cages (T, O, I: near-spherical shells such as
    apoferritin, whose low-resolution views all look alike) start and end finer.
    """

    classes: int = option(1, ge=1, help="Number of classes (maps)")
    symmetry: str = option("C1", flag="--sym", help=SYMMETRY_HELP, rule=SYMMETRY_RULE)
    ini_resolution: float | None = option(None, unit="Å", gt=0, help="Alignment resolution limit of the first "
                                          "iteration; default 35, or 20 for T, O and I symmetry (at most half the box)")
    final_resolution: float | None = option(None, unit="Å", gt=0, help="Alignment resolution limit of the last "
                                            "iterations; default 12, or 10 for T, O and I symmetry (at least 2.5 px)")
    iterations: int = option(40, flag="--iterations", ge=2, help="Mini-batch iterations")
    batch_size: int = option(300, ge=10, help="Particles per mini-batch")
    starts: int = option(6, ge=1, help="Random starts, pruned to the most likely one")
    prune_after: int = option(8, ge=1, help="Iterations after which the random starts are pruned")
    particle_diameter: float | None = option(None, unit="Å", gt=0, help="Mask diameter; default 90% of the box")
    offset_range: float = option(4.0, unit="px", ge=0, help="Translational search range")
    healpix_order: int = option(2, ge=1, le=3, help="HEALPix order of the global search grid (2 = 15°)")
    top_k: int = option(4, ge=1, help="Poses per particle and class kept in the soft assignment")
    final_passes: int = option(2, ge=1, help="Passes over all particles at the final resolution (poses, map)")
    ctf: bool = option(True, help="Model the CTF when the particles carry defocus values (--no-ctf ignores it)")
    seed: int = option(0, help="Random seed (starting maps, mini-batches)")
    memory: float = option(3.0, ge=1, help="Mini-batches the running sums remember (each iteration fades "
                           "them by 1 - 1/memory)", cli=False)
    tau2_fudge: float = option(4.0, gt=0, help="Scale of the map power prior (RELION's --tau2_fudge)", cli=False)
    max_block: int = option(2**22, ge=2**12, help="Elements of one score block (bounds memory)", cli=False)

    @property
    def cage(self) -> bool:
        """True for the cage groups T, O and I (near-spherical particles)."""
        return self.symmetry.strip().upper()[:1] in ("T", "O", "I")

    def final_limit(self, pixel_size: float) -> float:
        """The final alignment limit (Å): as given, else 12 Å (10 Å for cages), at least 2.5 pixels of ``pixel_size`` Å."""
        if self.final_resolution is not None:
            return self.final_resolution
        return max(10.0 if self.cage else 12.0, 2.5 * pixel_size)

    def ini_limit(self, pixel_size: float, box: int) -> float:
        """The first alignment limit (Å): as given, else 35 Å (20 Å for cages), at most half the box
        (``box`` px × ``pixel_size`` Å) and never finer than :meth:`final_limit`."""
        if self.ini_resolution is not None:
            return self.ini_resolution
        return max(min(20.0 if self.cage else 35.0, box * pixel_size / 2), self.final_limit(pixel_size))

    def with_limits(self, pixel_size: float, box: int) -> "AbinitioParams":
        """A copy with both resolution limits set (:meth:`ini_limit`, :meth:`final_limit`)."""
        return replace(self, ini_resolution=self.ini_limit(pixel_size, box),
                       final_resolution=self.final_limit(pixel_size))

    def check(self) -> None:
        if self.final_resolution is None or self.ini_resolution is None:
            return
        if self.final_resolution > self.ini_resolution:
            raise ValueError(f"{self.flag('final_resolution')} {self.final_resolution:g}: must not exceed "
                             f"{self.flag('ini_resolution')} {self.ini_resolution:g} Å")
