"""Reconstruction of half maps and the full map from particles with known poses."""

from cryolens.lazy import lazy_exports

__all__ = ["ReconstructParams", "ReconstructResult", "reconstruct_half_maps"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.reconstruct.half_maps": ["ReconstructResult", "reconstruct_half_maps"],
    "cryolens.reconstruct.params": ["ReconstructParams"],
})
