"""Contrast transfer function in RELION's ``ctf.h`` form (pinned by ``relion_project --ctf``).

Units: defocus in Å (positive = underfocus), astigmatism angle and phase shift in
degrees, voltage in kV, Cs in mm, B-factor in Å², pixel size in Å.

    λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))            (V in volts, λ in Å)
    Δf(φ) = -[(ΔfU + ΔfV) + (ΔfU - ΔfV) cos 2(φ - φ_ast)] / 2
    χ = π λ Δf s² + (π/2) Cs λ³ s⁴ - phase_shift - atan(Q0 / sqrt(1 - Q0²))
    CTF = -sin χ · exp(-B s² / 4)

with ``φ = atan2(k_y, k_x)`` measured from the image x axis (array columns) towards y
(array rows), as RELION does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryolens.core.fourier import freq_grid_2d

__all__ = ["CTFParams", "electron_wavelength", "ctf_phase_and_envelope", "ctf_2d", "ctf_1d", "phase_flip", "wiener_filter"]


def electron_wavelength(voltage_kv: float | torch.Tensor) -> float | torch.Tensor:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    if isinstance(v, torch.Tensor):
        return 12.2643247 / torch.sqrt(v * (1 + 0.978466e-6 * v))
    return 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))


@dataclass
class CTFParams:
    """Per-particle CTF parameters; each field is a scalar or a ``(B,)`` tensor.

    Attributes:
        defocus_u, defocus_v: Å, positive = underfocus (``rlnDefocusU/V``).
        defocus_angle: astigmatism azimuth in degrees (``rlnDefocusAngle``).
        voltage: kV; cs: mm; amplitude_contrast: fraction (``rlnAmplitudeContrast``).
        phase_shift: degrees (``rlnPhaseShift``); bfactor: Å² (``rlnCtfBfactor``);
        scale: multiplicative scale (``rlnCtfScalefactor``).
    """

    defocus_u: torch.Tensor
    defocus_v: torch.Tensor
    defocus_angle: torch.Tensor
    voltage: torch.Tensor | float = 300.0
    cs: torch.Tensor | float = 2.7
    amplitude_contrast: torch.Tensor | float = 0.1
    phase_shift: torch.Tensor | float = 0.0
    bfactor: torch.Tensor | float = 0.0
    scale: torch.Tensor | float = 1.0

    def as_tensors(self, device=None) -> dict[str, torch.Tensor]:
        """All fields as float32 ``(B,)`` tensors broadcast to a common batch size."""
        vals = {k: torch.as_tensor(getattr(self, k), dtype=torch.float32, device=device)
                for k in self.__dataclass_fields__}
        vals = dict(zip(vals, torch.broadcast_tensors(*[v.reshape(-1) for v in vals.values()])))
        return vals


def _chi_and_envelope(p: dict[str, torch.Tensor], s2: torch.Tensor, cos2: torch.Tensor | None,
                      sin2: torch.Tensor | None):
    """Phase χ and envelope; ``s2`` = |s|² (1/Å²) shaped ``(1 or B, *grid)``, cos/sin of 2φ ``grid``."""
    B = lambda t: t.reshape(-1, *([1] * (s2.ndim - 1)))  # noqa: E731 - broadcast (B,) over the grid
    lam = electron_wavelength(p["voltage"])
    mean = (p["defocus_u"] + p["defocus_v"]) / 2
    dev = (p["defocus_u"] - p["defocus_v"]) / 2
    if cos2 is None:
        dfz = -B(mean) * torch.ones_like(s2)
    else:
        a = torch.deg2rad(p["defocus_angle"])
        # cos 2(φ - a) = cos2φ cos2a + sin2φ sin2a
        dfz = -(B(mean) + B(dev) * (cos2 * B(torch.cos(2 * a)) + sin2 * B(torch.sin(2 * a))))
    q = p["amplitude_contrast"].clamp(-0.999999, 0.999999)
    k3 = torch.atan(q / torch.sqrt(1 - q * q))
    chi = (math.pi * B(lam) * dfz * s2 + (math.pi / 2) * B(p["cs"] * 1e7 * lam ** 3) * s2 * s2
           - B(torch.deg2rad(p["phase_shift"])) - B(k3))
    env = B(p["scale"]) * torch.exp(-B(p["bfactor"]) * s2 / 4)
    return chi, env


def ctf_phase_and_envelope(params: CTFParams, s2: torch.Tensor, cos2phi: torch.Tensor | None = None,
                           sin2phi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase χ (radians) and envelope (B-factor and scale) on any frequency grid.

    ``CTF = -sin(χ) · envelope``. ``s2`` is |s|² in 1/Å² shaped ``(1 or B, *grid)``;
    ``cos2phi``/``sin2phi`` are cos 2φ and sin 2φ on ``grid`` (None: the mean defocus,
    no astigmatism). For grids :func:`ctf_2d` does not cover, e.g. non-square micrographs.
    """
    return _chi_and_envelope(params.as_tensors(s2.device), s2, cos2phi, sin2phi)


def ctf_2d(params: CTFParams, *, box: int, pixel_size: float | torch.Tensor, rfft: bool = True,
           device=None) -> torch.Tensor:
    """CTF on the image Fourier grid for a batch of particles.

    Returns ``(B, box, box//2+1)`` (rfft layout, DC at index 0) or ``(B, box, box)``.
    ``pixel_size`` may be a scalar or a ``(B,)`` tensor (Å).
    """
    p = params.as_tensors(device)
    ky, kx = freq_grid_2d(box, rfft=rfft, device=device)
    apix = torch.as_tensor(pixel_size, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    sy = ky / (box * apix)
    sx = kx / (box * apix)
    s2 = sx * sx + sy * sy
    r2 = (kx * kx + ky * ky).clamp_min(1e-12)
    cos2 = (kx * kx - ky * ky) / r2  # cos 2φ without atan2
    sin2 = 2 * kx * ky / r2
    chi, env = _chi_and_envelope(p, s2, cos2, sin2)
    return -torch.sin(chi) * env


def ctf_1d(params: CTFParams, s: torch.Tensor) -> torch.Tensor:
    """Rotationally averaged (astigmatism-free, mean defocus) CTF at spatial frequencies ``s`` (1/Å).

    Returns ``(B, len(s))``.
    """
    p = params.as_tensors(s.device)
    chi, env = _chi_and_envelope(p, (s * s)[None], None, None)
    return -torch.sin(chi) * env


def phase_flip(f: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply Fourier images by the sign of the CTF (phase flipping)."""
    return f * torch.sign(ctf)


def wiener_filter(f: torch.Tensor, ctf: torch.Tensor, *, snr: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Single-image Wiener CTF correction ``F · CTF / (CTF² + 1/SNR)``."""
    return f * ctf / (ctf * ctf + 1.0 / snr)
