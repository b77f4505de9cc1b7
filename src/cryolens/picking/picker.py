"""Pick one micrograph: score map (matched filter, LoG or templates), peaks, avoidance, selection.

The default (``method="matched"``) follows cisTEM's Find Particles (Sigworth 2004): the
micrograph is Fourier-cropped to ~diameter/20 Å per pixel, whitened by its own radially
averaged power spectrum, and correlated with a blob (a projected sphere of radius
``blob_radius`` × diameter) that carries the micrograph's CTF and contrast (protein dark). By
default (``blob_radius=None``) three blobs are tried on each micrograph, spheres of 0.33 × the diameter
(filled particles) and 0.5 × (large, ring-like ones), and a hollow sphere of 0.45 × with a 0.3 × cavity
(shells such as apoferritin), and the one whose best peaks score highest is kept (:data:`BLOB_CHOICES`,
:data:`AUTO_TOP`); that blob is then tried again through a coarser low-pass (a third of the diameter,
:data:`BLOB_LOWPASS`: a sphere resembles a particle only at low resolution), kept the same way. Before that,
abnormal areas (carbon, contaminants, their rims: :func:`cryolens.picking.peaks.avoidance_mask`) are found on
the cropped micrograph and filled
with the ice level, so that they neither dominate the whitening spectrum nor ring into their
surroundings. Scores are z-scores of the score map about its background level
(:func:`cryolens.picking.peaks.mode_z`; in standard deviations). Peaks above the threshold,
outside the edge margin and outside the avoided areas go through greedy non-maximum
suppression at the minimum distance, with a parabolic sub-pixel refinement.

``method="log"``: scale-normalised Laplacian of Gaussian (σ = d/(2√2) over the diameter
range) of the phase-flipped, whitened micrograph, each scale in SDs of its own map.
``method="template"``: normalised cross-correlation with CTF-modulated templates (class
averages, or projections of a map at HEALPix directions, refined up to order 2 where the views change
fast: :func:`cryolens.picking.templates.map_templates`) at every ``psi_step`` in-plane
rotation, or a coarser step where the rotations between its steps are covered
(:func:`cryolens.picking.templates.rotated_templates`), near-duplicates dropped
(:func:`cryolens.picking.bank.distinct_templates`), through a low-rank factorisation of the
templates (:mod:`cryolens.picking.bank`: a few dozen FFTs instead of one per template, the
factorisation kept across micrographs), scored only where picks may fall: every other pixel first, then
in full around coarse scores above ``refine_floor`` (:func:`cryolens.picking.bank.coarse_fine_best`).

Coordinates returned are in pixels of the input micrograph (x = column, y = row, 0-based),
as ``rlnCoordinateX/Y``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryolens.core.ctf import CTFParams
from cryolens.core.device import fast_matmul_dtype
from cryolens.core.fourier import good_fft_size, irfftn, rfft_polar_grid
from cryolens.picking.filters import (
    fourier_crop_2d,
    log_filters,
    micrograph_ctf,
    reflect_pad,
    sphere_projection_ft,
    whitening_filter,
)
from cryolens.picking.params import PickParams
from cryolens.picking.peaks import (
    avoidance_mask, fill_areas, local_maxima, mode_stats, mode_z, refine_subpixel, suppress_non_maxima,
)
from cryolens.picking.bank import (
    TemplateBank, bank_scores, cached, coarse_fine_best, distinct_templates, median_filled, template_bank,
)
from cryolens.picking.templates import map_templates, rfft_energy, rotated_templates, side_lobes

__all__ = ["Picks", "pick_micrograph", "select_picks", "picking_shape", "BLOB_CHOICES", "AUTO_TOP", "AUTO_AREA", "OVERSAMPLE"]

#: Blobs ``(radius, cavity radius)`` (fractions of the diameter) the matched filter tries when ``blob_radius``
#: is None: a projected sphere of 0.33 × the diameter for compact, filled particles (its peak stays at the
#: centre of elongated ones too), one as large as the particle (0.5) for ring-like ones (a uniform shell:
#: a small blob lands on the shell, not the centre), and a projected hollow sphere (radius 0.45, cavity
#: 0.3) for shells with a thick wall like apoferritin's (radii 50-90 Å of a 180 Å particle): F1 0.83-0.88
#: with the filled 0.5 blob, 0.91-0.97 with this one on simulated micrographs at 1.2 and 1.75 Å/px
#: (tests/test_picking.py; the 0.42 and 0.5 radii, 0.25 and 0.35 cavities were worse, 0.4-0.89).
BLOB_CHOICES = ((0.33, 0.0), (0.5, 0.0), (0.45, 0.3))

#: Coarser low-passes (fractions of the diameter) the matched filter also tries with the chosen blob, keeping the
#: one whose best peaks score highest (as for :data:`BLOB_CHOICES`). A uniform (or hollow) sphere models a particle
#: only at low resolution: its sharp edge and the particle's inner detail differ beyond ~d/3, and at the default
#: low-pass (2.5 picking pixels, d/8) that mismatch adds noise. F1 (particles clear of the carbon) in
#: benchmarks/picking.py, before -> after, seeds 500 / 900 (tuning: d/4, d/5 and d/4 + d/3 were worse) then held-out
#: 1300 / 1700 / 2100: apoferritin 1.75 Å/px 0.888 / 0.908 -> 0.952 / 0.929, 0.957 / 0.926 / 0.920 -> 0.965 /
#: 0.948 / 0.965; 1.2 Å/px 0.905 / 0.819 -> 0.913 / 0.921, 0.901 / 0.854 / 0.919 -> 0.939 / 0.887 / 0.911; phantom
#: 0.946 / 0.950 -> 0.986 / 0.975, 0.950 / 0.943 / 0.911 -> 0.984 / 0.992 / 0.967; ribosome unchanged (it keeps
#: the finer low-pass).
BLOB_LOWPASS = (0.33,)

#: The blob whose score map's best ``AUTO_TOP`` candidates (after suppression, outside avoided areas and
#: the edge) have the highest mean score wins: the matched filter of the right shape gives the highest
#: peaks (a mismatched one correlates only with parts of the particle's outline). At least that many; one per
#: :data:`AUTO_AREA` on larger micrographs.
AUTO_TOP = 10

#: Pickable area (in squared diameters, outside avoided areas and the edge) per candidate compared by
#: :data:`AUTO_TOP`, so that the comparison looks at the same share of the particles whatever the field of view.
#: A fixed 10 compared ~a third of the particles of a 1024² micrograph but the extreme tail (~2 %) of a 4096²
#: one, where it kept the finer low-pass (:data:`BLOB_LOWPASS`) for the phantom and its peaks landed 0.2-0.24 d off
#: centre more often (benchmarks/picking.py --size 4096, seed 500: 6 % against 1 % of the same particles picked in
#: 1024² tiles). With it and :func:`cryolens.picking.peaks.neighbour_scale` (--n 3 --size 4096, seed 500), F1 phantom
#: 0.881 -> 0.989, ribosome 0.95 -> 0.983, apoferritin 1.75 / 1.2 Å/px 0.749 / 0.987 -> 0.990 / 0.985; 1024²
#: micrographs (at most ~120 d² pickable) compare 10-12 peaks, as before within two.
AUTO_AREA = 10.0

#: The template picker projects the map and rotates the templates on a grid this many times finer than the
#: picking grid, then Fourier-crops them to it: bilinear rotation on the picking grid itself blurred the
#: templates near its Nyquist (F1 with templates in benchmarks/picking.py, seed 500 / 900 not used for tuning:
#: phantom 0.965 -> 0.986 / 0.925 -> 0.978, ribosome 0.975 -> 0.986 / 0.987 -> 0.990, apoferritin 1.75 Å/px
#: 0.897 -> 0.914 / 0.889 -> 0.892, 1.2 Å/px 0.874 -> 0.857 / 0.835 -> 0.819, one or two particles).
OVERSAMPLE = 2


@dataclass
class Picks:
    """Picks of one micrograph.

    Attributes:
        x, y: ``(K,)`` float32 pick centres in micrograph pixels (x column, y row), by
            descending score.
        score: ``(K,)`` scores in standard deviations of the score map.
        diameter: ``(K,)`` best-matching diameter in Å (the diameter when one size is searched).
        candidates: ``(N, 4)`` every candidate (x, y, score, diameter) with a score down to
            ``floor``, already suppressed, edge- and avoidance-filtered, by descending score;
            :func:`select_picks` re-selects from them without picking again.
        floor: lowest score kept among the candidates.
        threshold, max_per_micrograph: the selection that gave ``x, y, score``.
        score_map: ``(h, w)`` score (SDs) at the picking pixel size, for overlays and histograms.
        avoid: ``(h, w)`` bool, areas avoided (carbon, contamination, edges), or None.
        pick_pixel_size: ``(y, x)`` Å per pixel of ``score_map``; scale: ``(y, x)``
            micrograph pixels per score-map pixel.
        blob_radius: the matched filter's blob radius (fraction of the diameter) that gave the
            picks (the one chosen from :data:`BLOB_CHOICES` when none was given); None for
            the other methods.
        blob_cavity: the radius of that blob's cavity (fraction of the diameter; 0 for a filled
            sphere, None for the other methods).
        blob_lowpass: the matched filter's extra low-pass (fraction of the diameter, :data:`BLOB_LOWPASS`; 0: the
            default band only; None for the other methods).
    """

    x: torch.Tensor
    y: torch.Tensor
    score: torch.Tensor
    diameter: torch.Tensor
    candidates: torch.Tensor
    floor: float
    threshold: float
    max_per_micrograph: int | None
    score_map: torch.Tensor
    avoid: torch.Tensor | None
    pick_pixel_size: tuple[float, float]
    scale: tuple[float, float]
    blob_radius: float | None = None
    blob_cavity: float | None = None
    blob_lowpass: float | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def xy(self) -> torch.Tensor:
        """``(K, 2)`` pick centres ``(x, y)`` in micrograph pixels."""
        return torch.stack([self.x, self.y], dim=1)


def select_picks(picks: Picks, *, threshold: float | None = None, max_per_micrograph: int | None = None) -> Picks:
    """Re-select picks from ``picks.candidates``: score > ``threshold`` (SDs; default: as before),
    at most ``max_per_micrograph`` (highest scores). Equal to picking again with those options
    (suppression keeps a peak only for higher ones), as long as ``threshold >= picks.floor``; for templates,
    approximately: the CTF side lobes were predicted from, and subtracted at, the peaks above the threshold
    picked with only (those below keep their raw score).

    Raises:
        ValueError: a threshold below the candidates' floor.
    """
    t = picks.threshold if threshold is None else float(threshold)
    if t < picks.floor:
        raise ValueError(f"--threshold {t:g}: the candidates were kept down to {picks.floor:g} SD only; pick again "
                         "to go lower")
    c = picks.candidates
    sel = c[c[:, 2] > t]
    if max_per_micrograph is not None:
        sel = sel[:max_per_micrograph]
    return dataclasses.replace(picks, x=sel[:, 0].contiguous(), y=sel[:, 1].contiguous(), score=sel[:, 2].contiguous(),
                               diameter=sel[:, 3].contiguous(), threshold=t, max_per_micrograph=max_per_micrograph)


def picking_shape(shape: tuple[int, int], pixel_size: float, target: float) -> tuple[int, int]:
    """``(h, w)`` of the Fourier-cropped micrograph: even sizes with pixels of about ``target`` Å (the nearest
    fast FFT length at or above, a few pixels at most: prime lengths would make every FFT after several
    times slower)."""
    f = max(1.0, target / pixel_size)
    return tuple(min(n, good_fft_size(max(16, 2 * int(round(n / f / 2))))) for n in shape)  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _grid(shape: tuple[int, int], pixel_size: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """:func:`cryolens.core.fourier.rfft_polar_grid`, kept for the few shapes of a dataset's micrographs
    (callers must not modify the tensors in place)."""
    return rfft_polar_grid(shape, pixel_size, device)


@functools.lru_cache(maxsize=4)
def _band(shape: tuple[int, int], pixel_size: float, *, low: float, high: float, device) -> torch.Tensor:
    """Soft band-pass on the rfft grid: removes features larger than ``high`` Å and finer than ``low`` Å
    (kept per shape like :func:`_grid`; not to be modified in place)."""
    s2 = _grid(shape, pixel_size, device)[0]
    return (1 - torch.exp(-s2 * high * high / 2)) * torch.exp(-s2 * low * low / 2)


@functools.lru_cache(maxsize=8)
def _blob_fts(radii: tuple[float, ...], cavities: tuple[float, ...], shape: tuple[int, int], pixel_size: float,
              device) -> torch.Tensor:
    """:func:`cryolens.picking.filters.sphere_projection_ft` of ``radii`` with ``cavities`` (Å), kept across
    micrographs of one shape (not to be modified in place)."""
    return sphere_projection_ft(torch.tensor(radii), shape, pixel_size, device=device, cavities=torch.tensor(cavities))


def pick_micrograph(image: torch.Tensor, *, pixel_size: float, params: PickParams, ctf: CTFParams | None = None,
                    templates: torch.Tensor | None = None, template_pixel_size: float | None = None,
                    volume: torch.Tensor | None = None, volume_pixel_size: float | None = None, device=None,
                    progress: Callable[[int, int], None] | None = None) -> Picks:
    """Pick particles in one micrograph.

    Args:
        image: ``(H, W)`` micrograph as recorded (protein dark), any float dtype.
        pixel_size: Å per pixel of ``image``.
        params: :class:`PickParams` (validated here).
        ctf: the micrograph's CTF (scalar :class:`CTFParams`; defocus in Å); None: no CTF
            modulation (the blob is taken as dark, right for low-resolution contrast).
        templates: ``(T, b, b)`` white-on-black class averages at ``template_pixel_size`` Å
            (``method="template"``).
        volume: ``(n, n, n)`` map at ``volume_pixel_size`` Å whose projections serve as
            templates (``method="template"`` without ``templates``).
        device: where to compute (default: the image's device).
        progress: ``progress(done, total)`` while correlating templates.

    Returns:
        :class:`Picks` (on ``device``).

    Raises:
        ValueError: impossible params, a diameter larger than the micrograph, or
        ``method="template"`` without templates or a map.
    """
    params.validate()
    params.require_diameter()
    dev = torch.device(device) if device is not None else image.device
    img = image.to(device=dev, dtype=torch.float32)
    H, W = img.shape
    d_min, d_max = params.diameters
    if d_max >= min(H, W) * pixel_size:
        raise ValueError(f"--diameter {d_max:g} Å: larger than the micrograph ({W}x{H} px at {pixel_size:g} Å)")
    h, w = picking_shape((H, W), pixel_size, params.resolved_pick_pixel_size(pixel_size))
    sy, sx = H / h, W / w
    p = pixel_size * (sy + sx) / 2  # Å per picking pixel (square to within rounding)
    small = fourier_crop_2d(img, (h, w))
    small = small - small.mean()  # Fourier cropping keeps the mean: cheaper than centring the full image
    valid = torch.zeros((h, w), dtype=torch.bool, device=dev)
    e = params.resolved_edge()
    ey, ex = int(math.ceil(e / (pixel_size * sy))), int(math.ceil(e / (pixel_size * sx)))
    valid[ey:max(ey, h - ey), ex:max(ex, w - ex)] = True
    avoid = None
    if params.avoid_blobs:
        avoid = avoidance_mask(small, sigma_px=d_max / 4 / p, mean_z=params.avoid_mean_z, sd_z=params.avoid_sd_z,
                               dilate_px=d_max / 4 / p)
        valid &= ~avoid
        small = fill_areas(small, avoid)
    pad = int(math.ceil(d_max / p))
    padded = reflect_pad(small, pad)
    pad = (padded.shape[-1] - w) // 2
    eh, ew = (good_fft_size(n) - n for n in padded.shape)  # extend (at the far edges) to fast FFT lengths
    if 0 < pad + max(eh, ew) < min(h, w):
        padded = F.pad(small[None, None], (pad, pad + ew, pad, pad + eh), mode="reflect")[0, 0]
    shape = tuple(padded.shape)
    f = torch.fft.rfft2(padded)
    low = params.lowpass if params.lowpass is not None else 2.5 * p
    high = params.highpass if params.highpass is not None else 2.0 * d_max
    band = _band(shape, p, low=low, high=high, device=dev)
    contrast = -micrograph_ctf(ctf, shape, p, grid=_grid(shape, p, dev)) if ctf is not None else -torch.ones_like(band)
    crop = (slice(pad, pad + h), slice(pad, pad + w))
    white = band * whitening_filter(f, shape)
    blob = None
    if params.method == "log":  # already in SDs (see _log_scores)
        zmap, size = (m[crop] for m in _log_scores(f, shape, p, contrast, white, d_min, d_max))
        sub, rc, vals = _suppressed(zmap, valid, params, p)
    elif params.method == "matched":
        blob, zmap, size = _matched_best(f * white, shape, p, contrast * white, crop, valid, params)
        sub, rc, vals = _suppressed(zmap, valid, params, p)
    else:
        where = torch.zeros(shape, dtype=torch.bool, device=dev)  # score only where peaks may be, and around
        where[pad:pad + h, pad:pad + w] = F.max_pool2d(valid[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        score, size, lobes = _template_scores(f * white, shape, p, contrast * white, params, templates,
                                              template_pixel_size, volume, volume_pixel_size, progress, where, pad)
        score, size = score[crop], size[crop]
        zmap, sd = _background_z(score, valid)
        sub, rc, vals = _suppressed(zmap, valid, params, p)
        # remove the side lobes that accepted particles predict at each peak above the threshold (those below
        # stay below it: a side lobe is only subtracted; they keep their score for re-selection)
        above = vals > params.resolved_threshold()
        k = int(above.sum())  # vals descend: the peaks above the threshold come first
        vals = torch.cat([vals[:k] - _predicted_lobes(lobes, rc[:k] + pad, score, above[:k],
                                                      params.diameters[1] * 1.25 / p) / sd, vals[k:]])
        order = torch.argsort(vals, descending=True, stable=True)
        sub, rc, vals = sub[order], rc[order], vals[order]
    threshold = params.resolved_threshold()
    floor = min(params.keep_floor, threshold)
    cand = torch.stack([sub[:, 1] * sx, sub[:, 0] * sy, vals, size[rc[:, 0], rc[:, 1]]], dim=1)
    picks = Picks(x=cand[:, 0], y=cand[:, 1], score=cand[:, 2], diameter=cand[:, 3], candidates=cand, floor=floor,
                  threshold=threshold, max_per_micrograph=None, score_map=zmap, avoid=avoid,
                  pick_pixel_size=(pixel_size * sy, pixel_size * sx), scale=(sy, sx),
                  blob_radius=blob[0] if blob else None, blob_cavity=blob[1] if blob else None,
                  blob_lowpass=blob[2] if blob else None)
    return select_picks(picks, threshold=threshold, max_per_micrograph=params.max_per_micrograph)


def _matched_best(fw, shape, p: float, transfer, crop, valid, params: PickParams):
    """The matched filter's ``(blob, z-map, size map)``: of :data:`BLOB_CHOICES` (unless ``params.blob_radius`` is
    given), the blob whose best :data:`AUTO_TOP` (or one per :data:`AUTO_AREA`) peaks score highest on average; then, the same way, that blob as is
    or through the coarser low-passes of :data:`BLOB_LOWPASS` (fractions of the diameter)."""
    d_min, d_max = params.diameters
    low = params.lowpass if params.lowpass is not None else 2.5 * p  # the band's low-pass (Å)
    best = None
    blobs = ((params.blob_radius, 0.0),) if params.blob_radius is not None else BLOB_CHOICES
    d = (d_min + d_max) / 2
    coarser = [f for f in BLOB_LOWPASS if f * d > low] if params.blob_lowpass else []
    alone = len(blobs) == 1 and not coarser
    n_top = max(AUTO_TOP, round(float(valid.sum()) * p * p / (d * d) / AUTO_AREA))

    def trial(blob: tuple[float, float, float]):
        nonlocal best
        extra = (blob[2] * d) ** 2 - low ** 2  # a coarser low-pass: its Gaussian's added variance
        g = torch.exp(-_grid(shape, p, fw.device)[0] * (extra / 2)) if extra > 0 else 1.0
        score, size = (m[crop] for m in _matched_scores(fw * g, shape, p, transfer * g, d_min, d_max, *blob[:2]))
        zmap = _background_z(score, valid)[0]
        if alone:  # nothing to compare with
            best = (0.0, blob, zmap, size)
            return
        found = _suppressed(zmap, valid, params, p, top=n_top)  # the best n_top only: a prefix
        top = float(found[2][:n_top].mean()) if found[2].numel() else -math.inf
        if best is None or top > best[0]:  # ties keep the first (the compact blob, the finer low-pass)
            best = (top, blob, zmap, size)

    for blob in blobs:
        trial((*blob, 0.0))
    chosen = best[1][:2]
    for fraction in coarser:
        trial((*chosen, fraction))
    return best[1:]


def _background_z(score: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The score map in SDs of its background between particles (:func:`mode_stats` over the valid pixels),
    and that SD."""
    # every other row and column: the statistics of a map smooth at the particle's scale need no more
    sub, ok = score[::2, ::2], valid[::2, ::2]
    centre, sd = mode_stats(sub[ok] if int(ok.sum()) > 16 else sub)
    return (score - centre) / sd, sd


def _suppressed(zmap: torch.Tensor, valid: torch.Tensor, params: PickParams, p: float, *, top: int | None = None):
    """Local maxima of ``zmap`` (SDs) down to the candidates' floor, refined to sub-pixel and suppressed within
    the minimum distance: ``(sub (K, 2), rc (K, 2) long, vals (K,))`` by descending score (``p``: Å per pixel).

    ``top``: only the first ``top`` survivors are needed (at least those are returned, exactly as in the full
    result): greedy suppression decides a peak from the higher ones only, so the highest peaks are suppressed
    alone first, and all of them only if too few survive."""
    rc = local_maxima(zmap, valid=valid, floor=min(params.keep_floor, params.resolved_threshold()))
    vals = zmap[rc[:, 0], rc[:, 1]]
    halo = (params.diameters[1] * params.halo[0] / p, params.halo[1]) if params.halo[1] > 0 else None
    if top is not None and rc.shape[0] > 8 * top:
        first = torch.argsort(vals, descending=True, stable=True)[:8 * top]
        sub = refine_subpixel(zmap, rc[first])
        keep = suppress_non_maxima(sub, vals[first], params.resolved_min_distance() / p, halo=halo)
        if keep.numel() >= top:
            return sub[keep], rc[first][keep], vals[first][keep]
    sub = refine_subpixel(zmap, rc)
    keep = suppress_non_maxima(sub, vals, params.resolved_min_distance() / p, halo=halo)
    return sub[keep], rc[keep], vals[keep]


def _sizes(d_min: float, d_max: float, step: float) -> torch.Tensor:
    """Diameters (Å) from d_min to d_max, geometric, about ``step`` (relative) apart; one when equal."""
    if d_max <= d_min * 1.001:
        return torch.tensor([d_min])
    n = max(2, int(math.ceil(math.log(d_max / d_min) / math.log(1 + step))) + 1)
    return torch.exp(torch.linspace(math.log(d_min), math.log(d_max), n))


def _best_over(maps: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-size maps made comparable (each in SDs of its background, :func:`mode_z`), then the best per
    pixel and its size (Å)."""
    if maps.shape[0] == 1:
        return maps[0], torch.full_like(maps[0], float(sizes[0]))
    z = torch.stack([mode_z(m) for m in maps])
    best, arg = z.max(dim=0)
    return best, sizes.to(best.device)[arg]


def _matched_scores(fw: torch.Tensor, shape, p: float, transfer: torch.Tensor, d_min: float, d_max: float,
                    radius_fraction: float, cavity_fraction: float = 0.0):
    """Matched filter with projected spheres of the diameters' range (whitened image ``fw``).

    The sphere's radius is ``radius_fraction`` × the diameter: after whitening the blob's edge
    dominates, and a blob as large as the particle's outline turns each peak into a ring
    around the particle; a smaller characteristic radius (cisTEM's advice too) keeps one
    peak at the centre for elongated and round particles alike. ``cavity_fraction > 0`` hollows
    the sphere (a cavity of that many diameters in radius): the matched filter of a shell."""
    sizes = _sizes(d_min, d_max, 0.15)
    t = _blob_fts(tuple((sizes * radius_fraction).tolist()), tuple((sizes * cavity_fraction).tolist()), tuple(shape), p,
                  fw.device) * transfer
    norm = rfft_energy(t, shape[-1]).sqrt().clamp_min(1e-30)  # Parseval: no inverse FFT
    maps = irfftn(fw * t.conj(), s=shape) / norm[:, None, None]
    return _best_over(maps, sizes)


def _log_scores(f: torch.Tensor, shape, p: float, contrast: torch.Tensor, band: torch.Tensor, d_min: float,
                d_max: float):
    """Scale-normalised LoG of the phase-flipped, whitened, contrast-inverted image; best scale per pixel.

    Each scale's map is divided by its own standard deviation over the whole map (not a robust
    one: at the particle's scale a crowded micrograph has too few independent background
    samples for a median-based estimate), then the best scale is taken per pixel."""
    sizes = _sizes(d_min, d_max, 0.1)
    flipped = f * torch.sign(contrast) * band  # protein made bright (and phase-flipped with a CTF)
    filt = log_filters(sizes / (2 * math.sqrt(2)), shape, p, device=f.device)
    maps = irfftn(flipped * filt, s=shape)
    flat = maps.reshape(maps.shape[0], -1)
    z = (maps - flat.median(dim=1).values[:, None, None]) / flat.std(dim=1).clamp_min(1e-30)[:, None, None]
    best, arg = z.max(dim=0)
    return best, sizes.to(best.device)[arg]


def _template_scores(fw, shape, p, transfer, params: PickParams, templates, template_pixel_size, volume,
                     volume_pixel_size, progress, where=None, pad=0):
    """Best NCC with (rotated) templates; the size map holds the diameter for every pixel."""
    d_max = params.diameters[1]
    dev = fw.device
    if templates is None:
        if volume is None:
            raise ValueError("--method template needs templates (class averages) or a map")
        if volume_pixel_size is None:
            raise ValueError("the map's pixel size is needed")
        source, key = volume, ("map", float(volume_pixel_size), params.healpix_order)
    elif template_pixel_size is None:
        raise ValueError("the templates' pixel size is needed")
    else:
        source, key = templates, ("templates", float(template_pixel_size))

    def build() -> TemplateBank:
        band_px = (low / p, high / p)
        if templates is None:  # projections, finer directions where the views change fast (map_templates)
            prepared, _ = map_templates(volume.to(dev), pixel_size=volume_pixel_size, out_pixel_size=p, diameter=d_max,
                                        psi_step=params.psi_step, healpix_order=params.healpix_order, band_px=band_px,
                                        oversample=OVERSAMPLE)
        else:
            prepared, _ = rotated_templates(templates.to(dev), pixel_size=template_pixel_size, out_pixel_size=p,
                                            diameter=d_max, psi_step=params.psi_step, band_px=band_px,
                                            oversample=OVERSAMPLE)
        prepared = prepared[distinct_templates(prepared, band_px)]  # near-duplicates (symmetry, round views) cost only
        return template_bank(prepared, tolerance=params.rank_tolerance, band_px=band_px)

    low = params.lowpass if params.lowpass is not None else 2.5 * p  # the band of _band (Å)
    high = params.highpass if params.highpass is not None else 2.0 * d_max
    bank = cached(source, (*key, round(p, 6), d_max, params.psi_step, params.rank_tolerance, round(low, 6),
                           round(high, 6), str(dev)), build)
    dtype = fast_matmul_dtype(dev) if params.reduced_precision else torch.float32
    scores = bank_scores(fw, shape, bank, transfer=transfer, mask_radius_px=d_max / 2 / p, stride=params.coarse_stride,
                         origin=(pad, pad), dtype=dtype)
    chunk = params.batch_size * 128
    if params.coarse_stride > 1:
        best = coarse_fine_best(scores, where, floor=params.refine_floor, chunk=chunk, progress=progress)
    else:
        pix = torch.nonzero(where.reshape(-1))[:, 0]
        best = median_filled(scores.best(pix, chunk=chunk, progress=progress), pix, shape)
    return best, torch.full_like(best, d_max), dict(templates=bank.templates, shape=shape, transfer=transfer,
                                                    scores=scores, pad=pad)


def _predicted_lobes(lobes: dict, rc: torch.Tensor, ncc: torch.Tensor, parent: torch.Tensor, radius_px: float):
    """Side-lobe NCC at peaks ``rc`` (padded-grid pixels) predicted by the ``parent`` peaks
    (:func:`cryolens.picking.templates.side_lobes`); ``ncc`` is the cropped NCC map."""
    pad = lobes["pad"]
    r, c = rc[:, 0], rc[:, 1]
    scores = lobes["scores"]
    _, index = scores.best_index(r * lobes["shape"][1] + c)
    return side_lobes(lobes["templates"], lobes["shape"], transfer=lobes["transfer"], rc=rc, index=index,
                      ncc=ncc[r - pad, c - pad], denom=scores.denom[r, c], parent=parent, radius_px=radius_px)
