"""Sharpening: FSC weighting, Guinier plot and B-factor fit, B-factor, low-pass, spectral flattening, MTF, hand.

Conventions (RELION 3.1's ``relion_postprocess``):

- Fourier coefficients ``F`` are :func:`cryolens.core.fourier.ft3` of the map; shells are
  ``round(|k|)`` for integer ``k`` (cycles per box); ``s = |k| / (n · pixel_size)`` in 1/Å.
- Guinier plot: ``ln(mean |F| / n³)`` per shell against ``s² = 1/d²`` (Å⁻²), shells up to
  Nyquist (the ``/n³`` makes the values those RELION writes in ``data_guinier``).
- B-factor: a straight line ``ln|F| = a + slope · s²`` fitted between ``low_res`` (10 Å)
  and ``high_res`` gives ``B = 4 · slope`` (Å², negative for a blurred map). Applying a
  B-factor multiplies by ``exp(−B s²/4)``: the fitted (negative) B sharpens, a positive B
  blurs (the CTF envelope ``exp(−B s²/4)`` of ARCHITECTURE.md uses the same sign).
- FSC weighting (Rosenthal & Henderson 2003): ``sqrt(2·FSC / (1 + FSC))`` per shell, 0 from
  the first shell where the FSC falls below 1e-4 on.
- FOM weighting (cisTEM-style, SPA-NOTES.md): ``SSNR / (1 + SSNR)`` with the full map's
  ``SSNR = 2·FSC / (1 − FSC)``, i.e. ``2·FSC / (1 + FSC)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryolens.core.fourier import radial_filter, radius_3d, shell_average, shell_index
from cryolens.core.fsc import fsc_to_ssnr

__all__ = ["GuinierFit", "fsc_weights", "fom_weights", "apply_shell_weights", "guinier_curve", "fit_guinier",
           "apply_bfactor", "lowpass", "flatten_spectrum", "divide_by_mtf", "flip_hand"]

#: FSC below which RELION stops weighting and zeroes every shell beyond.
_FSC_FLOOR = 1e-4


@dataclass
class GuinierFit:
    """Straight line through a Guinier plot: ``ln|F| = intercept + slope · s²``.

    Attributes:
        slope: Å²; intercept: ln amplitude at s = 0; correlation: r² of the fitted points
        (what RELION writes as rlnCorrelationFitGuinierPlot); bfactor: ``4 · slope`` (Å²); low_res, high_res: the fitted range (Å);
        n_points: shells used.
    """

    slope: float
    intercept: float
    correlation: float
    bfactor: float
    low_res: float
    high_res: float
    n_points: int


def _shells(n: int, device) -> torch.Tensor:
    return shell_index(radius_3d(n, device=device))


def _cut_at_floor(curve: np.ndarray) -> np.ndarray:
    """Curve with every shell from the first one below the floor on set to 0 (shell 0 kept)."""
    c = np.asarray(curve, dtype=float).copy()
    below = np.nonzero(c < _FSC_FLOOR)[0]
    if len(below):
        c[below[0]:] = 0.0
    return np.clip(c, 0.0, 1.0)


def fsc_weights(curve: np.ndarray) -> np.ndarray:
    """RELION's FSC weighting ``sqrt(2·FSC/(1+FSC))`` per shell (0 from the first FSC < 1e-4 on)."""
    c = _cut_at_floor(curve)
    return np.sqrt(2 * c / (1 + c))


def fom_weights(curve: np.ndarray) -> np.ndarray:
    """Figure-of-merit weighting ``SSNR/(1+SSNR)`` of the full map (= ``2·FSC/(1+FSC)``), 0 past the floor."""
    c = _cut_at_floor(curve)
    ssnr = fsc_to_ssnr(c, full_map=True).double().numpy()
    return ssnr / (1 + ssnr)


def apply_shell_weights(f: torch.Tensor, weights: np.ndarray | torch.Tensor, *, beyond: float = 0.0) -> torch.Tensor:
    """Multiply rfft coefficients ``(n, n, n//2+1)`` by a weight per shell; shells past the array get ``beyond``."""
    n = f.shape[0]
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float32, device=f.device)
    sh = _shells(n, f.device)
    inside = sh < len(w)
    per = torch.where(inside, w[sh.clamp(max=len(w) - 1)], torch.full_like(w[:1], beyond))
    return f * per


def guinier_curve(f: torch.Tensor, *, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Guinier plot of rfft coefficients: ``(s² in Å⁻², ln(mean|F|/n³))`` for shells 0..n//2.

    Shells whose mean amplitude is 0 get NaN (RELION writes −99 there).
    """
    n = f.shape[0]
    nsh = n // 2 + 1
    mean_amp = shell_average(f.abs().float(), _shells(n, f.device), nsh).double().cpu().numpy() / n ** 3
    s2 = (np.arange(nsh) / (n * pixel_size)) ** 2
    with np.errstate(divide="ignore"):
        ln = np.where(mean_amp > 0, np.log(np.maximum(mean_amp, 1e-300)), np.nan)
    return s2, ln


def fit_guinier(s2: np.ndarray, ln_amp: np.ndarray, *, low_res: float = 10.0, high_res: float | None = None
                ) -> GuinierFit:
    """Least-squares line through the Guinier points with ``high_res <= d <= low_res`` (Å).

    ``high_res=None`` fits up to Nyquist; shells with NaN amplitudes (e.g. zeroed by FSC
    weighting) are left out, so with FSC-weighted amplitudes the fit ends where the FSC
    first falls to ~0 — what ``relion_postprocess --auto_bfac`` does.

    Raises:
        ValueError: fewer than 3 shells in the range.
    """
    s2 = np.asarray(s2, dtype=float)
    y = np.asarray(ln_amp, dtype=float)
    with np.errstate(divide="ignore"):
        d = np.where(s2 > 0, 1.0 / np.sqrt(np.maximum(s2, 1e-300)), np.inf)
    hi = 0.0 if high_res is None else float(high_res)
    use = (d <= low_res) & (d >= hi) & np.isfinite(y)
    if use.sum() < 3:
        upper = f"{hi:.3g} Å" if hi > 0 else "Nyquist"
        raise ValueError(f"fewer than 3 resolution shells with signal between {low_res:g} Å and {upper} "
                         "for the Guinier fit")
    x, yy = s2[use], y[use]
    slope, intercept = np.polyfit(x, yy, 1)
    r2 = float(np.corrcoef(x, yy)[0, 1] ** 2)
    return GuinierFit(float(slope), float(intercept), r2, float(4 * slope), float(low_res),
                      float(d[use].min()), int(use.sum()))


def apply_bfactor(f: torch.Tensor, bfactor: float, *, pixel_size: float) -> torch.Tensor:
    """Multiply rfft coefficients by ``exp(−B s²/4)`` (B in Å²; negative B sharpens)."""
    n = f.shape[0]
    s2 = (radius_3d(n, device=f.device) / (n * pixel_size)) ** 2
    return f * torch.exp(-bfactor * s2 / 4)


def lowpass(f: torch.Tensor, resolution: float, *, pixel_size: float, edge_shells: float = 2.0) -> torch.Tensor:
    """Low-pass rfft coefficients at ``resolution`` Å with a raised-cosine edge ``edge_shells`` wide (RELION's)."""
    n = f.shape[0]
    return f * radial_filter(radius_3d(n, device=f.device), n=n, pixel_size=pixel_size, high_res=resolution,
                             edge_width=edge_shells)


def flatten_spectrum(f: torch.Tensor, *, pixel_size: float, from_angstrom: float = 8.0) -> torch.Tensor:
    """cisTEM-style flattening: beyond ``from_angstrom`` every shell is scaled to that shell's mean amplitude.

    The spherically averaged amplitude is thus constant from ``from_angstrom`` to Nyquist and
    unchanged below it; combine with :func:`fom_weights` so that noise-dominated shells are
    weighted down.
    """
    n = f.shape[0]
    nsh = n // 2 + 1
    sh = _shells(n, f.device)
    amp = shell_average(f.abs().float(), sh, nsh).double()
    k0 = min(max(1, int(round(n * pixel_size / from_angstrom))), nsh - 1)
    scale = torch.ones(nsh, dtype=torch.float64, device=f.device)
    scale[k0:] = amp[k0] / amp[k0:].clamp_min(1e-30)
    return apply_shell_weights(f, scale.float(), beyond=float(scale[-1]))


def divide_by_mtf(f: torch.Tensor, mtf_frequency: np.ndarray, mtf_value: np.ndarray, *, pixel_size: float,
                  mtf_pixel_size: float | None = None) -> torch.Tensor:
    """Divide rfft coefficients by the detector MTF (RELION's ``--mtf``), up to Nyquist of the map.

    Args:
        mtf_frequency: ``rlnResolutionInversePixel`` of the MTF table (cycles per detector pixel, 0..0.5).
        mtf_value: ``rlnMtfValue`` (> 0).
        pixel_size: the map's pixel size (Å).
        mtf_pixel_size: the detector pixel size of the movies (Å); default ``pixel_size``.
    """
    n = f.shape[0]
    mp = float(mtf_pixel_size or pixel_size)
    nu = np.asarray(mtf_frequency, dtype=float) / mp  # 1/Å
    val = np.asarray(mtf_value, dtype=float)
    s = radius_3d(n, device=f.device) / (n * pixel_size)
    s_np = s.cpu().numpy()
    m = np.interp(s_np, nu, val, left=val[0], right=val[-1])
    m = torch.as_tensor(m, dtype=torch.float32, device=f.device)
    return torch.where(s < 1.0 / (2 * pixel_size), f / m, f)


def flip_hand(volume: torch.Tensor) -> torch.Tensor:
    """Mirror a map through the xy plane at the box centre: ``out[z] = in[(2c − z) mod n]``, ``c = n//2``.

    Inverts the handedness and keeps the centre voxel in place; applying it twice gives
    the input back.
    """
    n = volume.shape[-3]
    return torch.roll(torch.flip(volume, dims=(-3,)), shifts=1 if n % 2 == 0 else 0, dims=-3)
