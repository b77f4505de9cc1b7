"""Class references for the E-step: the consensus plus each class's deviation, shrunk where it is noise.

RELION regularises every class map on its own (Wiener filter of its FSC). With classes that differ by a
small part of the structure, the two class maps then differ mostly by their reconstruction noise, and
that noise decides the assignments (measured with the true maps as the start: 89.5 % after one
iteration, 83 % after six, the smaller class shrinking). Here each class's half map is the half set's
consensus ``m̄`` (all classes, Wiener-filtered) plus the class's *deviation* ``d_k = m_k − m̄`` (unfiltered
reconstructions) shrunk twice by its own half-set consistency:

* per Fourier shell by ``FSC(d_k¹, d_k²)`` (clipped to 0..1: the Wiener factor of a half map);
* per voxel by the local correlation of the two half deviations (Gaussian window of ``local_sigma``
  px, clipped to 0..1), so a localised difference (a lobe, a bound factor) keeps its own region and the
  noise elsewhere in the box is removed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryolens.core.fourier import ft3, ift3, radius_3d, shell_index
from cryolens.core.fsc import fsc

__all__ = ["gaussian_smooth", "local_correlation", "shrunk_deviations"]


def gaussian_smooth(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """``volume (n, n, n)`` convolved with a Gaussian of standard deviation ``sigma`` px (periodic)."""
    n = volume.shape[-1]
    k = radius_3d(n, device=volume.device) / n
    return ift3(ft3(volume) * torch.exp(-2 * math.pi ** 2 * sigma ** 2 * k ** 2), n)


def local_correlation(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """Real-space correlation of ``a`` and ``b`` in a Gaussian window of ``sigma`` px, ``(n, n, n)`` in −1..1."""
    num = gaussian_smooth(a * b, sigma)
    den = (gaussian_smooth(a * a, sigma).clamp_min(0) * gaussian_smooth(b * b, sigma).clamp_min(0)).sqrt()
    return num / den.clamp_min(1e-12 * float(den.max().clamp_min(1e-30)))


def shrunk_deviations(halves: list[torch.Tensor], consensus: list[torch.Tensor], *, pixel_size: float,
                      mask: torch.Tensor, local_sigma: float) -> tuple[list[torch.Tensor], np.ndarray]:
    """The class's two shrunk half deviations and the FSC of the raw ones.

    Args:
        halves: the class's two unfiltered half maps ``(n, n, n)``; consensus: the two unfiltered half
            maps of all classes together (same half sets).
        pixel_size: Å/px; mask: the soft mask under which the FSC is measured.
        local_sigma: px, the window of the local correlation (0: no real-space shrinkage).

    Returns:
        ``([d¹, d²], fsc)``: the deviations to add to each half's filtered consensus, and the
        deviation FSC per shell (``n//2 + 1`` values).
    """
    n = halves[0].shape[-1]
    d = [(h - c) * mask for h, c in zip(halves, consensus)]
    curve = np.nan_to_num(fsc(d[0], d[1], pixel_size=pixel_size).fsc)
    sh = shell_index(radius_3d(n, device=d[0].device)).clamp_max(n // 2)
    f = torch.as_tensor(np.clip(curve, 0.0, 1.0), dtype=torch.float32, device=d[0].device)[sh]
    d = [ift3(ft3(v) * f, n) for v in d]
    if local_sigma > 0:
        w = local_correlation(d[0], d[1], local_sigma).clamp(0, 1)
        d = [v * w for v in d]
    return d, curve
