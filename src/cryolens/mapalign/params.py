"""Options of map alignment (``cryolens align-maps``), each declared once (flag, help, unit, default, bounds)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.core.symmetry import SYMMETRY_RULE
from cryolens.params import Params, option

__all__ = ["AlignMapsParams"]


@dataclass
class AlignMapsParams(Params):
    """Options of :func:`cryolens.mapalign.align_maps`.

    The coarse search runs on both maps Fourier-cropped to ``coarse_box`` voxels (every rotation
    of the HEALPix grid of order ``healpix_order``, every translation by FFT cross-correlation);
    its ``top_k`` best poses are then refined by gradient ascent on the correlation of the maps
    cropped to ``refine_box`` voxels.
    """

    flip_hand: str = option("auto", choices=("auto", "yes", "no"),
                            help="Mirror the moving map first: auto tries both hands and keeps the better")
    symmetry: str = option("C1", flag="--sym", rule=SYMMETRY_RULE,
                           help="Point group of the maps, in RELION's orientation (reduces the search)")
    healpix_order: int = option(2, ge=1, le=3, help="HEALPix order of the coarse rotation grid (2 = 15°)")
    coarse_box: int = option(24, ge=12, le=64, help="Box of the coarse search (maps Fourier-cropped to it)")
    refine_box: int = option(48, ge=16, le=128, help="Box of the local refinement (maps Fourier-cropped to it)")
    top_k: int = option(4, ge=1, help="Coarse poses refined locally, per hand")
    lowpass: float | None = option(None, unit="Å", gt=0, help="Low-pass both maps to this resolution for the "
                                                              "search; default: no filter beyond the crops")
