"""Variants of a structure for heterogeneity tests: the same map with a peripheral lobe removed.

Used to make two-state (bound / unbound) data sets for 3D classification with
``cryolens simulate particles --structure a.mrc:population=0.6 --structure b.mrc:population=0.4``.
"""

from __future__ import annotations

import torch

from cryolens.core.masks import soft_sphere

__all__ = ["lobe_centre", "remove_lobe"]


def lobe_centre(volume: torch.Tensor, *, radius_px: float, threshold_fraction: float = 0.3) -> torch.Tensor:
    """``(3,)`` offset (px, ``(z, y, x)`` from the box centre) of a peripheral lobe of ``volume``.

    The voxel above ``threshold_fraction`` of the maximum that lies farthest from the map's centre
    of mass, moved ``radius_px`` towards the centre of mass, so that a sphere of ``radius_px``
    there covers density at the map's edge.
    """
    v = volume.float()
    n = v.shape[-1]
    c = torch.arange(n, dtype=torch.float32, device=v.device) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    pos = torch.stack([z, y, x], -1)
    w = v.clamp_min(0)
    com = (pos * w[..., None]).sum((0, 1, 2)) / w.sum().clamp_min(1e-30)
    inside = v > threshold_fraction * v.max()
    d = torch.where(inside, (pos - com).norm(dim=-1), torch.full_like(v, -1.0))
    far = pos.reshape(-1, 3)[int(torch.argmax(d))]
    direction = (far - com) / (far - com).norm().clamp_min(1e-6)
    return far - radius_px * direction


def remove_lobe(volume: torch.Tensor, *, pixel_size: float, diameter: float = 40.0,
                edge_width: float = 2.0) -> torch.Tensor:
    """``volume`` with a soft sphere of ``diameter`` Å at a peripheral lobe (:func:`lobe_centre`) set to 0.

    ``pixel_size`` in Å; ``edge_width`` in px (cosine edge outside the sphere).
    """
    r = diameter / 2 / pixel_size
    centre = lobe_centre(volume, radius_px=r)
    m = soft_sphere(volume.shape[-1], radius=r, edge_width=edge_width, device=volume.device,
                    centre=tuple(float(o) for o in centre))
    return volume * (1 - m)
