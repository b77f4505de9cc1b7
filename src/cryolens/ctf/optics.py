"""Microscope optics and the CTF phase χ in the forms the fit evaluates fast.

χ is :mod:`cryolens.core.ctf`'s (RELION ``ctf.h``), written linearly in
``(mean defocus, a1, a2, phase)`` with ``a1 + i·a2 = (U − V)/2 · e^{2i·angle}`` so that a
batch of candidates is one matrix product (pinned against core.ctf by a test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryolens.core.ctf import CTFParams, electron_wavelength
from cryolens.ctf.spectrum import SpectrumGrid

__all__ = ["Optics", "ctf_phase_linear", "chi_1d"]


@dataclass(frozen=True)
class Optics:
    """Microscope constants: pixel [Å], voltage [kV], Cs [mm], amplitude contrast [fraction]."""

    pixel_size: float
    voltage: float
    cs_mm: float
    amplitude_contrast: float

    @property
    def wavelength(self) -> float:
        return float(electron_wavelength(self.voltage))

    @property
    def cs_term(self) -> float:
        """(π/2)·Cs·λ³ in Å (so that the s⁴ term of χ is ``cs_term · s⁴``)."""
        return math.pi / 2 * self.cs_mm * 1e7 * self.wavelength ** 3

    @property
    def amp_phase(self) -> float:
        q = min(max(self.amplitude_contrast, -0.999999), 0.999999)
        return math.atan(q / math.sqrt(1 - q * q))

    def ctf_params(self, u: float, v: float, angle: float, phase: float) -> CTFParams:
        return CTFParams(defocus_u=torch.tensor([u]), defocus_v=torch.tensor([v]), defocus_angle=angle,
                         voltage=self.voltage, cs=self.cs_mm, amplitude_contrast=self.amplitude_contrast,
                         phase_shift=phase)


def ctf_phase_linear(coef: torch.Tensor, grid: SpectrumGrid, optics: Optics) -> torch.Tensor:
    """χ (radians) for candidates ``coef (B, 4) = (mean Å, a1 Å, a2 Å, phase rad)`` on ``grid``: ``(B, P)``.

    Equal to :mod:`cryolens.core.ctf`'s χ with ``U, V = mean ± |a|`` and ``angle = arg(a1 + i a2)/2``
    (pinned by a test): ``χ = −πλ(mean·s² + a1·s² cos2φ + a2·s² sin2φ) + (π/2)Csλ³s⁴ − phase − atan(Q/√(1−Q²))``.
    """
    basis = grid.basis(coef.dtype)  # (4, P)
    lin = torch.cat([coef[:, :3] * (-math.pi * optics.wavelength),
                     torch.full_like(coef[:, :1], optics.cs_term)], 1)
    return torch.addmm(-(coef[:, 3:4] + optics.amp_phase), lin, basis)


def chi_1d(s: torch.Tensor, mean: torch.Tensor, phase: torch.Tensor, optics: Optics) -> torch.Tensor:
    """χ without astigmatism for candidates ``mean (B,)`` Å, ``phase (B,)`` rad at ``s (n,)``: ``(B, n)``."""
    s2 = (s * s)[None]
    return (-math.pi * optics.wavelength) * mean[:, None] * s2 + optics.cs_term * s2 * s2 - phase[:, None] \
        - optics.amp_phase
