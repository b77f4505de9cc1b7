"""Soft masks: spheres and masks grown from a thresholded map.

All masks are float32 in ``[0, 1]`` on the grid of the input, centre at ``n // 2``.
Distances in pixels unless an argument says Å.
"""

from __future__ import annotations

import math

import torch

from cryolens.core.fourier import bandpass

__all__ = ["soft_sphere", "soft_edge_from_distance", "mask_from_map", "distance_to", "soft_mask_outside", "ring_median"]


def soft_edge_from_distance(dist: torch.Tensor, *, inner: float, outer: float) -> torch.Tensor:
    """1 where ``dist <= inner``, 0 where ``dist >= outer``, raised cosine between."""
    if outer <= inner:
        return (dist <= inner).to(torch.float32)
    t = ((dist - inner) / (outer - inner)).clamp(0, 1)
    return (0.5 * (1 + torch.cos(math.pi * t))).to(torch.float32)


def soft_sphere(n: int, *, radius: float, edge_width: float = 6.0, ndim: int = 3, device=None,
                centre: tuple[float, ...] | None = None) -> torch.Tensor:
    """Soft sphere (or disc for ``ndim=2``): 1 inside ``radius`` px, cosine edge of ``edge_width`` px.

    ``centre``: offset of the sphere's centre from the box centre ``n // 2``, in px, in array
    order (``(z, y, x)`` or ``(y, x)``); default the box centre.
    """
    c = torch.arange(n, device=device, dtype=torch.float32) - n // 2
    grids = torch.meshgrid(*([c] * ndim), indexing="ij")
    if centre is not None:
        grids = [g - float(o) for g, o in zip(grids, centre)]
    r = torch.sqrt(sum(g * g for g in grids))
    return soft_edge_from_distance(r, inner=radius, outer=radius + edge_width)


def ring_median(images: torch.Tensor, radius: float) -> torch.Tensor:
    """``(K,)`` the median of each ``(K, n, n)`` image over the ring ``radius - 2 <= r < radius`` px from ``n // 2``
    (just inside a particle circle of that radius: its background level); 0 where the ring holds no pixel."""
    n = images.shape[-1]
    c = torch.arange(n, device=images.device, dtype=torch.float64) - n // 2
    r = torch.hypot(c[:, None], c[None, :])
    ring = (r >= radius - 2) & (r < radius)
    if not bool(ring.any()):
        return images.new_zeros(images.shape[0])
    return images[:, ring].median(dim=1).values


def distance_to(binary: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (px) of every voxel to the nearest true voxel (scipy's exact EDT)."""
    from scipy import ndimage  # imported here: scipy.ndimage costs every command ~0.2 s at start-up
    b = binary.detach().cpu().numpy().astype(bool)
    if not b.any():
        return torch.full(binary.shape, float("inf"), device=binary.device)
    d = ndimage.distance_transform_edt(~b)
    return torch.as_tensor(d, dtype=torch.float32, device=binary.device)


def mask_from_map(volume: torch.Tensor, *, pixel_size: float, threshold: float | None = None,
                  threshold_fraction: float = 0.5, dilate_angstrom: float = 6.0,
                  soft_edge_angstrom: float = 6.0, lowpass_angstrom: float | None = None) -> torch.Tensor:
    """Soft mask from a thresholded map: binarise, dilate, add a cosine edge.

    Args:
        volume: the map ``(n, n, n)``.
        pixel_size: Å per voxel.
        threshold: absolute density threshold; default ``threshold_fraction · max``.
        dilate_angstrom: the mask is 1 within this distance of the thresholded region.
        soft_edge_angstrom: width of the cosine fall-off beyond the dilation.
        lowpass_angstrom: optionally low-pass the map to this resolution before
            thresholding (smoother masks from noisy maps).

    cryoSPARC's loose mask is ``dilate=25, soft_edge=15``; its tight mask ``6, 6``
    (with ``threshold_fraction=0.5``).
    """
    v = volume.float()
    if lowpass_angstrom is not None:
        v = bandpass(v, pixel_size=pixel_size, high_res=lowpass_angstrom, ndim=3)
    thr = float(threshold) if threshold is not None else threshold_fraction * float(v.max())
    binary = v > thr
    dist = distance_to(binary) * pixel_size
    return soft_edge_from_distance(dist, inner=dilate_angstrom, outer=dilate_angstrom + soft_edge_angstrom)



def soft_mask_outside(volume: torch.Tensor, *, radius: float | None = None, edge_width: float = 3.0) -> torch.Tensor:
    """Replace what lies outside a sphere by the background mean, blending over a cosine edge.

    RELION applies this (radius n/2, 3 px edge) to every reconstruction to remove
    aliasing noise from the box corners. The background is the mean of the voxels
    at radius >= ``radius``.
    """
    n = volume.shape[-1]
    r0 = n / 2 if radius is None else radius
    m = soft_sphere(n, radius=r0, edge_width=edge_width, ndim=volume.ndim, device=volume.device)
    outside = m < 1
    bg = volume[outside].mean() if outside.any() else volume.new_zeros(())
    return volume * m + bg * (1 - m)
