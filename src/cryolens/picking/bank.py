"""A low-rank bank of templates for fast template matching.

The rotated, masked templates of :func:`cryolens.picking.templates.prepare_templates` (``K`` of them, e.g. 48
projections × 24 in-plane angles) are strongly correlated. Their singular value decomposition ``T_k ≈ Σ_j A_kj·B_j``
over ``r ≪ K`` basis images ``B_j`` keeps all but a small fraction of their energy, so the image is correlated with
the ``r`` basis images only (``r`` FFTs instead of ``K``) and every template's correlation is the matrix product
``A·M`` of the coefficients with the ``r`` basis maps. The CTF and whitening (``transfer``) act on the image instead
of each template, so the basis transforms are kept across micrographs of one shape; each template's norm after the
transfer is ``√(aₖᵀ G aₖ)`` with the ``r × r`` Gram matrix ``G`` of the filtered basis (Parseval, on a small grid:
:func:`filtered_gram`), exact for the truncated template. The product ``A·M`` and its maximum over the templates,
the bulk of the cost, are formed every other pixel first and in full only near high coarse scores
(:func:`coarse_fine_best`), once per pair of templates related by a 180° rotation (:mod:`cryolens.picking.reflection`);
the basis maps only on that coarse grid (:func:`cryolens.picking.folding.strided_maps`), the few pixels off it
directly from windows of the filtered image (:meth:`BankScores.rows`); which template wins only at the peaks
(:meth:`BankScores.best_index`). Near-repeats (symmetry-related views) are dropped first (:func:`distinct_templates`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cryolens.core.fourier import irfftn
from cryolens.picking.folding import filtered_gram, folded_quadrants, gram_grid, strided_maps
from cryolens.picking.peaks import mode_stats
from cryolens.picking.reflection import paired_factors, reflection_pairs
from cryolens.picking.templates import band_pass_images, local_sd_denominator, wrap_centred

__all__ = ["TemplateBank", "template_bank", "distinct_templates", "DUPLICATE_NCC", "CPU_ROWS", "rows_per_product",
           "BankScores", "bank_scores", "RANK_MULTIPLE", "gram_grid", "filtered_gram", "correlate_bank",
           "coarse_fine_best", "median_filled", "cached"]


#: :func:`distinct_templates` drops a template whose normalised correlation with a kept one (in the scoring band)
#: exceeds this: views related by a particle's symmetry, or in-plane rotations of a round view, add cost and no
#: information (apoferritin's 24-fold symmetry at HEALPix order 2: most of its 4608 templates).
DUPLICATE_NCC = 0.99

#: On the CPU the products of score rows with the template weights run this many pixels at a time: the
#: ``(rows, K)`` block then stays in cache for the maximum over templates (4096 rows, tens of MB at K ~ 1000-4000,
#: were ~1.3-1.5x slower on one thread).
CPU_ROWS = 512

#: The score products pad the bank's rank with zeros to a multiple of this (a matrix product whose inner size is a
#: multiple of 8 ran ~1.2x faster on one AVX-512 thread: 512 x 102 x 1152 in 3.9 ms, x 104 in 3.2 ms).
RANK_MULTIPLE = 8


@dataclass
class TemplateBank:
    """Templates and their low-rank factorisation ``templates ≈ coeffs @ basis``.

    Attributes:
        templates: ``(K, m, m)`` prepared templates (zero mean in their mask), picking pixels.
        coeffs: ``(K, r)`` coefficients: ``U·S`` of the SVD (or ``U`` of the band-passed templates' SVD).
        basis: ``(r, m, m)`` basis images: the orthonormal ``Vᵀ`` (or ``Uᵀ·templates``, see :func:`template_bank`).
        energy: fraction of the templates' summed energy that the ``r`` basis images keep.
        split: with reflection pairs (:mod:`cryolens.picking.reflection`), the number of even basis images (first;
            the odd ones follow); pairs: ``(rep, partner)`` indices of the pairs' templates; both None otherwise.
    """

    templates: torch.Tensor
    coeffs: torch.Tensor
    basis: torch.Tensor
    energy: float
    split: int | None = None
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    transforms: dict = field(default_factory=dict, repr=False)
    small: dict = field(default_factory=dict, repr=False)

    def basis_ft_conj(self, shape: tuple[int, int]) -> torch.Tensor:
        """``(r, H, W//2+1)`` complex conjugate of the rfft2 of the basis images centred at pixel (0, 0) of an
        ``(H, W)`` grid (kept per shape; conjugated in memory, so correlations need no conjugating copy)."""
        return self._kept("conj", shape, lambda: torch.fft.rfft2(wrap_centred(self.basis, shape)).conj_physical())

    def basis_ft_quadrants(self, shape: tuple[int, int]) -> torch.Tensor:
        """:func:`folded_quadrants` of :meth:`basis_ft_conj` (kept per shape instead of it: what
        :func:`strided_maps` folds at stride 2)."""
        return self._kept("quadrants", shape, lambda: folded_quadrants(
            torch.fft.rfft2(wrap_centred(self.basis, shape)).conj_physical(), shape))

    def _kept(self, kind: str, shape: tuple[int, int], build: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (kind, tuple(shape), self.basis.device)
        ft = self.transforms.get(key)
        if ft is None:
            ft = build()
            self.transforms = {key: ft}  # one shape at a time (a dataset's micrographs share it); swapped whole
        return ft

    def basis_ft_small(self) -> torch.Tensor:
        """``(r, s, s//2+1)`` rfft2 of the basis images centred at pixel (0, 0) of the small ``(s, s)`` grid of
        :func:`filtered_gram` (``s = gram_grid(m)``), kept (it depends on the basis only)."""
        key = ("small", self.basis.device)
        ft = self.small.get(key)
        if ft is None:
            s = gram_grid(self.basis.shape[-1])
            ft = torch.fft.rfft2(wrap_centred(self.basis, (s, s)))
            self.small = {key: ft}
        return ft


def template_bank(templates: torch.Tensor, *, tolerance: float = 1e-3,
                  band_px: tuple[float, float] | None = None, paired: bool = True) -> TemplateBank:
    """Factorise ``(K, m, m)`` prepared templates, keeping the fewest basis images whose discarded energy
    (sum of squared singular values left out) is at most ``tolerance`` of the total.

    ``band_px = (low, high)`` (pixels): measure that energy after the picker's band-pass (Gaussian low-pass
    ``exp(-s²low²/2)``, high-pass ``1 - exp(-s²high²/2)``, s in cycles/pixel), the band the correlation sees:
    the SVD of the band-passed templates ``T_b ≈ U·S·V_bᵀ`` gives the coefficients ``U`` and the basis
    ``Uᵀ·T`` (unfiltered, not orthonormal), whose band-passed form is the best rank-``r`` approximation in
    that band. Fine detail outside the band, which varies most between rotations, then costs no basis images.
    With ``band_px`` and ``paired``, a set closed under the reflection (rotations by ψ and ψ + 180°) gets the same
    factorisation from even and odd basis images (:mod:`cryolens.picking.reflection`): half the score products.
    """
    pairs = reflection_pairs(templates) if paired and band_px is not None else None
    if pairs is not None and pairs[0].numel() < templates.shape[0]:
        coeffs, basis, energy, split = paired_factors(templates, pairs, tolerance=tolerance, band_px=band_px)
        return TemplateBank(templates=templates, coeffs=coeffs, basis=basis, energy=energy, split=split, pairs=pairs)
    k, m = templates.shape[0], templates.shape[-1]
    x = templates.reshape(k, m * m).double()
    xb = x if band_px is None else band_pass_images(templates, band_px).reshape(k, m * m)
    u, s, vh = torch.linalg.svd(xb, full_matrices=False)
    e = s.square()
    left = 1.0 - torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)  # energy discarded when keeping the first i+1
    r = min(int((left > tolerance).sum()) + 1, s.numel())
    # unfiltered: U·S and the orthonormal Vᵀ; band-passed: U and Uᵀ·T (so that coeffs @ basis = U·Uᵀ·T)
    coeffs, basis = (u[:, :r] * s[:r], vh[:r]) if band_px is None else (u[:, :r], u[:, :r].T @ x)
    return TemplateBank(templates=templates, coeffs=coeffs.float(), basis=basis.reshape(r, m, m).float(),
                        energy=float(1.0 - left[r - 1]))


def distinct_templates(templates: torch.Tensor, band_px: tuple[float, float] | None = None, *,
                       limit: float = DUPLICATE_NCC, block: int = 1024) -> torch.Tensor:
    """Indices (ascending) of the ``(K, m, m)`` templates kept when each one whose normalised correlation (centred,
    no shift; after the band-pass ``band_px``, :func:`cryolens.picking.templates.band_pass_images`, if given)
    with an earlier kept template exceeds ``limit`` is dropped (greedy, in index order). A set closed under the
    point reflection (:func:`cryolens.picking.reflection.reflection_pairs`) stays closed: its pairs are kept or
    dropped whole, a pair dropped when its first template nears either template of a kept pair."""
    k = templates.shape[0]
    x = templates.double() if band_px is None else band_pass_images(templates, band_px)
    x = x.reshape(k, -1)
    x = (x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)).float()
    pairs = reflection_pairs(templates)
    if pairs is None:
        return torch.nonzero(_greedy_distinct(x, x, limit, block))[:, 0]
    rep, partner = pairs
    kept = _greedy_distinct(x[rep], x[rep], limit, block, also=x[partner])
    keep = torch.zeros(k, dtype=torch.bool, device=templates.device)
    keep[rep[kept]] = True
    keep[partner[kept]] = True
    return torch.nonzero(keep)[:, 0]


def _greedy_distinct(x: torch.Tensor, cols: torch.Tensor, limit: float, block: int,
                     also: torch.Tensor | None = None) -> torch.Tensor:
    """``(K,)`` bool: rows of ``x`` kept by :func:`distinct_templates`' rule (``also``: their partners, near either)."""
    k = x.shape[0]
    first, later = [], []
    for start in range(0, k, block):  # pairs (i < j) above the limit, a block of rows at a time
        near = (x[start:start + block] @ cols.T) > limit
        if also is not None:
            near |= (x[start:start + block] @ also.T) > limit
        i, j = torch.nonzero(near, as_tuple=True)
        i = i + start
        first.append(i[i < j])
        later.append(j[i < j])
    first, later = torch.cat(first).cpu().numpy(), torch.cat(later).cpu().numpy()
    keep = np.ones(k, dtype=bool)
    order = np.argsort(first, kind="stable")
    first, later = first[order], later[order]
    bounds = np.searchsorted(first, np.arange(k + 1))
    for i in np.unique(first):  # ascending: a template's keep flag is final before it drops later ones
        if keep[i]:
            keep[later[bounds[i]:bounds[i + 1]]] = False
    return torch.from_numpy(keep).to(x.device)


@dataclass
class BankScores:
    """Correlation maps of one image with a bank's (filtered, normalised) templates, scored on demand.

    The NCC of template ``k`` at flat pixel ``i`` (of the ``(H, W)`` grid) is
    ``(weights[:, k] · rows(i)) / denom[i]``, ``rows(i)`` the ``q`` basis correlations at that pixel: read from
    ``maps`` on the grid they cover (every ``stride``-th pixel from ``origin``), formed directly elsewhere (the
    ``m × m`` window of the filtered image around the pixel against the basis images: exact, and cheap for the
    few pixels scored off that grid).

    Attributes:
        maps: ``(q, h·w)`` correlations of the image with the ``q`` basis images (through the transfer) at the
            pixels ``(origin[0] + stride·i, origin[1] + stride·j)``.
        weights: ``(q', K)`` coefficients of the unit-norm filtered templates in that basis (``q' >= q``: rows
            of zeros pad the rank to a multiple of :data:`RANK_MULTIPLE`, a faster product).
        denom: ``(H, W)`` the NCC's image term (:func:`cryolens.picking.templates.local_sd_denominator`).
        shape: ``(H, W)``.
        stride, origin: the grid of ``maps``.
        filtered: ``(H, W)`` the filtered image (None when ``stride`` is 1); basis: ``(q, m, m)``.
        split, pairs: as :class:`TemplateBank`'s; with pairs, ``weights`` and ``odd_weights`` hold the pairs' first
            templates' even and odd coefficients (padded): products give ``s_e + |s_o|``, the better of each pair.
        dtype: of the basis correlations (:meth:`rows`) and the weights: ``torch.bfloat16`` makes the products and
            the windows off the maps' grid ~2.5x cheaper where the hardware multiplies in it (scores then within
            ~0.3 % of float32; sums and maxima stay float32).
    """

    maps: torch.Tensor
    weights: torch.Tensor
    denom: torch.Tensor
    shape: tuple[int, int]
    stride: int = 1
    origin: tuple[int, int] = (0, 0)
    filtered: torch.Tensor | None = None
    basis: torch.Tensor | None = None
    split: int | None = None
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    odd_weights: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32
    segments: torch.Tensor | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        """Number of basis maps ``q``."""
        return int(self.maps.shape[0])

    def rows(self, pix: torch.Tensor | None = None) -> torch.Tensor:
        """``(len(pix), q')`` basis correlations at flat pixels ``pix`` (default: every pixel of the maps' grid,
        in its order), contiguous, zero-padded to the weights' rank (each of the even and odd parts, with pairs)."""
        q = self.rank
        if pix is None:
            return self.padded(self.maps.T)
        h, w = self.shape
        s, (r0, c0) = self.stride, self.origin
        r, c = pix // w, pix % w
        on = ((r - r0) % s == 0) & ((c - c0) % s == 0)
        wc = len(range(c0, w, s))
        if bool(on.all()):
            return self.padded(self.maps.index_select(1, ((r - r0) // s) * wc + (c - c0) // s).T)
        out = torch.zeros((pix.numel(), q), device=self.maps.device, dtype=self.dtype)
        out[on] = self.maps[:, ((r[on] - r0) // s) * wc + (c[on] - c0) // s].T.to(self.dtype)
        off = torch.nonzero(~on)[:, 0]
        if off.numel():  # the window of the filtered image around each pixel against the basis images
            m = self.basis.shape[-1]
            if self.segments is None:  # m-pixel row segments of a circularly extended copy, one per pixel and row:
                e = m // 2  # a window is m of them (a contiguous gather, ~1.3x faster than a 4-D strided view)
                ext = torch.cat([self.filtered[h - e:], self.filtered, self.filtered[:m - e]], dim=0)
                ext = torch.cat([ext[:, w - e:], ext, ext[:, :m - e]], dim=1).to(self.dtype)
                self.segments = ext.unfold(1, m, 1)[:, :w].contiguous().reshape(-1, m)
            basis = self.basis.reshape(q, -1).T.to(self.dtype).contiguous()
            dy = torch.arange(m, device=pix.device)
            for start in range(0, off.numel(), 1024):
                k = off[start:start + 1024]
                seg = self.segments.index_select(0, ((r[k, None] + dy) * w + c[k, None]).reshape(-1))
                out[k] = seg.reshape(k.numel(), -1) @ basis
        return self.padded(out)

    def padded(self, rows: torch.Tensor) -> torch.Tensor:
        """``(n, q)`` basis correlations zero-padded to the weights' rank (even and odd parts each, with pairs), in
        :attr:`dtype`."""
        rows = rows.to(self.dtype)
        qp = self.weights.shape[0]
        if self.split is None:
            return F.pad(rows, (0, qp - rows.shape[1]))
        e = self.split
        return torch.cat([F.pad(rows[:, :e], (0, qp - e)),
                          F.pad(rows[:, e:], (0, self.odd_weights.shape[0] - (rows.shape[1] - e)))], dim=1)

    def products(self, rows: torch.Tensor) -> torch.Tensor:
        """``(n, K')`` scores (before the image term) for ``rows`` (:meth:`rows`): each template's, or each pair's best."""
        if self.split is None:
            return (rows @ self.weights).float()
        qe = self.weights.shape[0]
        return (rows[:, :qe] @ self.weights).float().add_((rows[:, qe:] @ self.odd_weights).float().abs_())

    def best(self, pix: torch.Tensor | None = None, *, chunk: int = 4096,
             progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Best NCC over the templates at flat pixels ``pix`` (default: all pixels of the maps' grid),
        ``(len(pix),)``; the maximum alone (``amax``, about half the cost of also finding which template: see
        :meth:`best_index`)."""
        rows = self.rows(pix)
        chunk = rows_per_product(rows, chunk)
        total = rows.shape[0]
        out = torch.empty(total, device=rows.device)
        for start in range(0, total, chunk):  # (chunk, K) products: the max runs along contiguous rows
            out[start:start + chunk] = self.products(rows[start:start + chunk]).amax(dim=1)
            if progress is not None:
                progress(min(start + chunk, total), total)
        if pix is None:
            s, (r0, c0) = self.stride, self.origin
            return out / self.denom[r0::s, c0::s].reshape(-1)
        return out / self.denom.reshape(-1)[pix]

    def best_index(self, pix: torch.Tensor, *, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ncc, index)`` at flat pixels ``pix``: the best NCC and the template that gives it."""
        rows = self.rows(pix)
        chunk = rows_per_product(rows, chunk)
        best = torch.empty(rows.shape[0], device=rows.device)
        index = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
        for start in range(0, rows.shape[0], chunk):
            sl = slice(start, start + chunk)
            if self.split is None:
                best[sl], index[sl] = self.products(rows[sl]).max(dim=1)
                continue
            qe = self.weights.shape[0]
            odd = (rows[sl, qe:] @ self.odd_weights).float()
            best[sl], h = ((rows[sl, :qe] @ self.weights).float() + odd.abs()).max(dim=1)
            rep, partner = self.pairs  # the pair's first template where its odd score is >= 0, else the reflection
            index[sl] = torch.where(odd.gather(1, h[:, None])[:, 0] >= 0, rep[h], partner[h])
        return best / self.denom.reshape(-1)[pix], index


def rows_per_product(rows: torch.Tensor, chunk: int) -> int:
    """Pixels per score product: ``chunk``, at most :data:`CPU_ROWS` on the CPU."""
    return min(chunk, CPU_ROWS) if rows.device.type == "cpu" else chunk


def bank_scores(image_ft: torch.Tensor, shape: tuple[int, int], bank: TemplateBank, *, transfer: torch.Tensor,
                mask_radius_px: float, stride: int = 1, origin: tuple[int, int] = (0, 0),
                dtype: torch.dtype = torch.float32) -> BankScores:
    """The basis correlation maps of one image and the templates' weights on them (:class:`BankScores`).

    The templates are taken through ``transfer`` and made zero-mean (their norms from the basis' Gram matrix
    after the transfer, :func:`filtered_gram`).

    Args:
        image_ft: rfft2 of the (whitened) image ``(H, W//2+1)``; shape: ``(H, W)``.
        bank: from :func:`template_bank`; transfer: ``(H, W//2+1)`` real filter for the templates.
        mask_radius_px: radius (pixels) of the disc over which the image's local SD is taken.
        stride, origin: form the maps at every ``stride``-th pixel from ``origin`` only (:func:`strided_maps`;
            other pixels are scored directly, :meth:`BankScores.rows`).
        dtype: of the score products (:class:`BankScores`).
    """
    h, w = shape
    dev = image_ft.device
    denom = local_sd_denominator(image_ft, shape, mask_radius_px)
    filt = image_ft * transfer
    filt[0, 0] = 0  # zero-mean templates after the transfer
    gram = filtered_gram(bank.basis.to(dev), transfer, shape, basis_ft=bank.basis_ft_small().to(dev),
                         split=bank.split)
    a = bank.coeffs.to(dev)
    norms = ((a @ gram) * a).sum(dim=1).clamp_min(1e-30).sqrt()
    unit = a / norms[:, None]  # (K, r): unit-norm filtered templates
    def rank_padded(t: torch.Tensor) -> torch.Tensor:  # (q, n) rows of zeros to a multiple of RANK_MULTIPLE
        return F.pad(t, (0, 0, 0, -t.shape[0] % RANK_MULTIPLE)).to(dtype).contiguous()
    odd, pairs, split = None, None, bank.split
    if split is not None:  # a centrosymmetric transfer keeps a pair's norms equal (else: every template)
        pairs = tuple(i.to(dev) for i in bank.pairs)
        if not bool(torch.allclose(norms[pairs[0]], norms[pairs[1]], rtol=1e-5, atol=0)):
            pairs, split = None, None
    if split is None:
        weights = rank_padded(unit.T)
    else:  # the pairs' first templates (the reflections' scores follow from theirs)
        first = unit[pairs[0]]
        weights, odd = rank_padded(first[:, :split].T), rank_padded(first[:, split:].T)
    origin = (origin[0] % stride, origin[1] % stride)
    maps = strided_maps(bank, filt, shape, stride, origin)
    filtered = irfftn(filt, s=shape) if stride > 1 else None
    return BankScores(maps=maps, weights=weights, denom=denom, shape=(h, w), stride=stride, origin=origin,
                      filtered=filtered, basis=bank.basis.to(dev), split=split, pairs=pairs, odd_weights=odd,
                      dtype=dtype)


def correlate_bank(image_ft: torch.Tensor, shape: tuple[int, int], bank: TemplateBank, *, transfer: torch.Tensor,
                   mask_radius_px: float, where: torch.Tensor | None = None, chunk: int = 4096,
                   progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best normalised cross-correlation over the bank's templates at every pixel.

    The same score as :func:`cryolens.picking.templates.correlate_templates` (templates through
    ``transfer``, made zero-mean, NCC with the image's local SD over the disc of ``mask_radius_px``)
    for the rank-``r`` templates ``coeffs @ basis`` (through :func:`bank_scores`).

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
    scores = bank_scores(image_ft, shape, bank, transfer=transfer, mask_radius_px=mask_radius_px)
    pix = torch.nonzero(where.reshape(-1))[:, 0] if where is not None else torch.arange(h * w, device=image_ft.device)
    ncc, index = scores.best_index(pix, chunk=chunk)
    if progress is not None:
        progress(pix.numel(), pix.numel())
    if where is None:
        return ncc.reshape(h, w), index.reshape(h, w), scores.denom
    full_index = torch.zeros(h * w, dtype=torch.long, device=ncc.device)
    full_index[pix] = index
    return median_filled(ncc, pix, shape), full_index.reshape(h, w), scores.denom


def median_filled(values: torch.Tensor, pix: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` map holding ``values`` at flat pixels ``pix`` and their median elsewhere (0 when none was
    scored): unscored pixels (outside the picking area) read as background."""
    full = torch.full((shape[0] * shape[1],), float(values.median()) if values.numel() else 0.0,
                      device=values.device, dtype=values.dtype)
    full[pix] = values
    return full.reshape(shape)


def coarse_fine_best(scores: BankScores, where: torch.Tensor, *, floor: float = 1.0, window: int = 1, chunk: int = 4096,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Best NCC over the templates on the ``(H, W)`` grid, scored in full only around the peaks.

    First the pixels of ``where`` on the grid of ``scores.maps`` (every ``scores.stride``-th pixel in each direction
    from ``scores.origin``: :func:`bank_scores`) are scored; those scores
    are put in SDs of their background (:func:`cryolens.picking.peaks.mode_stats`) and every pixel within
    ``window`` pixels of a coarse sample at or above ``floor`` SDs is scored too. The coarse samples of a peak may read well below its top (an NCC peak is a few pixels
    wide: up to ~40 % lower at stride 2), so ``floor`` is kept low. Other pixels get the coarse scores
    interpolated bilinearly (pixels outside ``where`` count as the median score), so the map is exact at the
    peaks, their neighbours (sub-pixel refinement) and the coarse samples (background statistics): the scores of
    :meth:`BankScores.best` there (within ~0.3 % of float32's when ``scores.dtype`` is bfloat16).

    Returns:
        ``(H, W)`` NCC map.
    """
    h, w = scores.shape
    dev = where.device
    stride, (r0, c0) = scores.stride, scores.origin
    rows = torch.arange(r0, h, stride, device=dev)
    cols = torch.arange(c0, w, stride, device=dev)
    sub = where[r0::stride, c0::stride]
    flat = rows[:, None] * w + cols[None, :]
    vals = scores.best(flat[sub], chunk=chunk, progress=progress)
    if vals.numel() == 0:
        return torch.zeros((h, w), device=dev)
    coarse = median_filled(vals, torch.nonzero(sub.reshape(-1))[:, 0], tuple(sub.shape))
    centre, sd = mode_stats(vals)
    above = torch.zeros(sub.shape, dtype=torch.bool, device=dev)
    above[sub] = vals >= centre + floor * sd
    seeds = torch.nonzero(above)
    full = F.interpolate(coarse[None, None], size=((sub.shape[0] - 1) * stride + 1, (sub.shape[1] - 1) * stride + 1),
                         mode="bilinear", align_corners=True)
    hh, ww = full.shape[-2:]
    full = F.pad(full, (c0, w - c0 - ww, r0, h - r0 - hh), mode="replicate")[0, 0].contiguous()
    # every pixel within `window` of a coarse sample at or above the floor (a grown mask: no per-seed windows)
    mask = torch.zeros((h, w), dtype=torch.bool, device=dev)
    mask[rows[seeds[:, 0]], cols[seeds[:, 1]]] = True
    mask = F.max_pool2d(mask[None, None].float(), 2 * window + 1, stride=1, padding=window)[0, 0] > 0
    mask &= where
    mask[r0::stride, c0::stride] = False  # scored already
    fine = torch.nonzero(mask.reshape(-1))[:, 0]
    full.view(-1)[fine] = scores.best(fine, chunk=chunk)
    return full


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
