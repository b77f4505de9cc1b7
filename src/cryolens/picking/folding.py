"""The template bank's basis correlation maps on every other pixel: folded spectra, quarter-size inverse FFTs
(:func:`strided_maps`, for :func:`cryolens.picking.bank.bank_scores`)."""

from __future__ import annotations

import torch

from cryolens.core.fourier import irfftn

__all__ = ["strided_maps", "paired_spectrum"]


def strided_maps(bank, filt: torch.Tensor, shape: tuple[int, int], stride: int = 1,
                 origin: tuple[int, int] = (0, 0), *, batch: int = 16) -> torch.Tensor:
    """``(q, h·w)`` correlations ``irfft2(conj(B)·filt)`` of the basis images ``B`` of ``bank``
    (:meth:`cryolens.picking.bank.TemplateBank.basis_ft_conj`) with the filtered image whose half spectrum is
    ``filt``, at the pixels ``(origin[0] + stride·i, origin[1] + stride·j)`` of the ``(H, W)`` grid only
    (``0 <= origin < stride``).

    Taking every ``stride``-th sample of a map folds its spectrum (the sum of its ``stride²`` shifted copies; the
    origin a phase ramp applied first), so each map costs one inverse FFT of ``(H/stride, W/stride)`` instead of
    ``(H, W)`` (exact; a grid ``stride`` does not divide forms the full maps and samples them). ``batch`` maps at
    a time (in cache: ~2x cheaper than all at once at q ~ 100). Folded for ``stride`` 2 on even grids, from
    :func:`paired_spectrum` forms (the basis' kept per shape): one product, two sums."""
    h, w = shape
    s = stride
    r0, c0 = origin
    q = bank.basis.shape[0]
    hc, wc = len(range(r0, h, s)), len(range(c0, w, s))
    maps = torch.empty((q, hc * wc), device=filt.device)
    if s != 2 or h % 2 or w % 2:  # the full maps, sampled
        bft = bank.basis_ft_conj(shape)
        for start in range(0, q, batch):
            full = irfftn(bft[start:start + batch] * filt, s=shape)
            maps[start:start + batch] = full[:, r0::s, c0::s].reshape(-1, hc * wc)
        return maps
    if r0 or c0:  # sample from the origin: shift the image by it (a phase ramp)
        ky = torch.fft.fftfreq(h, device=filt.device)[:, None]
        kx = torch.fft.rfftfreq(w, device=filt.device)[None, :]
        filt = filt * torch.polar(torch.ones((), device=filt.device), 2 * torch.pi * (ky * r0 + kx * c0))
    bp, fp = bank.basis_ft_paired(shape), paired_spectrum(filt, shape)
    n = wc // 2 + 1
    for start in range(0, q, batch):
        prod = bp[start:start + batch] * fp
        z = prod[:, :hc] + prod[:, hc:]  # rows folded: (b, hc, 2n)
        maps[start:start + batch] = irfftn(z[:, :, :n] + z[:, :, n:], s=(hc, wc)).reshape(-1, hc * wc) / 4
    return maps


def paired_spectrum(ft: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(..., H, 2n)`` from the half spectrum ``ft`` ``(..., H, W//2+1)`` of real ``(H, W)`` images (``H, W`` even,
    ``n = W//4 + 1``): columns ``0..n-1`` of ``ft``, then at row ``r`` and column ``n + k`` the conjugate of ``ft``
    at row ``-r`` and column ``W/2 - k`` (the full spectrum's column ``W/2 + k``). A product of two such forms holds,
    side by side, the two column halves that fold onto the half spectrum of every other column; summed with the rows
    ``r`` and ``r + H/2``, the spectrum of the samples at even rows and columns (:func:`strided_maps`)."""
    h, w = shape
    wc = w // 2
    n = wc // 2 + 1
    rows = (-torch.arange(h, device=ft.device)) % h
    mirror = ft.index_select(-2, rows)[..., wc - n + 1:wc + 1].flip(-1).conj()
    return torch.cat([ft[..., :n], mirror], dim=-1)
