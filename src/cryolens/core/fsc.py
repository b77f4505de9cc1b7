"""Fourier shell correlation between two maps, and resolution at a threshold.

Shells are ``round(|k|)`` for integer frequencies ``k`` (cycles per box); shell ``s``
is at resolution ``n · pixel_size / s`` Å. Sums run over the full spectrum (rfft
coefficients weighted by their multiplicity), up to Nyquist (``n // 2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryolens.core.fourier import ft3, radius_3d, rfft_weights, shell_index

__all__ = ["FSCResult", "fsc", "resolution_at", "fsc_to_ssnr"]


@dataclass
class FSCResult:
    """FSC per shell with its frequencies.

    Attributes:
        shell: ``(S,)`` shell indices 0..n//2; frequency: cycles/Å; resolution: Å
        (``inf`` at shell 0); fsc: correlation per shell; pixel_size: Å; n: box.
    """

    shell: np.ndarray
    frequency: np.ndarray
    resolution: np.ndarray
    fsc: np.ndarray
    pixel_size: float
    n: int

    def resolution_at(self, threshold: float = 0.143) -> float:
        """Resolution (Å) where the curve first falls below ``threshold``; see :func:`resolution_at`."""
        return resolution_at(self.fsc, self.n, self.pixel_size, threshold)


def fsc(map1: torch.Tensor, map2: torch.Tensor, *, pixel_size: float, mask: torch.Tensor | None = None) -> FSCResult:
    """FSC between two cubic maps (optionally both multiplied by ``mask`` first)."""
    if map1.shape != map2.shape:
        raise ValueError(f"maps differ in shape: {tuple(map1.shape)} vs {tuple(map2.shape)}")
    n = map1.shape[-1]
    if mask is not None:
        map1, map2 = map1 * mask, map2 * mask
    f1, f2 = ft3(map1.float()), ft3(map2.float())
    sh = shell_index(radius_3d(n, device=map1.device)).reshape(-1)
    w = rfft_weights(n, ndim=3, device=map1.device).reshape(-1)
    nsh = n // 2 + 1
    keep = sh < nsh
    sh, w = sh[keep], w[keep]
    f1, f2 = f1.reshape(-1)[keep], f2.reshape(-1)[keep]
    acc = lambda v: torch.zeros(nsh, dtype=torch.float64, device=map1.device).index_add_(0, sh, (v * w).double())  # noqa: E731
    num = acc((f1 * f2.conj()).real)
    den = torch.sqrt(acc(f1.abs() ** 2) * acc(f2.abs() ** 2)).clamp_min(1e-30)
    curve = (num / den).cpu().numpy()
    s = np.arange(nsh)
    freq = s / (n * pixel_size)
    with np.errstate(divide="ignore"):
        res = np.where(s > 0, 1.0 / np.maximum(freq, 1e-30), np.inf)
    return FSCResult(s, freq, res, curve, float(pixel_size), n)


def resolution_at(curve: np.ndarray, n: int, pixel_size: float, threshold: float = 0.143) -> float:
    """Resolution (Å) at which an FSC curve first crosses below ``threshold``.

    Linear interpolation between the last shell above and the first below (shell 0
    ignored). Returns Nyquist (``2·pixel_size``) when the curve never falls below.
    """
    c = np.asarray(curve, dtype=float)
    for s in range(1, len(c)):
        if c[s] < threshold:
            if s == 1:
                return float(n * pixel_size)
            c0, c1 = c[s - 1], c[s]
            x = (s - 1) + (c0 - threshold) / max(c0 - c1, 1e-12)
            return float(n * pixel_size / x)
    return float(2 * pixel_size)


def fsc_to_ssnr(curve: np.ndarray | torch.Tensor, *, full_map: bool = True) -> torch.Tensor:
    """Spectral SNR from a half-map FSC: ``FSC/(1-FSC)`` per half, doubled for the full map.

    Negative FSC values give SSNR 0.
    """
    c = torch.as_tensor(np.asarray(curve), dtype=torch.float32).clamp(0.0, 0.999)
    ssnr = c / (1 - c)
    return 2 * ssnr if full_map else ssnr
