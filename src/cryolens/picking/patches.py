"""Template scores in small windows: the second stage of two-stage template picking.

A cheap first stage (one matched filter, the templates' mean, at a low threshold) proposes candidate peaks;
the normalised cross-correlation with every template (:mod:`cryolens.picking.bank`'s low-rank basis, the same
score as :func:`cryolens.picking.bank.bank_scores`) is then evaluated only at the pixels it needs: each candidate
climbs to the local maximum of the template score through its 3×3 neighbourhoods (:func:`climb_peaks`), and a
sparse grid of pixels gives the score's background statistics (:func:`sampled_background`). Each scored pixel
costs a gather of the filtered image around it and one row of two small matrix products (``m²·r + r·K``
multiply-adds), instead of ``r`` inverse FFTs and ``r·K`` multiply-adds at every pixel of the micrograph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cryolens.picking.bank import TemplateBank, filtered_gram, rows_per_product
from cryolens.picking.peaks import mode_stats

__all__ = ["PatchScores", "patch_scores", "gather_patches", "windows", "climb_peaks", "sampled_background"]


def gather_patches(image: torch.Tensor, rc: torch.Tensor, m: int) -> torch.Tensor:
    """``(P, m·m)``: the ``m × m`` windows of the ``(H, W)`` image whose pixel ``m//2`` lies at ``rc`` ``(P, 2)``
    (row, col), wrapping around the borders as a circular correlation does."""
    return windows(image, m)(rc)


def windows(image: torch.Tensor, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`gather_patches` of one image for many calls: the image padded circularly once and viewed as its
    ``m × m`` windows (no index arithmetic per call: ~4x cheaper than gathering through flat indices)."""
    p = m  # pad on every side (at least the window's reach each way)
    if p > min(image.shape):
        h, w = image.shape
        off = torch.arange(m, device=image.device) - m // 2

        def gather(rc: torch.Tensor) -> torch.Tensor:
            rows = (rc[:, 0:1] + off[None, :]) % h
            cols = (rc[:, 1:2] + off[None, :]) % w
            return image.reshape(-1)[(rows[:, :, None] * w + cols[:, None, :]).reshape(rc.shape[0], -1)]

        return gather
    view = F.pad(image[None, None], (p, p, p, p), mode="circular")[0, 0].unfold(0, m, 1).unfold(1, m, 1)
    o = p - m // 2
    return lambda rc: view[rc[:, 0] + o, rc[:, 1] + o].reshape(rc.shape[0], -1)


class PatchScores:
    """Best NCC over a bank's templates at chosen pixels, computed from windows of the filtered image.

    Equal to :class:`cryolens.picking.bank.BankScores` at those pixels: the correlation of the image (through
    ``transfer``, zero mean) with basis image ``j`` at ``x`` is ``Σ_v B_j(v)·I'(x + v - m//2)``, a dot product
    with the image's window at ``x``; the NCC's image term is the window's SD over the disc of the mask radius.
    Scores are kept per pixel (``cache``, NaN where not scored yet) so that no pixel is scored twice.
    """

    def __init__(self, image_ft: torch.Tensor, shape: tuple[int, int], bank: TemplateBank, *,
                 transfer: torch.Tensor, mask_radius_px: float, where: torch.Tensor):
        h, w = shape
        dev = image_ft.device
        self.shape = (h, w)
        filt = image_ft * transfer
        filt[0, 0] = 0  # zero-mean templates after the transfer
        self.filtered = torch.fft.irfft2(filt, s=shape)
        self.image = torch.fft.irfft2(image_ft, s=shape)
        basis = bank.basis.to(dev)
        gram = filtered_gram(basis, transfer, shape)
        a = bank.coeffs.to(dev)
        unit = a / ((a @ gram) * a).sum(dim=1).clamp_min(1e-30).sqrt()[:, None]
        self.weights = unit.T.contiguous()  # (r, K): unit-norm filtered templates
        self.m = basis.shape[-1]
        self.basis = basis.reshape(basis.shape[0], -1).T.contiguous()  # (m², r)
        rad = int(math.ceil(mask_radius_px))
        self.md = 2 * rad + 1
        off = torch.arange(self.md, device=dev) - rad
        disc = ((off[:, None] ** 2 + off[None, :] ** 2) <= mask_radius_px ** 2).float().reshape(-1)
        self.disc, self.n_disc = disc, float(disc.sum())
        self.filtered_windows, self.image_windows = windows(self.filtered, self.m), windows(self.image, self.md)
        self.where = where.reshape(-1)
        self.cache = torch.full((h * w,), float("nan"), device=dev)
        self.n_scored = 0

    def denom(self, rc: torch.Tensor) -> torch.Tensor:
        """``(P,)`` the NCC's image term ``sd·√n`` over the mask's disc around ``rc``
        (:func:`cryolens.picking.templates.local_sd_denominator` at those pixels)."""
        x = self.image_windows(rc)
        s1, s2 = x @ self.disc, (x * x) @ self.disc
        return ((s2 - s1 * s1 / self.n_disc) / self.n_disc).clamp_min(0).sqrt().clamp_min(1e-30) * self.n_disc ** 0.5

    def best_index(self, rc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ncc, index)`` at pixels ``rc`` ``(P, 2)``: the best NCC and the template that gives it."""
        rows = self.filtered_windows(rc) @ self.basis
        val, idx = (rows @ self.weights).max(dim=1)
        return val / self.denom(rc), idx

    def best(self, rc: torch.Tensor) -> torch.Tensor:
        """``(P,)`` best NCC at pixels ``rc``; pixels outside ``where`` read ``-inf``. Each pixel is scored once."""
        w = self.shape[1]
        flat = rc[:, 0] * w + rc[:, 1]
        todo = torch.unique(flat[torch.isnan(self.cache[flat])])
        ok = self.where[todo]
        self.cache[todo[~ok]] = -float("inf")
        todo = todo[ok]
        if todo.numel():
            trc = torch.stack([todo // w, todo % w], dim=1)
            rows = self.filtered_windows(trc) @ self.basis
            chunk = rows_per_product(rows, 4096)
            val = torch.cat([(rows[s:s + chunk] @ self.weights).amax(dim=1) for s in range(0, rows.shape[0], chunk)])
            self.cache[todo] = val / self.denom(trc)
            self.n_scored += int(todo.numel())
        return self.cache[flat]


def patch_scores(image_ft: torch.Tensor, shape: tuple[int, int], bank: TemplateBank, *, transfer: torch.Tensor,
                 mask_radius_px: float, where: torch.Tensor) -> PatchScores:
    """:class:`PatchScores` of one (whitened) image ``image_ft`` (rfft2, ``shape``), scoring only inside ``where``
    ``(H, W)`` bool."""
    return PatchScores(image_ft, shape, bank, transfer=transfer, mask_radius_px=mask_radius_px, where=where)


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def climb_peaks(scores: PatchScores, start: torch.Tensor, *, reach: int = 0, max_steps: int = 6) -> torch.Tensor:
    """Local maxima of the template score found around the pixels ``start`` ``(P, 2)``: the best of every other
    pixel (in each direction) within ``reach`` pixels of each start, then steepest ascent over 3×3 neighbourhoods
    (each step moves to the neighbourhood's best pixel). ``(Q, 2)`` distinct peaks, each with its 3×3
    neighbourhood scored (sub-pixel refinement). A climb still moving after ``max_steps`` stops there."""
    if start.shape[0] == 0:
        return start
    h, w = scores.shape
    dev = start.device

    def best_of(centres: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        around = centres[:, None, :] + offsets[None]
        around = torch.stack([around[..., 0].clamp(0, h - 1), around[..., 1].clamp(0, w - 1)], dim=-1)
        v = scores.best(around.reshape(-1, 2)).reshape(around.shape[:2])
        arg = v.argmax(dim=1)
        return around[torch.arange(centres.shape[0], device=dev), arg], arg

    cur = start
    if reach >= 2:  # a coarse window first: the start may sit a few pixels off the template's centre
        k = torch.arange(-(reach // 2) * 2, reach + 1, 2, device=dev)
        off = torch.stack(torch.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)
        cur = torch.unique(best_of(cur, off[off.square().sum(dim=1) <= reach * reach])[0], dim=0)
    nb = torch.tensor(_NEIGHBOURS, device=dev)
    for i in range(max_steps + 1):
        nxt, arg = best_of(cur, nb)
        moved = arg != 4
        if not bool(moved.any()) or i == max_steps:
            break
        cur = torch.unique(nxt, dim=0)
    ok = torch.isfinite(scores.best(cur)) & ~moved
    return cur[ok]


def sampled_background(scores: PatchScores, valid: torch.Tensor, *, origin: tuple[int, int], samples: int
                       ) -> tuple[float, float, torch.Tensor]:
    """Background statistics of the template score from a regular grid of about ``samples`` pixels of ``valid``
    (``(h, w)`` bool, placed at ``origin`` on the scores' grid): ``(centre, sd, coarse)``, the
    :func:`cryolens.picking.peaks.mode_stats` of the scores at the grid's pixels and a ``(h, w)`` map of them
    interpolated bilinearly (unscored grid pixels read as the centre), for overlays."""
    h, w = valid.shape
    dev = valid.device
    stride = max(1, int(round(math.sqrt(float(valid.sum()) / max(1, samples)))))
    r0 = c0 = stride // 2
    sub = valid[r0::stride, c0::stride]
    rows = torch.arange(r0, h, stride, device=dev)
    cols = torch.arange(c0, w, stride, device=dev)
    pick = torch.nonzero(sub)
    rc = torch.stack([rows[pick[:, 0]] + origin[0], cols[pick[:, 1]] + origin[1]], dim=1)
    vals = scores.best(rc)
    vals = vals[torch.isfinite(vals)]
    centre, sd = mode_stats(vals) if vals.numel() > 16 else (0.0, 1.0)
    grid = torch.full(sub.shape, centre, device=dev)
    grid[pick[:, 0], pick[:, 1]] = scores.best(rc).clamp_min(-1e30)
    full = F.interpolate(grid[None, None], size=((sub.shape[0] - 1) * stride + 1, (sub.shape[1] - 1) * stride + 1),
                         mode="bilinear", align_corners=True)
    hh, ww = full.shape[-2:]
    full = F.pad(full, (c0, w - c0 - ww, r0, h - r0 - hh), mode="replicate")[0, 0]
    return centre, sd, full

