"""Reconstruction of half maps and the full map from particles with known poses."""

from cryolens.reconstruct.half_maps import ReconstructParams, ReconstructResult, reconstruct_half_maps

__all__ = ["ReconstructParams", "ReconstructResult", "reconstruct_half_maps"]
