"""Power spectra of micrographs: Welch-averaged periodograms and rotational averages.

Used by the micrograph job's report, the realism figure (docs/make_realism_plot.py)
and the tests. Pure functions, tensors/arrays in and out.
"""

from __future__ import annotations

import numpy as np
import torch

from cryolens.core.fourier import welch_power_spectrum

__all__ = ["radial_profile", "power_spectrum", "centred_spectrum"]


def radial_profile(values: torch.Tensor, shape: tuple[int, int], *, pixel_size: float,
                   nbins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotational average of an rfft-layout array of an ``(h, w)`` image: ``(s (1/Å), mean)``."""
    h, w = shape
    fy = torch.fft.fftfreq(h, device=values.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=values.device)[None, :]
    r = torch.sqrt(fx * fx + fy * fy)  # cycles/pixel
    nb = nbins or min(h, w) // 2
    idx = torch.round(r * 2 * nb).long()  # bin width 1/(2 nb) cycles/px
    keep = idx < nb + 1
    num = torch.zeros(nb + 1, dtype=torch.float64, device=values.device).index_add_(0, idx[keep], values[keep].double())
    ones = torch.ones_like(values[keep], dtype=torch.float64)
    den = torch.zeros(nb + 1, dtype=torch.float64, device=values.device).index_add_(0, idx[keep], ones)
    s = np.arange(nb + 1) / (2 * nb) / pixel_size
    return s, (num / den.clamp_min(1)).cpu().numpy()


def power_spectrum(image: torch.Tensor, *, pixel_size: float,
                   tile: int = 512) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Averaged periodogram of half-overlapping ``tile``² tiles (Welch, as CTFFIND's).

    Args:
        image: ``(h, w)`` micrograph; pixel_size: Å; tile: px (at most ``min(h, w)`` is used).

    Returns ``(s (1/Å), 1-D rotational average, 2-D spectrum (tile, tile//2+1))``, the
    power per pixel normalised by the tile area, each tile's mean removed
    (:func:`cryolens.core.fourier.welch_power_spectrum` with ``overlap=0.5``).
    """
    img = torch.as_tensor(image, dtype=torch.float32)
    h, w = img.shape
    tile = min(tile, h, w)
    p = welch_power_spectrum(img, box=tile, overlap=0.5).float()
    s, prof = radial_profile(p, (tile, tile), pixel_size=pixel_size)
    return s, prof, p


def centred_spectrum(p2: torch.Tensor) -> np.ndarray:
    """Full ``(n, n)`` spectrum, DC at ``(n//2, n//2)``, from an rfft-layout ``(n, n//2+1)`` one (Friedel)."""
    p2 = np.asarray(p2)
    n = p2.shape[0]
    kx = np.arange(n) - n // 2
    ky = np.arange(n)[:, None]
    rows = np.where(kx[None, :] >= 0, ky, (-ky) % n)  # kx < 0 read from the mate (-ky, -kx)
    return np.fft.fftshift(p2[rows, np.abs(kx)[None, :]], axes=0)
