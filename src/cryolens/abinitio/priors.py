"""Priors applied to ab-initio references: positive density, flat solvent, a low-pass, a centred map."""

from __future__ import annotations

import torch

from cryolens.core.fourier import bandpass
from cryolens.mapalign.align import shift_volume

__all__ = ["centre_of_mass", "enforce_priors"]


def centre_of_mass(volume: torch.Tensor) -> torch.Tensor:
    """Centre of mass of the positive density, ``(3,)`` voxels ``(x, y, z)`` from the box centre ``n // 2``."""
    n = volume.shape[-1]
    w = volume.clamp_min(0)
    total = w.sum().clamp_min(1e-30)
    c = torch.arange(n, device=volume.device, dtype=torch.float32) - n // 2
    z = (w.sum((1, 2)) * c).sum() / total
    y = (w.sum((0, 2)) * c).sum() / total
    x = (w.sum((0, 1)) * c).sum() / total
    return torch.stack([x, y, z])


def enforce_priors(volume: torch.Tensor, *, pixel_size: float, resolution: float, mask: torch.Tensor,
                   recentre: bool = True, max_offset: float = 1.0) -> torch.Tensor:
    """A reference from a reconstruction: low-passed, negatives set to 0, solvent outside ``mask`` flattened, centred.

    Args:
        volume: ``(n, n, n)`` map; pixel_size: Å per voxel; resolution: low-pass (Å, soft edge).
        mask: ``(n, n, n)`` soft solvent mask (1 inside the particle); the map is multiplied by it.
        recentre: move the positive density's centre of mass to the box centre when it is more than
            ``max_offset`` voxels away (a Fourier shift; the map's content is unchanged otherwise).
    """
    v = bandpass(volume.float(), pixel_size=pixel_size, high_res=resolution, ndim=3)
    v = v.clamp_min(0) * mask
    if recentre:
        com = centre_of_mass(v)
        if float(com.norm()) > max_offset:
            v = (shift_volume(v, -com).clamp_min(0)) * mask
    return v
