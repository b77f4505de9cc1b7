"""Fourier-space kernels of the pickers: rectangular Fourier cropping, whitening, CTF on a micrograph
grid, blob and Laplacian-of-Gaussian filter banks, local statistics.

Pure, batched, device-agnostic torch functions. Images are ``(H, W)`` real tensors (rows y,
columns x); their transforms are unshifted ``rfft2`` arrays ``(..., H, W//2+1)`` with DC at
index 0. Frequencies are in cycles/Å, pixel sizes in Å.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cryolens.core.ctf import CTFParams, ctf_phase_and_envelope
from cryolens.core.fourier import good_fft_size, irfftn, rfft_polar_grid

__all__ = [
    "fourier_crop_2d", "radial_spectrum", "whitening_filter", "micrograph_ctf",
    "sphere_projection_ft", "log_filters", "local_mean_sd", "reflect_pad",
]


def fourier_crop_2d(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resample an ``(H, W)`` image to ``shape = (h, w)`` (h ≤ H, w ≤ W) by cropping its spectrum.

    Pixel ``(i, j)`` of the result lies at ``(i·H/h, j·W/w)`` of the input (0-based); values are
    kept (not summed), so a constant image stays the same constant. The new Nyquist terms are
    dropped (the result stays real and unaliased).
    """
    H, W = image.shape[-2:]
    h, w = shape
    if (h, w) == (H, W):
        return image
    if h > H or w > W:
        raise ValueError(f"cannot Fourier-crop {H}x{W} to a larger {h}x{w}")
    # rfft2 in two passes, the second on the kept columns only (a third to a half of the work)
    f = torch.fft.fft(torch.fft.rfft(image, dim=-1)[..., :w // 2 + 1], dim=-2)
    hy = (h - 1) // 2  # frequencies |ky| <= hy kept on both sides (Nyquist of an even h dropped)
    rows = torch.cat([f[..., :hy + 1, :], torch.zeros_like(f[..., :h - 2 * hy - 1, :]), f[..., H - hy:, :]], dim=-2)
    cols = rows[..., :w // 2 + 1].clone()
    if w % 2 == 0:
        cols[..., -1] = 0
    return irfftn(cols, s=(h, w)) * (h * w / (H * W))


def radial_spectrum(f: torch.Tensor, shape: tuple[int, int], *, nbins: int | None = None) -> torch.Tensor:
    """The radially averaged power ``|f|²`` of an rfft image, returned on the same rfft grid.

    Radius in units of the shorter axis' frequency step (isotropic in cycles/Å for square
    pixels); ``nbins`` shells (default: half the shorter side). Smooths each shell value with
    its neighbours so that single noisy shells do not spike the whitening.
    """
    h, w = shape
    ky = torch.fft.fftfreq(h, device=f.device)[:, None]
    kx = torch.fft.rfftfreq(w, device=f.device)[None, :]
    r = torch.sqrt(kx * kx + ky * ky) * min(h, w)
    nb = nbins or min(h, w) // 2 + 1
    idx = r.round().long().clamp_max(nb - 1)
    p = (f.real ** 2 + f.imag ** 2).reshape(-1)
    num = torch.zeros(nb, device=f.device).index_add_(0, idx.reshape(-1), p)
    den = torch.zeros(nb, device=f.device).index_add_(0, idx.reshape(-1), torch.ones_like(p))
    prof = num / den.clamp_min(1)
    prof = F.avg_pool1d(F.pad(prof[None, None], (1, 1), mode="replicate"), 3, stride=1)[0, 0]
    return prof[idx]


def whitening_filter(f: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``1/sqrt(P(|s|))``: flattens the image's own radially averaged power spectrum (DC set to 0)."""
    p = radial_spectrum(f, shape)
    wf = torch.rsqrt(p.clamp_min(p.max() * 1e-12))
    wf[0, 0] = 0
    return wf


def micrograph_ctf(ctf: CTFParams, shape: tuple[int, int], pixel_size: float, device=None, *,
                   grid: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The CTF (:mod:`cryolens.core.ctf`, RELION's form) on the rfft grid of an ``(H, W)`` image.

    ``grid``: that grid's :func:`cryolens.core.fourier.rfft_polar_grid` if already at hand."""
    s2, cos2, sin2 = grid if grid is not None else rfft_polar_grid(shape, pixel_size, device)
    chi, env = ctf_phase_and_envelope(ctf, s2[None], cos2, sin2)
    return (-torch.sin(chi) * env)[0]


def sphere_projection_ft(radii: torch.Tensor, shape: tuple[int, int], pixel_size: float, device=None, *,
                         cavities: torch.Tensor | None = None) -> torch.Tensor:
    """Transforms of projected uniform spheres ``sqrt(r² - ρ²)`` centred at pixel (0, 0).

    Args:
        radii: ``(R,)`` sphere radii in Å.
        shape: ``(H, W)`` of the image grid; pixel_size: Å.
        cavities: ``(R,)`` radii in Å of a concentric empty cavity in each sphere (a shell: its
            projection is ``sqrt(r² - ρ²) - sqrt(c² - ρ²)``); None or 0: filled.

    Returns:
        ``(R, H, W//2+1)`` complex64 transforms, each normalised to unit energy (Σ|t|² = 1 in
        real space), so correlating a white-noise image of unit variance gives unit variance.
    """
    h, w = shape
    yy = torch.fft.fftfreq(h, d=1.0 / h, device=device)[:, None] * pixel_size  # signed offsets, Å
    xx = torch.fft.fftfreq(w, d=1.0 / w, device=device)[None, :] * pixel_size
    rho2 = (xx * xx + yy * yy)[None]
    r = radii.to(device=device, dtype=torch.float32)[:, None, None]
    t = torch.sqrt((r * r - rho2).clamp_min(0))
    if cavities is not None:
        c = cavities.to(device=device, dtype=torch.float32)[:, None, None]
        t = t - torch.sqrt((c * c - rho2).clamp_min(0))
    t = t / t.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(1e-20)
    return torch.fft.rfft2(t)


def log_filters(sigmas: torch.Tensor, shape: tuple[int, int], pixel_size: float, device=None) -> torch.Tensor:
    """Scale-normalised Laplacian-of-Gaussian filters ``σ²·∇²G_σ`` in Fourier space, negated.

    ``-σ² ∇²G`` responds positively at the centre of a bright blob; a disc of radius ``r``
    gives its strongest response at ``σ ≈ r/√2``. Args: ``sigmas (S,)`` in Å; returns
    ``(S, H, W//2+1)`` real filters (multiply an rfft image by them).
    """
    s2 = rfft_polar_grid(shape, pixel_size, device)[0]
    sg = sigmas.to(device=device, dtype=torch.float32)[:, None, None]
    return sg * sg * 4 * math.pi ** 2 * s2[None] * torch.exp(-2 * math.pi ** 2 * sg * sg * s2[None])


def reflect_pad(image: torch.Tensor, pad: int) -> torch.Tensor:
    """``(H, W)`` image mirrored by ``pad`` pixels on every side (fewer if the image is smaller)."""
    p = max(0, min(int(pad), image.shape[-1] - 1, image.shape[-2] - 1))
    if p == 0:
        return image
    return F.pad(image[None, None], (p, p, p, p), mode="reflect")[0, 0]


def local_mean_sd(image: torch.Tensor, *, sigma_px: float, step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-weighted local mean and standard deviation of an ``(H, W)`` image (σ in pixels).

    Computed in Fourier space on a mirrored copy (no wrap-around at the borders). ``step > 1``
    returns the maps at every ``step``-th pixel only, ``(ceil(H/step), ceil(W/step))`` with pixel
    ``(i, j)`` at ``(i·step, j·step)`` of the image, by cropping the smoothed spectrum (exact while
    the Gaussian is negligible beyond the coarse Nyquist frequency: σ ≥ ~2 × ``step``). The mirrored
    copy is extended at its far edges to fast FFT lengths.
    """
    H, W = image.shape[-2:]
    pad = min(step * math.ceil(math.ceil(3 * sigma_px) / step), H - 1, W - 1)
    pad -= pad % step
    # padded sizes: multiples of step whose FFTs are fast at both sizes (prime lengths are several times slower)
    eh, ew = (step * good_fft_size(-(-(n + 2 * pad) // step)) - n - 2 * pad for n in (H, W))
    if pad + max(eh, ew) >= min(H, W):
        step, eh, ew = 1, 0, 0
    x = F.pad(image[None, None], (pad, pad + ew, pad, pad + eh), mode="reflect")[0, 0] if pad else image
    h, w = x.shape
    ky = torch.fft.fftfreq(h, device=x.device)[:, None]
    kx = torch.fft.rfftfreq(w, device=x.device)[None, :]
    g = torch.exp(-2 * math.pi ** 2 * sigma_px ** 2 * (kx * kx + ky * ky))
    f = torch.fft.rfft2(torch.stack([x, x * x])) * g
    if step > 1:  # keep |k| below the coarse Nyquist frequency
        hc, wc = h // step, w // step
        f = torch.cat([f[:, :hc // 2], f[:, h - (hc - hc // 2):]], dim=1)[:, :, :wc // 2 + 1]
        h, w, f = hc, wc, f / step ** 2
    o = pad // step
    both = irfftn(f, s=(h, w))[:, o:o + -(-H // step), o:o + -(-W // step)]
    mean = both[0]
    return mean, (both[1] - mean * mean).clamp_min(0).sqrt()
