"""M-step of 2D classification: noise spectrum, regularised class averages, resolution, recentring.

From the sums of :class:`cryolens.class2d.expectation.Accumulator` (image frame, per class
``k`` and psi ``j``), rotated into each class's frame (``Num_k(q) = Σ_j G_kj(R_j q)``,
``Den_k(q) = Σ_j D_kj(R_j q)``, :class:`cryolens.class2d.rotation.BandRotator`):

* noise: ``sigma²(shell)`` = the posterior-expected residual power per coefficient
  (:meth:`Accumulator.residual_power`), averaged over the shell and the images;
* signal prior: ``tau²_k(shell)`` from ``E|Num|² = tau² Den² + sigma² Den`` (least squares
  over the shell, floored at 0), so ``SSNR_k = tau²_k · <Den_k> / sigma²``; the class's
  estimated resolution is where its SSNR drops below 1 for two consecutive shells (RELION takes the
  first shell below 1, which a small particle's first Fourier minimum can fake);
* class average: ``A_k = Num_k / (Den_k + sigma² / (T · tau²_k))`` (``T`` = ``tau2_fudge``),
  zero beyond the band, where ``tau² = 0`` and at the Fourier origin (:func:`zero_dc`); in real
  space it is masked by the soft disc and, optionally, moved so that the centre of mass of its
  positive density is at the box centre, and its mean under the mask is removed again.

Why the origin is zeroed: the images' DC carries no particle signal (the CTF is near its
amplitude contrast there and each image's background level is arbitrary), so ``Num/Den`` at
the origin is a noisy ratio of small numbers. A class whose estimate came out large carried a
bright disc after masking (low frequencies that the CTF passes), which fitted blobs and dense
junk better than any view and pulled particles in: measured 2026-12-04 on 3 000 haemoglobin
particles (seed 5, box 64, SNR 0.05, 20 % junk, K 20), see the README's class2d section.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryolens.class2d.rotation import BandRotator
from cryolens.core.fourier import ft2, ift2, shift_phase
from cryolens.core.masks import ring_median
from cryolens.refine.pose_search import FrequencyBand

__all__ = ["ClassUpdate", "shell_mean", "update_classes", "resolution_shell", "band_to_images", "images_to_band",
           "recentre", "zero_dc", "zero_mean", "SSNR_RUN"]

#: The estimated resolution is where the SSNR drops below 1 for this many consecutive shells (see
#: :func:`resolution_shell`).
SSNR_RUN = 2


def shell_mean(values: torch.Tensor, band: FrequencyBand, nshells: int, weights: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``(..., M)`` band values -> ``(..., nshells)`` weighted means per shell (``w`` of the band times ``weights``;
    NaN where a shell has no weight)."""
    w = band.weight.to(values.dtype) if weights is None else band.weight.to(values.dtype) * weights
    w = torch.broadcast_to(w, values.shape)
    lead = values.shape[:-1]
    num = torch.zeros(*lead, nshells, dtype=values.dtype, device=values.device)
    den = torch.zeros(*lead, nshells, dtype=values.dtype, device=values.device)
    idx = band.shell.to(values.device).expand(*lead, -1)
    num.scatter_add_(-1, idx, values * w)
    den.scatter_add_(-1, idx, w)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, float("nan")))


@dataclass
class ClassUpdate:
    """Regularised class averages on the band and what they say.

    Attributes:
        averages: ``(K, M)`` complex class averages (class frame).
        ssnr: ``(K, nshells)`` spectral SNR per class (NaN beyond the band).
        resolution: ``(K,)`` Å where the SSNR drops below 1 to stay (:func:`resolution_shell`; the band limit
            if it never does inside the band; inf for an empty class).
    """

    averages: torch.Tensor
    ssnr: torch.Tensor
    resolution: torch.Tensor


def update_classes(g: torch.Tensor, d: torch.Tensor, psi_matrices: torch.Tensor, rotator: BandRotator,
                   sigma2: torch.Tensor, *, tau2_fudge: float, pixel_size: float, chunk: int = 256) -> ClassUpdate:
    """Class averages from the image-frame sums ``g`` (complex) and ``d`` (real), both ``(K, J, M)``.

    Args:
        psi_matrices: ``(J, 2, 2)`` the in-plane rotations of the psi grid (image = class at ``Rᵀ q``).
        sigma2: ``(nshells,)`` noise power per coefficient and shell (``n//2 + 1`` shells).
        tau2_fudge: RELION's ``T``; pixel_size: Å (for the resolution).
    """
    k, j, m = g.shape
    band = rotator.band
    mats = psi_matrices.to(g.device)[None].expand(k, j, 2, 2).reshape(k * j, 1, 2, 2)
    num = torch.zeros(k * j, m, dtype=torch.complex64, device=g.device)
    den = torch.zeros(k * j, m, dtype=torch.float32, device=g.device)
    gf, df = g.reshape(k * j, m), d.reshape(k * j, m).to(torch.complex64)
    for a in range(0, k * j, chunk):
        num[a:a + chunk] = rotator.rotate(gf[a:a + chunk], mats[a:a + chunk])[:, 0]
        den[a:a + chunk] = rotator.rotate(df[a:a + chunk], mats[a:a + chunk])[:, 0].real
    num = num.reshape(k, j, m).sum(1)
    den = den.reshape(k, j, m).sum(1).clamp_min(0.0)
    nsh = sigma2.numel()
    s2 = sigma2.to(g.device)[band.shell.clamp_max(nsh - 1)]  # (M,)
    signal = (num.real ** 2 + num.imag ** 2) - s2 * den
    w = band.weight.to(g.device)
    idx = band.shell.to(g.device).expand(k, -1)
    top = torch.zeros(k, nsh, device=g.device).scatter_add_(1, idx, signal * w)
    bottom = torch.zeros(k, nsh, device=g.device).scatter_add_(1, idx, den * den * w)
    tau2 = torch.where(bottom > 0, top / bottom.clamp_min(1e-30), torch.zeros_like(top)).clamp_min(0.0)
    tau2_q = tau2.gather(1, idx)
    reg = torch.where(tau2_q > 0, s2 / (tau2_fudge * tau2_q.clamp_min(1e-30)), torch.full_like(tau2_q, float("inf")))
    avg = zero_dc(torch.where(torch.isfinite(reg), num / (den + reg), torch.zeros_like(num)), band)
    mean_den = shell_mean(den, band, nsh)
    ssnr = tau2 * mean_den / sigma2.to(g.device)
    ssnr[:, 0] = float("inf")
    res = torch.empty(k, device=g.device)
    r_band = int(torch.ceil(torch.tensor(band.r_max))) - 1
    for c in range(k):
        shell = resolution_shell(ssnr[c, 1:r_band + 1])
        if den[c].sum() <= 0:
            res[c] = float("inf")
        elif shell is not None:
            res[c] = band.n * pixel_size / shell
        else:
            res[c] = band.n * pixel_size / band.r_max
    return ClassUpdate(avg, ssnr, res)


def resolution_shell(ssnr: torch.Tensor, *, run: int = SSNR_RUN) -> int | None:
    """The first shell (1-based index into ``ssnr``, shells 1, 2, ...) from which the SSNR stays below 1 for
    ``run`` consecutive shells (or up to the last shell); None if there is none.

    RELION takes the first shell below 1; a single-shell dip (a small particle's first Fourier minimum, e.g.
    haemoglobin's near 45 Å) then reads as the class's resolution although the SSNR is above 1 beyond it.
    """
    below = ~(ssnr >= 1.0)  # NaN (no signal estimate) counts as below
    m = below.numel()
    for i in range(m):
        if bool(below[i:min(m, i + run)].all()):
            return i + 1
    return None


def zero_dc(values: torch.Tensor, band: FrequencyBand) -> torch.Tensor:
    """``(..., M)`` band values with the Fourier origin (``k = 0``, shell 0) set to 0 (a copy)."""
    return values.masked_fill(band.shell.to(values.device) == 0, 0)


def zero_mean(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(K, n, n)`` images masked by ``mask`` ``(n, n)`` minus ``c_k · mask`` with ``c_k`` chosen so that each sums to
    0 (its Fourier origin is 0); outside the mask they stay 0."""
    m = mask.to(images.dtype)
    return images - (images.sum((-2, -1), keepdim=True) / m.sum().clamp_min(1e-30)) * m


def flat_background(images: torch.Tensor, mask: torch.Tensor, radius_px: float) -> torch.Tensor:
    """``(K, n, n)`` masked images minus, each, its :func:`cryolens.core.masks.ring_median` at ``radius_px`` times
    ``mask`` ``(n, n)``: the background around the particle reads 0 and the particle positive, as in
    RELION's averages.

    The averages scored stay zero-mean under the mask (:func:`zero_mean`); written that way, a class average is its
    particle minus a disc, which changes its lowest frequencies: measured 2026-12-05 on the four largest classes of
    1 000 haemoglobin particles (K 20, ``--seed 0``), the NCC (15 Å) with the average of the members' clean
    projections at the classification's poses read 0.84-0.85 zero-mean and 0.97 with the ring at 0 (RELION 3.1's
    largest classes: 0.91-0.96)."""
    return images - ring_median(images, radius_px)[:, None, None] * mask.to(images.dtype)


def band_to_images(values: torch.Tensor, band: FrequencyBand) -> torch.Tensor:
    """``(K, M)`` band coefficients -> ``(K, n, n)`` real centred images (zero beyond the band)."""
    n = band.n
    grid = torch.zeros(values.shape[0], n * (n // 2 + 1), dtype=torch.complex64, device=values.device)
    grid[:, band.flat] = values.to(torch.complex64)
    return ift2(grid.reshape(-1, n, n // 2 + 1), n)


def images_to_band(images: torch.Tensor, band: FrequencyBand) -> torch.Tensor:
    """``(K, n, n)`` real centred images -> ``(K, M)`` band coefficients."""
    return band.gather(ft2(images))


def recentre(images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each image so that the centre of mass of its positive, masked density sits at the box centre.

    Returns:
        the moved images (Fourier shift, same shape) and ``(K, 2)`` the shifts applied ``(dx, dy)`` in px.
    """
    k, n, _ = images.shape
    c = torch.arange(n, device=images.device, dtype=torch.float32) - n // 2
    dens = images.clamp_min(0.0) * mask
    total = dens.sum(dim=(1, 2))
    ok = total > 0
    cx = torch.where(ok, (dens * c[None, None, :]).sum(dim=(1, 2)) / total.clamp_min(1e-30), torch.zeros_like(total))
    cy = torch.where(ok, (dens * c[None, :, None]).sum(dim=(1, 2)) / total.clamp_min(1e-30), torch.zeros_like(total))
    shifts = -torch.stack([cx, cy], dim=1)
    moved = ift2(shift_phase(ft2(images), shifts, n), n)
    return moved, shifts
