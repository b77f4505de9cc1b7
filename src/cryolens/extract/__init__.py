"""Particle extraction: boxes cut from micrographs, binned, normalised and inverted (RELION 3.1's way).

Pure algorithms on tensors (no file I/O): :func:`extract_particles` (and its streaming
form :func:`iter_extract`) for one micrograph, :class:`MicrographCTF` for per-particle
defocus from the micrograph's CTF and defocus plane, :func:`recentre` for re-extraction
from refined origins, :func:`normalise_background` for RELION's background normalisation.
"""

from cryolens.extract.defocus import GRADIENT_COLUMNS, MicrographCTF
from cryolens.extract.extraction import (
    Extracted,
    box_corners,
    boxes_inside,
    extract_particles,
    fourier_crop,
    iter_extract,
    replicate_edges,
    window_boxes,
)
from cryolens.extract.normalise import background_mask, normalise_background
from cryolens.extract.params import ExtractParams, default_bg_radius
from cryolens.extract.origins import recentre, round_half_away

__all__ = [
    "ExtractParams", "default_bg_radius", "Extracted", "extract_particles", "iter_extract", "box_corners",
    "boxes_inside", "window_boxes", "replicate_edges", "fourier_crop", "MicrographCTF", "GRADIENT_COLUMNS",
    "background_mask", "normalise_background", "recentre", "round_half_away",
]
