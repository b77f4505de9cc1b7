"""Peaks of a score map: local maxima, sub-pixel refinement, greedy non-maximum suppression,
robust normalisation and the avoidance of abnormal areas.

All batched torch; the suppression is the exact greedy result (a peak survives when no
surviving higher peak lies within the minimum distance) computed by a vectorised fixed-point
iteration instead of a Python loop over peaks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cryolens.core.fourier import irfftn
from cryolens.picking.filters import local_mean_sd

__all__ = ["fill_areas", "robust_z", "mode_stats", "mode_z", "local_maxima", "refine_subpixel", "suppress_non_maxima", "avoidance_mask",
           "ice_level", "BRIGHTER_FRACTION", "neighbour_scale", "MEAN_LAG"]

_MAD_TO_SD = 1.4826  # SD of a normal distribution per median absolute deviation


def robust_z(values: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``(values - median) / (1.4826 · MAD)``, the statistics taken over ``valid`` (all if None).

    A robust z-score: particles, carbon or contaminants covering less than half of the area
    do not move the median and the MAD much, so the score of ordinary areas is ~N(0, 1).
    """
    v = values[valid] if valid is not None else values.reshape(-1)
    if v.numel() > 2_000_000:  # a fixed strided subset keeps the median cheap on big maps
        v = v[:: v.numel() // 1_000_000 + 1]
    med = v.median()
    mad = (v - med).abs().median() * _MAD_TO_SD
    return (values - med) / mad.clamp_min(1e-12 * (med.abs() + 1))


def mode_stats(values: torch.Tensor, *, bins: int = 512, iterations: int = 30, clip: float = 5.0,
               side: int = 0) -> tuple[float, float]:
    """``(centre, scale)`` of the dominant population of ``values``, robust to outliers covering most of the area.

    Starts at the peak of the histogram (between the 0.5 and 99.5 percentiles) with a scale of
    two histogram bins, then clips iteratively: median and 1.4826 × MAD of the values
    within ``clip`` scales of the current centre. This converges on the most common population
    (ordinary ice in maps of the local mean or SD) even when carbon or contaminants cover more
    than half of the micrograph, where the plain median would not. ``side=+1`` (``-1``) looks
    for the histogram's peak above (below) the median only: a flat dark carbon film makes a
    sharper histogram peak than ice with particles, but ice is the brighter level.

    Medians are the lower middle value (as :meth:`torch.Tensor.median`). The values (a strided subset of at
    most ~200 000) are sorted once and the iteration runs in NumPy on the host: scalar statistics of a few
    thousand values, where torch's per-operation cost would dominate.
    """
    v = values.reshape(-1)
    if v.numel() > 200_000:  # a fixed strided subset: the statistics of a smooth map need no more
        v = v[:: v.numel() // 100_000]
    # One sort serves the percentiles and every clipping step: the values within ``clip`` scales of
    # the centre are a contiguous slice of the sorted values, whose median is its middle element.
    sv = np.sort(v.detach().to("cpu", torch.float32).numpy())
    n = sv.size
    lo, med, hi = (_sorted_quantile(sv, q) for q in (0.005, 0.5, 0.995))
    lo, hi = (med, hi) if side > 0 else (lo, med) if side < 0 else (lo, hi)
    if not hi > lo:
        m = float(sv[(n - 1) // 2])
        return m, float(_lower_median(np.abs(sv - np.float32(m)))) * _MAD_TO_SD or 1.0
    edges = np.searchsorted(sv, np.linspace(lo, hi, bins + 1, dtype=np.float32), side="left")
    edges[-1] = np.searchsorted(sv, np.float32(hi), side="right")  # the last bin includes hi (as histc)
    hist = np.diff(edges).astype(np.float32)  # counts per bin, from the sorted values
    hist = np.convolve(np.pad(hist, 2, mode="edge"), np.full(5, 0.2, dtype=np.float32), mode="valid")
    centre = lo + (int(hist.argmax()) + 0.5) * (hi - lo) / bins
    scale = 2 * (hi - lo) / bins  # grows to the population's spread
    for _ in range(iterations):
        a = int(np.searchsorted(sv, np.float32(centre - clip * scale), side="right"))  # first value above the lower bound
        b = int(np.searchsorted(sv, np.float32(centre + clip * scale), side="left"))  # first at or above the upper
        if b - a < 16:
            break
        sel = sv[a:b]
        new_centre = float(sel[(b - a - 1) // 2])
        new_scale = float(_lower_median(np.abs(sel - np.float32(new_centre)))) * _MAD_TO_SD
        done = abs(new_centre - centre) <= 1e-4 * new_scale and abs(new_scale - scale) <= 1e-4 * new_scale
        centre, scale = new_centre, new_scale
        if done:
            break
    return float(centre), max(float(scale), 1e-12 * (abs(float(centre)) + 1))


def _lower_median(a: np.ndarray) -> float:
    """The lower middle value of ``a`` (torch's median; NumPy's averages the two middle ones)."""
    k = (a.size - 1) // 2
    return float(np.partition(a, k)[k])


def _sorted_quantile(sv: np.ndarray, q: float) -> float:
    """The ``q`` quantile of sorted values ``sv`` (linear interpolation, as :func:`torch.quantile`)."""
    pos = q * (sv.size - 1)
    i = int(pos)
    j = min(i + 1, sv.size - 1)
    return float(sv[i] + (sv[j] - sv[i]) * (pos - i))


def mode_z(values: torch.Tensor, valid: torch.Tensor | None = None, *, side: int = 0) -> torch.Tensor:
    """``(values - centre) / scale`` with :func:`mode_stats` of the values (of those in ``valid`` if given)."""
    centre, scale = mode_stats(values[valid] if valid is not None else values, side=side)
    return (values - centre) / scale


def local_maxima(score: torch.Tensor, *, valid: torch.Tensor, floor: float) -> torch.Tensor:
    """``(K, 2)`` long (row, col) of pixels that are the maximum of their 3×3 neighbourhood,
    inside ``valid`` and with ``score >= floor``."""
    x = F.pad(score, (1, 1, 1, 1), value=-math.inf)  # separable 3×3 maximum (5× cheaper than max_pool2d on CPU)
    rows = torch.maximum(torch.maximum(x[:, :-2], x[:, 1:-1]), x[:, 2:])
    pooled = torch.maximum(torch.maximum(rows[:-2], rows[1:-1]), rows[2:])
    return torch.nonzero((score >= pooled) & valid & (score >= floor))


def refine_subpixel(score: torch.Tensor, rc: torch.Tensor) -> torch.Tensor:
    """Sub-pixel ``(K, 2)`` float (row, col) of peaks by a separable parabola through 3 samples."""
    h, w = score.shape
    r, c = rc[:, 0], rc[:, 1]
    rm, rp = (r - 1).clamp(0, h - 1), (r + 1).clamp(0, h - 1)
    cm, cp = (c - 1).clamp(0, w - 1), (c + 1).clamp(0, w - 1)
    s0 = score[r, c]

    def offset(a, b):
        den = a - 2 * s0 + b
        return torch.where(den < 0, 0.5 * (a - b) / den.clamp_max(-1e-20), torch.zeros_like(den)).clamp(-0.5, 0.5)

    return torch.stack([r.float() + offset(score[rm, c], score[rp, c]), c.float() + offset(score[r, cm], score[r, cp])],
                       dim=1)


def suppress_non_maxima(xy: torch.Tensor, score: torch.Tensor, min_distance: float, *,
                        halo: tuple[float, float] | None = None, block: int = 4096, dense: int = 2048) -> torch.Tensor:
    """Indices of the peaks kept by greedy non-maximum suppression, in descending score.

    Greedy rule: visiting peaks from the highest score down, a peak is kept unless a kept
    peak lies closer than ``min_distance`` (same units as ``xy``). Computed exactly by
    iterating: a peak is kept once no undecided-or-kept higher neighbour remains, dropped once
    a kept higher neighbour exists. Ties in score are broken by index.

    With ``halo = (distance, ratio)`` a kept peak also suppresses, within ``distance``, the
    peaks whose score is below ``ratio`` × its own: the side lobes that CTF-modulated
    correlations leave around a strong particle, just beyond the minimum distance.

    Args:
        xy: ``(K, 2)`` positions; score: ``(K,)``; block: larger sets are first thinned to the
            maximum of each grid cell of side ``min_distance/√2`` (an approximation of the
            greedy rule for such crowded maps). Up to ``dense`` peaks the neighbours come from a
            K×K distance matrix (a few dense products, cheapest for the few hundred peaks of a
            micrograph); beyond, through grid cells (memory linear in K).
    """
    k = xy.shape[0]
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=xy.device)
    order = torch.argsort(score, descending=True, stable=True)
    p = xy[order].float()
    sc = score[order].float()
    if k > block:  # thin to cell maxima first; two peaks in one cell are closer than min_distance
        cell = max(min_distance / 2 ** 0.5, 1e-6)
        key = torch.floor(p / cell).long()
        key = (key[:, 0] - key[:, 0].min()) * (int(key[:, 1].max() - key[:, 1].min()) + 1) + (key[:, 1] - key[:, 1].min())
        first = torch.full((int(key.max()) + 1,), k, dtype=torch.long, device=p.device)
        first.scatter_reduce_(0, key, torch.arange(k, device=p.device), reduce="amin")
        keep_idx = torch.unique(first[first < k])
        order, p, sc = order[keep_idx], p[keep_idx], sc[keep_idx]
        k = p.shape[0]
    if k <= dense:  # a K×K neighbour matrix: one distance product and a few matrix-vector products
        d2 = torch.cdist(p, p).square()
        higher = (d2 < min_distance ** 2).tril_(-1)  # higher[i, j]: j is a higher neighbour of i
        if halo is not None:
            higher |= (d2 < halo[0] ** 2).tril_(-1) & (sc[:, None] < halo[1] * sc[None, :])
        a = higher.float()
        state = torch.zeros(k, device=p.device)  # 0 undecided, 1 kept, -1 dropped
        while bool((state == 0).any()):
            undecided = state == 0
            nb = torch.stack([state == 1, undecided]).float() @ a.T  # kept and undecided higher neighbours
            kept_nb, open_nb = nb[0] > 0, nb[1] > 0
            state = torch.where(undecided & kept_nb, -1.0, torch.where(undecided & ~open_nb, 1.0, state))
        return order[state == 1]
    reach = max(min_distance, halo[0]) if halo is not None else min_distance
    pi, pj, d2 = _pairs_within(p, reach)  # sparse pairs: each peak has few neighbours
    higher = (pj < pi) & (d2 < min_distance ** 2)  # pj is a higher neighbour of pi
    if halo is not None:
        higher |= (pj < pi) & (d2 < halo[0] ** 2) & (sc[pi] < halo[1] * sc[pj])
    pi, pj = pi[higher], pj[higher]
    state = torch.zeros(k, dtype=torch.int8, device=p.device)  # 0 undecided, 1 kept, -1 dropped
    while bool((state == 0).any()):
        sj = state[pj]
        kept_nb = torch.zeros(k, dtype=torch.int32, device=p.device).index_add_(0, pi, (sj == 1).int()) > 0
        open_nb = torch.zeros(k, dtype=torch.int32, device=p.device).index_add_(0, pi, (sj == 0).int()) > 0
        undecided = state == 0
        state = torch.where(undecided & kept_nb, torch.full_like(state, -1), state)
        state = torch.where(undecided & ~kept_nb & ~open_nb, torch.ones_like(state), state)
    return order[state == 1]


def _pairs_within(p: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered pairs ``(i, j)``, ``i != j``, of points ``p (K, 2)`` closer than ``radius``, with their
    squared distances: points binned in square cells of side ``radius``, each compared with the
    points of its own and the 8 neighbouring cells (no K×K matrix)."""
    k = p.shape[0]
    dev = p.device
    radius = max(float(radius), 1e-6)
    cell = torch.floor(p / radius).long()
    cell = cell - cell.min(dim=0).values + 1  # a margin of one empty cell on every side
    ncol = int(cell[:, 1].max()) + 2
    key = cell[:, 0] * ncol + cell[:, 1]
    n_cells = (int(cell[:, 0].max()) + 2) * ncol
    order = torch.argsort(key, stable=True)
    ks = key[order]
    counts = torch.bincount(ks, minlength=n_cells)
    start = torch.cumsum(counts, 0) - counts
    table = torch.full((n_cells, int(counts.max())), -1, dtype=torch.long, device=dev)
    table[ks, torch.arange(k, device=dev) - start[ks]] = order
    offsets = torch.tensor([dy * ncol + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=dev)
    cand = table[key[:, None] + offsets[None, :]].reshape(k, -1)  # (K, 9·max per cell)
    i = torch.arange(k, device=dev)[:, None].expand_as(cand)
    d2 = (p[:, None, :] - p[cand.clamp_min(0)]).square().sum(-1)
    ok = (cand >= 0) & (cand != i) & (d2 < radius * radius)
    return i[ok], cand[ok], d2[ok]


#: A population of the local mean brighter than the chosen ice level by more than the avoidance threshold and covering at
#: least this fraction of the micrograph is taken as the ice instead (:func:`ice_level`).
BRIGHTER_FRACTION = 0.1


def ice_level(mean: torch.Tensor, mean_z: float) -> tuple[float, float]:
    """``(centre, scale)`` of ordinary ice in a map of local means: :func:`mode_stats` among the brighter half, then,
    while the values more than ``mean_z`` scales above it cover at least :data:`BRIGHTER_FRACTION` of the map, the
    mode of those values instead.

    Carbon film, contaminants, ice crystals and thick ice all absorb more than the thin ice particles are picked in,
    so the ice is the brightest extensive population. The brighter half alone is not enough: where carbon and
    contaminants cover most of a micrograph, the flat carbon makes the sharpest histogram peak above the median, the
    ice then read as abnormal (+89 scales on a simulated micrograph, benchmarks/picking.py apoferritin 1.2 Å/px,
    seed 1700) and only the carbon was picked. The brighter population is summarised with a tight clip (3 scales,
    :func:`mode_stats`): its lower side holds the transitions to the darker areas at their edges, which a wide clip
    takes in step by step (on one such micrograph the scale doubled, edges read as ordinary ice and their high
    local SD raised the SD's reference: picks fell on the fringe of a carbon edge).
    """
    v = mean.reshape(-1)
    centre, scale = mode_stats(v, side=1)
    for _ in range(4):
        brighter = v[v > centre + mean_z * scale]
        if brighter.numel() < BRIGHTER_FRACTION * v.numel() or brighter.numel() <= 16:
            break
        centre, scale = mode_stats(brighter, clip=3.0)  # a tight clip: see above
    return centre, scale


#: The local mean's scale (:func:`avoidance_mask`) is taken from differences between samples this many ``sigma_px``
#: apart (4: one diameter at the picker's σ = d/4), not from the spread of the whole map.
MEAN_LAG = 4


def neighbour_scale(mean: torch.Tensor, *, lag: int, centre: float, scale: float, limit: float) -> float:
    """The spread of a smooth map ``mean`` between neighbouring areas ``lag`` samples apart: 1.4826 × the MAD of the
    differences of samples that far apart (rows and columns) over √2, over the pairs both within ``limit`` scales of
    ``centre``: first with the population's ``scale`` (:func:`ice_level`'s, which can only be wider), then once more
    with that estimate. All pairs at first would take in the darker areas' own variation (a carbon film covering two
    thirds of a 1024² micrograph at 1.2 Å/px, benchmarks/picking.py seed 500: a 16× larger scale, carbon picked).
    Never above the population's ``scale``: each can only over-estimate the spread of ordinary ice, that one through
    gradients across the field of view, this one through the ramps at the edges of darker areas where the ice is a
    small part of the map (a 1024² micrograph 80 % carbon at 1.2 Å/px, seed 1300: 0.73 against 0.29, carbon picked).

    Unlike the spread of the map's values, it does not grow with the field of view: smooth ice-thickness gradients
    (simulated correlation length 2000 Å) add little to differences one diameter apart, but across a 4096² micrograph
    they doubled or tripled the ice's MAD of the local mean, so that carbon film covering 40 % of it read at -10 such
    scales only and was picked (benchmarks/picking.py --size 4096, phantom, seed 500)."""
    def spread(ok: torch.Tensor) -> float:
        a, b = (mean[lag:, :] - mean[:-lag, :]).reshape(-1), (mean[:, lag:] - mean[:, :-lag]).reshape(-1)
        v = torch.cat([a, b])[torch.cat([(ok[lag:, :] & ok[:-lag, :]).reshape(-1), (ok[:, lag:] & ok[:, :-lag]).reshape(-1)])]
        if v.numel() < 16:
            return math.nan
        if v.numel() > 200_000:  # a fixed strided subset keeps the median cheap
            v = v[:: v.numel() // 100_000]
        return float((v - v.median()).abs().median()) * _MAD_TO_SD / math.sqrt(2)

    if min(mean.shape) <= lag:
        return scale
    population = scale
    for _ in range(2):
        new = spread((mean - centre).abs() <= limit * scale)
        if not new > 0:  # too few pairs (nan) or a constant map: keep the last
            break
        scale = new
    return max(min(scale, population), 1e-12 * (abs(centre) + 1))


def avoidance_mask(image: torch.Tensor, *, sigma_px: float, mean_z: float, sd_z: float, dilate_px: float,
                   ) -> torch.Tensor:
    """Areas to avoid: abnormal local mean grown by ``dilate_px``, or high local variance.

    Local mean and SD are Gaussian-weighted at ``sigma_px`` (the particle's scale) on the
    low-resolution image; each is turned into a robust z-score over the micrograph
    (:func:`mode_stats` on a strided subset of at most ~20 000 pixels, none closer than ``sigma_px/2``: about
    the most common level, for the mean the ice's (:func:`ice_level`), for the SD among the pixels whose mean is
    normal, i.e. ordinary ice with its particles). The mean's scale is the ice's spread between neighbouring areas
    :data:`MEAN_LAG` × ``sigma_px`` apart (:func:`neighbour_scale`), so that it does not grow with the field of view
    through smooth ice-thickness gradients. A pixel is bad where ``|z_mean| > mean_z`` (carbon film,
    thick ice, contaminants: absorbing objects are dark) or ``z_sd > sd_z`` (edges of carbon or
    contaminants, ice crystals); the abnormal-mean area is then dilated by a disc of ``dilate_px`` so
    that the rims of dark blobs are avoided too. The high-SD area is not dilated: it already reaches
    beyond the edges that raise it (at σ = ``sigma_px``, a strong edge lifts the local SD over the threshold
    out to ~2σ from it, half a diameter at the picker's σ = d/4); dilating it as well kept picks ~0.75 d
    from contaminant and carbon edges, and particles next to them were lost (benchmarks/picking.py,
    apoferritin 1.2 Å/px, seed 1700: F1 on particles clear of the carbon 0.928 -> 0.980). The maps, z-scores and dilation are computed on a grid
    ``c = floor(sigma_px / 2)`` times coarser (the maps are smooth at ``sigma_px``; :func:`local_mean_sd`
    with ``step``), and the mask is brought back to the image's pixels by nearest neighbour (its outline
    is thus placed to within ``c/2`` pixels).

    Returns:
        ``(H, W)`` bool, True where to avoid.
    """
    c = max(1, int(sigma_px / 2))
    mean, sd = local_mean_sd(image, sigma_px=sigma_px, step=c)
    c = -(-image.shape[-2] // mean.shape[-2])  # the step local_mean_sd used (1 on images too small for c)
    # The maps are smooth at sigma_px: a strided subset (at most ~20 000 values) gives their statistics.
    step = max(1, int(sigma_px / 2 / c), math.ceil(math.sqrt(mean.numel() / 20_000)))
    centre, scale = ice_level(mean[::step, ::step], mean_z)
    scale = neighbour_scale(mean, lag=max(1, round(MEAN_LAG * sigma_px / c)), centre=centre, scale=scale, limit=mean_z)
    normal = ((mean - centre) / scale).abs() <= mean_z
    sub = normal[::step, ::step]
    centre, scale = mode_stats(sd[::step, ::step][sub] if int(sub.sum()) > 16 else sd[::step, ::step])
    high_sd = (sd - centre) / scale > sd_z
    bad = ~normal
    rc = dilate_px / c  # the disc's radius in coarse pixels
    r = int(rc)
    if r > 0 and bool(bad.any()):
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1, device=image.device), torch.arange(-r, r + 1, device=image.device),
                                indexing="ij")
        disc = ((yy * yy + xx * xx) <= rc * rc).float()
        h, w = bad.shape
        shape = (h + 2 * r, w + 2 * r)  # zero-padded: no wrap-around; the disc's centre at (0, 0)
        kernel = torch.zeros(shape, device=image.device)
        kernel[yy % shape[0], xx % shape[1]] = disc
        grown = irfftn(torch.fft.rfft2(F.pad(bad.float(), (0, 2 * r, 0, 2 * r))) * torch.fft.rfft2(kernel),
                                 s=shape)[:h, :w]  # disc counts by FFT convolution (cheaper than conv2d on big maps)
        bad = grown > 0.5
    bad = bad | high_sd
    if c > 1:  # nearest coarse sample (sample i lies at pixel i·c): pixel y takes sample (y + c//2) // c
        o = c // 2
        bad = F.pad(bad[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        bad = bad.repeat_interleave(c, 0).repeat_interleave(c, 1)
        bad = bad[c + o:c + o + image.shape[-2], c + o:c + o + image.shape[-1]] > 0.5
    return bad


def fill_areas(image: torch.Tensor, bad: torch.Tensor, *, edge_px: float = 2.0) -> torch.Tensor:
    """``image`` with the ``bad`` areas replaced by the median of the rest, blended over a soft edge.

    Keeps carbon, contaminants and their edges from dominating the spectrum used for whitening
    and from ringing into neighbouring areas after filtering.
    """
    if not bool(bad.any()) or bool(bad.all()):
        return image
    fill = image[::2, ::2][~bad[::2, ::2]].median() if bool((~bad[::2, ::2]).any()) else image[~bad].median()
    soft = bad.float()
    if edge_px > 0:
        r = int(round(2 * edge_px))
        k = torch.exp(-torch.arange(-r, r + 1, device=image.device, dtype=torch.float32) ** 2 / (2 * edge_px ** 2))
        k = k / k.sum()
        x = F.pad(soft[None, None], (r, r, r, r), mode="replicate")[0, 0]
        # separable Gaussian as sums of shifted slices (a few taps: cheaper than conv2d on one channel)
        h, w = soft.shape
        x = sum(k[i] * x[:, i:i + w] for i in range(2 * r + 1))
        x = sum(k[i] * x[i:i + h] for i in range(2 * r + 1))
        soft = torch.maximum(soft, x)
    return image * (1 - soft) + fill * soft
