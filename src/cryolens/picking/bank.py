"""A low-rank bank of templates for fast template matching.

The rotated, masked templates of :func:`cryolens.picking.templates.prepare_templates` (``K`` of
them, e.g. 48 projections × 36 in-plane angles) are strongly correlated. Their singular value
decomposition ``T_k ≈ Σ_j A_kj·B_j`` over ``r ≪ K`` basis images ``B_j`` keeps all but a small
fraction of their energy, so the image is correlated with the ``r`` basis images only (``r``
FFTs instead of ``K``) and every template's correlation is the matrix product ``A·M`` of the
coefficients with the ``r`` basis maps. The CTF and whitening (``transfer``) act on the image
instead of each template, so the basis transforms do not depend on the micrograph and are kept
across micrographs of one shape; each template's norm after the transfer is ``√(aₖᵀ G aₖ)`` with
the ``r × r`` Gram matrix ``G`` of the filtered basis (Parseval), exact for the truncated template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cryolens.picking.templates import local_sd_denominator, wrap_centred

__all__ = ["TemplateBank", "template_bank", "correlate_bank", "cached"]


@dataclass
class TemplateBank:
    """Templates and their low-rank factorisation ``templates ≈ coeffs @ basis``.

    Attributes:
        templates: ``(K, m, m)`` prepared templates (zero mean in their mask), picking pixels.
        coeffs: ``(K, r)`` coefficients: ``U·S`` of the SVD (or ``U`` of the band-passed templates' SVD).
        basis: ``(r, m, m)`` basis images: the orthonormal ``Vᵀ`` (or ``Uᵀ·templates``, see :func:`template_bank`).
        energy: fraction of the templates' summed energy that the ``r`` basis images keep.
    """

    templates: torch.Tensor
    coeffs: torch.Tensor
    basis: torch.Tensor
    energy: float
    transforms: dict = field(default_factory=dict, repr=False)

    def basis_ft_conj(self, shape: tuple[int, int]) -> torch.Tensor:
        """``(r, H, W//2+1)`` complex conjugate of the rfft2 of the basis images centred at pixel (0, 0) of an
        ``(H, W)`` grid (kept per shape; conjugated in memory, so correlations need no conjugating copy)."""
        key = (tuple(shape), self.basis.device)
        ft = self.transforms.get(key)
        if ft is None:
            ft = torch.fft.rfft2(wrap_centred(self.basis, shape)).conj_physical()
            self.transforms = {key: ft}  # one shape at a time (a dataset's micrographs share it); swapped whole
        return ft


def template_bank(templates: torch.Tensor, *, tolerance: float = 1e-3,
                  band_px: tuple[float, float] | None = None) -> TemplateBank:
    """Factorise ``(K, m, m)`` prepared templates, keeping the fewest basis images whose discarded energy
    (sum of squared singular values left out) is at most ``tolerance`` of the total.

    ``band_px = (low, high)`` (pixels): measure that energy after the picker's band-pass (Gaussian low-pass
    ``exp(-s²low²/2)``, high-pass ``1 - exp(-s²high²/2)``, s in cycles/pixel), the band the correlation sees:
    the SVD of the band-passed templates ``T_b ≈ U·S·V_bᵀ`` gives the coefficients ``U`` and the basis
    ``Uᵀ·T`` (unfiltered, not orthonormal), whose band-passed form is the best rank-``r`` approximation in
    that band. Fine detail outside the band, which varies most between rotations, then costs no basis images.
    """
    k, m = templates.shape[0], templates.shape[-1]
    x = templates.reshape(k, m * m).double()
    xb = x
    if band_px is not None:
        low, high = band_px
        f = torch.fft.fftfreq(m, device=templates.device, dtype=torch.float64)
        s2 = f[:, None] ** 2 + f[None, :] ** 2
        g = (1 - torch.exp(-s2 * high * high / 2)) * torch.exp(-s2 * low * low / 2)
        xb = torch.fft.ifft2(torch.fft.fft2(templates.double()) * g).real.reshape(k, m * m)
    u, s, vh = torch.linalg.svd(xb, full_matrices=False)
    e = s.square()
    left = 1.0 - torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)  # energy discarded when keeping the first i+1
    r = min(int((left > tolerance).sum()) + 1, s.numel())
    # unfiltered: U·S and the orthonormal Vᵀ; band-passed: U and Uᵀ·T (so that coeffs @ basis = U·Uᵀ·T)
    coeffs, basis = (u[:, :r] * s[:r], vh[:r]) if band_px is None else (u[:, :r], u[:, :r].T @ x)
    return TemplateBank(templates=templates, coeffs=coeffs.float(), basis=basis.reshape(r, m, m).float(),
                        energy=float(1.0 - left[r - 1]))


def correlate_bank(image_ft: torch.Tensor, shape: tuple[int, int], bank: TemplateBank, *, transfer: torch.Tensor,
                   mask_radius_px: float, where: torch.Tensor | None = None, chunk: int = 4096,
                   progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best normalised cross-correlation over the bank's templates at every pixel.

    The same score as :func:`cryolens.picking.templates.correlate_templates` (templates through
    ``transfer``, made zero-mean, NCC with the image's local SD over the disc of ``mask_radius_px``)
    for the rank-``r`` templates ``coeffs @ basis``.

    Args:
        image_ft: rfft2 of the (whitened) image ``(H, W//2+1)``; shape: ``(H, W)``.
        bank: from :func:`template_bank`; transfer: ``(H, W//2+1)`` real filter for the templates.
        where: ``(H, W)`` bool, the pixels to score (default all); the others get the median score of
            those scored (the picker needs scores only where it may pick, and around).
        chunk: pixels per matrix product (bounds memory: ``K·chunk`` values).
        progress: ``progress(done, total)`` after each chunk of pixels.

    Returns:
        ``(best, index, denom)`` as :func:`cryolens.picking.templates.correlate_templates`.
    """
    h, w = shape
    denom = local_sd_denominator(image_ft, shape, mask_radius_px)
    bft = bank.basis_ft_conj(shape)  # conj(B)
    filt = image_ft * transfer
    filt[0, 0] = 0  # zero-mean templates after the transfer
    maps = torch.fft.irfft2(bft * filt, s=(h, w)).reshape(bft.shape[0], h * w)  # correlations with the basis
    # Gram matrix of the basis through the transfer (Parseval over the half spectrum), one real product:
    # G_ij = Σ_f v(f)·(Re B_i Re B_j + Im B_i Im B_j), v = transfer²·(2 for the columns that stand for two)
    v = transfer.square() * (2.0 / (h * w))
    v[:, 0] *= 0.5
    if w % 2 == 0:
        v[:, -1] *= 0.5
    v[0, 0] = 0
    x = torch.view_as_real(bft).reshape(bft.shape[0], -1)  # (r, 2F) without a copy (conj(B) gives the same G)
    gram = (x * v.reshape(-1).repeat_interleave(2)) @ x.T
    a = bank.coeffs.to(image_ft.device)
    norms = ((a @ gram) * a).sum(dim=1).clamp_min(1e-30).sqrt()
    ant = (a / norms[:, None]).T.contiguous()  # (r, K)
    pix = torch.nonzero(where.reshape(-1))[:, 0] if where is not None else None
    rows = (maps if pix is None else maps[:, pix]).T.contiguous()  # (pixels, r): one gather, contiguous rows
    total = rows.shape[0]
    best = torch.empty(total, device=image_ft.device)
    index = torch.empty(total, dtype=torch.long, device=image_ft.device)
    for start in range(0, total, chunk):  # (chunk, K) products: the max runs along contiguous rows
        val, arg = (rows[start:start + chunk] @ ant).max(dim=1)
        best[start:start + chunk], index[start:start + chunk] = val, arg
        if progress is not None:
            progress(min(start + chunk, total), total)
    if pix is None:
        return best.reshape(h, w) / denom, index.reshape(h, w), denom
    ncc = best / denom.reshape(-1)[pix]
    full = torch.full((h * w,), float(ncc.median()) if total else 0.0, device=best.device)
    full_index = torch.zeros(h * w, dtype=torch.long, device=best.device)
    full[pix], full_index[pix] = ncc, index
    return full.reshape(h, w), full_index.reshape(h, w), denom


_CACHE: list = []


def cached(source: torch.Tensor, key: tuple, build: Callable[[], object]):
    """``build()`` for ``(source, key)``, reused while the same tensor object (unchanged in place) comes with the
    same key: the templates a job passes for every micrograph are prepared and factorised once per process.
    Holds one entry (and a reference to ``source``, so its identity cannot be reused)."""
    version = getattr(source, "_version", None)
    if _CACHE and _CACHE[0][0] is source and _CACHE[0][1] == version and _CACHE[0][2] == key:
        return _CACHE[0][3]
    value = build()
    _CACHE[:] = [(source, version, key, value)]
    return value
