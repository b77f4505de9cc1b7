"""Fit diagnostics: aliasing of the Thon rings, the astigmatism-corrected radius, per-shell CC.

Units: frequencies in 1/Å, defocus in Å, radii in spectrum pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryolens.ctf.optics import Optics
from cryolens.ctf.spectrum import SpectrumGrid

__all__ = ["aliasing_frequency", "corrected_radius", "windowed_cc"]


def aliasing_frequency(defocus_max: float, optics: Optics, box: int) -> float | None:
    """Lowest frequency (1/Å) where the CTF's ring period falls below 2 spectrum pixels, or None before Nyquist."""
    s = np.linspace(1e-4, 0.5 / optics.pixel_size, 4000)
    dchi = np.abs(-2 * math.pi * optics.wavelength * defocus_max * s + 4 * optics.cs_term * s ** 3)
    period_px = math.pi / np.maximum(dchi, 1e-12) * box * optics.pixel_size
    bad = np.nonzero(period_px < 2.0)[0]
    return float(s[bad[0]]) if len(bad) else None


def corrected_radius(grid: SpectrumGrid, x: np.ndarray, optics: Optics) -> torch.Tensor:
    """Radius [px] where the astigmatism-free CTF at the mean defocus has each pixel's phase χ."""
    lam, a = optics.wavelength, optics.cs_term
    g = -math.pi * lam * (x[0] * grid.s2 + x[1] * grid.s2 * grid.cos2 + x[2] * grid.s2 * grid.sin2) \
        + a * grid.s2 * grid.s2  # χ without constants
    b = -math.pi * lam * x[0]
    d = torch.sqrt((b * b + 4 * a * g).clamp_min(0))
    s2 = (-2 * g / (d - b)).clamp_min(0)  # root of a·x² + b·x = g continuous with x = g/b
    return torch.sqrt(s2) * grid.box * grid.pixel_size


def windowed_cc(y: np.ndarray, m: np.ndarray, half: np.ndarray) -> np.ndarray:
    """CC of ``y`` and ``m`` in windows ``[i − half_i, i + half_i]`` (cumulative sums)."""
    n = len(y)
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    c = lambda v: np.concatenate([[0.0], np.cumsum(v)])  # noqa: E731
    sy, sm, syy, smm, sym = c(y), c(m), c(y * y), c(m * m), c(y * m)
    k = (hi - lo).astype(float)
    w = lambda cs: cs[hi] - cs[lo]  # noqa: E731
    cov = w(sym) - w(sy) * w(sm) / k
    vy = w(syy) - w(sy) ** 2 / k
    vm = w(smm) - w(sm) ** 2 / k
    return cov / np.sqrt(np.maximum(vy * vm, 1e-30))
