"""Counting-detector model shared by the micrograph and movie simulators.

Pure functions (tensors in and out). The detector blurs the signal by its MTF, then
counts electrons (Poisson); the noise is white, so DQE = MTF² (ideal counting). An
optional post-counting filter acts on signal and noise alike (e.g. the interpolation
of on-the-fly frame alignment). See :mod:`cryolens.simulate.micrographs` for the
image model these feed.
"""

from __future__ import annotations

import math

import torch

__all__ = ["detector_mtf", "gaussian_filter_rfft", "expose"]



def detector_mtf(shape: tuple[int, int], *, device=None, nyquist_gaussian: float = 0.8) -> torch.Tensor:
    """MTF of a counting detector on the rfft grid ``(H, W//2+1)`` of an ``(H, W)`` image.

    ``sinc(π ω_x / 2) · sinc(π ω_y / 2) · g^(ω²)`` with ω = frequency / Nyquist per axis
    (the square pixel aperture of an event-counting detector; 0.64 at Nyquist on an
    axis) times a mild Gaussian worth ``g = nyquist_gaussian`` at Nyquist (charge
    spread, centroiding error).
    """
    h, w = shape
    wy = torch.fft.fftfreq(h, device=device)[:, None] * 2
    wx = torch.fft.rfftfreq(w, device=device)[None, :] * 2
    return (torch.sinc(wx / 2) * torch.sinc(wy / 2)
            * torch.pow(torch.tensor(nyquist_gaussian, device=device), wx * wx + wy * wy)).float()


def gaussian_filter_rfft(shape: tuple[int, int], sigma: float, *, device=None) -> torch.Tensor:
    """Transfer function (rfft grid) of a real-space Gaussian blur of ``sigma`` pixels."""
    h, w = shape
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.exp(-2 * math.pi ** 2 * sigma ** 2 * (fx * fx + fy * fy))


def expose(contrast: torch.Tensor, *, dose_per_pixel: float, mtf: torch.Tensor | None = None,
           generator: torch.Generator | None = None, noise_filter: torch.Tensor | None = None) -> torch.Tensor:
    """Detector counts ``(H, W)`` float32: ``Poisson(dose_per_pixel · (1 + MTF ⊗ contrast))``.

    Args:
        contrast: ``(H, W)`` fractional intensity change (:class:`MicrographTruth`).
        dose_per_pixel: mean electrons per pixel (dose in e⁻/Å² × pixel_size²).
        mtf: rfft-layout ``(H, W//2+1)`` signal transfer (:func:`detector_mtf`) or None.
        generator: torch generator on the contrast's device (reproducible noise).
        noise_filter: optional rfft-layout filter applied to the counts afterwards (signal
            and noise alike, e.g. :func:`gaussian_filter_rfft` for interpolation blur).
    """
    c = contrast.float()
    if mtf is not None:
        c = torch.fft.irfft2(torch.fft.rfft2(c) * mtf, s=c.shape[-2:])
    rate = (dose_per_pixel * (1 + c)).clamp_min(0)
    counts = torch.poisson(rate, generator=generator)
    if noise_filter is not None:
        counts = torch.fft.irfft2(torch.fft.rfft2(counts) * noise_filter, s=c.shape[-2:])
    return counts.float()
