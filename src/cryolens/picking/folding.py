"""Fourier-side work of the template bank (:func:`cryolens.picking.bank.bank_scores`): the basis correlation maps on
every other pixel (folded spectra, quarter-size inverse FFTs: :func:`strided_maps`) and the filtered basis' Gram
matrix on a small grid (:func:`filtered_gram`)."""

from __future__ import annotations

import torch

from cryolens.core.fourier import good_fft_size, irfftn
from cryolens.picking.templates import wrap_centred

__all__ = ["strided_maps", "paired_spectrum", "folded_quadrants", "gram_grid", "filtered_gram"]


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
    :func:`folded_quadrants` (the basis' kept per shape): a product and three multiply-adds."""
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
    bq, fq = bank.basis_ft_quadrants(shape), folded_quadrants(filt, shape)
    for start in range(0, q, batch):
        z = bq[0, start:start + batch] * fq[0]
        for k in range(1, 4):  # in place (a product and three sums in one pass each: ~1.3x faster than folding after)
            z.addcmul_(bq[k, start:start + batch], fq[k])
        maps[start:start + batch] = irfftn(z, s=(hc, wc)).reshape(-1, hc * wc) / 4
    return maps


def folded_quadrants(ft: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(4, ..., H/2, n)``: the four blocks of :func:`paired_spectrum` ``(..., H, 2n)`` that fold onto one another
    at stride 2 (rows ``r`` and ``r + H/2``, the two column halves), each contiguous: the half spectrum of the even
    samples of the correlation of two images is the sum over the blocks of the products of theirs."""
    p = paired_spectrum(ft, shape)
    hc, n = shape[0] // 2, p.shape[-1] // 2
    return torch.stack([p[..., a * hc:(a + 1) * hc, b * n:(b + 1) * n] for a in (0, 1) for b in (0, 1)])


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


def gram_grid(m: int) -> int:
    """Side of the small grid on which :func:`filtered_gram` works for ``m × m`` images: it holds the linear
    convolution of an image with the kernel's offsets below ``m`` (``3m - 2`` pixels) without wrapping."""
    return good_fft_size(3 * m)


def filtered_gram(basis: torch.Tensor, transfer: torch.Tensor, shape: tuple[int, int], *,
                  basis_ft: torch.Tensor | None = None, split: int | None = None) -> torch.Tensor:
    """``(r, r)`` Gram matrix ``G_ij = Σ b'_i·b'_j`` of the ``(r, m, m)`` images ``basis`` (centred at ``m//2``)
    after the real filter ``transfer`` ``(H, W//2+1)`` (its DC term taken as 0: zero-mean images) on the
    ``(H, W)`` grid.

    By Parseval ``G_ij = Σ_u b_i(u)·(b_j ⊛ κ)(u)`` with the kernel ``κ`` = inverse transform of
    ``transfer²``; the images span ``m`` pixels, so only ``κ``'s offsets below ``m`` enter, and on a small grid
    (:func:`gram_grid`) that holds their linear convolution that sum is, by Parseval again, the product of the
    basis' small transforms weighted by ``κ``'s (exact; ``basis_ft``: those transforms,
    :meth:`cryolens.picking.bank.TemplateBank.basis_ft_small`, computed here if not given). Micrographs too small for
    that use their own spectrum. ``split``: the first ``split`` images are even and the rest odd about their centre
    (:mod:`cryolens.picking.reflection`): their transforms are real and imaginary, the filter keeps them orthogonal,
    and only the two diagonal blocks are formed (a quarter of the products).
    """
    h, w = shape
    r, m = basis.shape[0], basis.shape[-1]
    t2 = transfer.square()
    t2[0, 0] = 0
    s = gram_grid(m)
    if s > min(h, w):
        return _half_spectrum_gram(torch.fft.rfft2(wrap_centred(basis, shape)), t2, shape, split)
    kern = irfftn(t2, s=shape)
    off = torch.arange(-(m - 1), m, device=basis.device)
    kwin = kern[(off % h)[:, None], (off % w)[None, :]]  # offsets -(m-1)..m-1, centred at m-1
    kft = torch.fft.rfft2(wrap_centred(kwin[None], (s, s)))[0].real  # an even kernel: a real transform
    bft = basis_ft if basis_ft is not None else torch.fft.rfft2(wrap_centred(basis, (s, s)))
    return _half_spectrum_gram(bft, kft, (s, s), split)


def _half_spectrum_gram(bft: torch.Tensor, weight: torch.Tensor, shape: tuple[int, int],
                        split: int | None = None) -> torch.Tensor:
    """``Σ x_i·(x_j ⊛ k)`` for real images with half spectra ``bft`` ``(r, H, W//2+1)`` and a real, even kernel of
    transform ``weight``: Parseval over the half spectrum (columns other than DC and Nyquist stand for two); with
    ``split``, the even images' real parts and the odd ones' imaginary parts, block by block."""
    h, w = shape
    v = weight * (2.0 / (h * w))
    v[:, 0] *= 0.5
    if w % 2 == 0:
        v[:, -1] *= 0.5
    if split is None:
        x = torch.view_as_real(bft).reshape(bft.shape[0], -1)
        return (x * v.reshape(-1).repeat_interleave(2)) @ x.T
    v = v.reshape(-1)
    gram = torch.zeros((bft.shape[0], bft.shape[0]), dtype=v.dtype, device=v.device)
    for block, part in ((slice(0, split), torch.real), (slice(split, None), torch.imag)):
        x = part(bft[block]).reshape(-1, v.numel())
        gram[block, block] = (x * v) @ x.T
    return gram
