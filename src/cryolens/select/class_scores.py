"""Automatic 2D class selection: a score per class average, the idea of RELION's class ranker without its model.

Each class average ``a`` (white on black) is looked at inside the particle circle of radius
``R = diameter / 2`` (px), after subtracting its background (the median of the ring
``R - 2 .. R`` px). Seven features, each turned into a sub-score in [0, 1]:

========================  =====================================================  ==========================
feature                   what it measures                                       sub-score
========================  =====================================================  ==========================
``contrast``              RMS of ``a`` inside the circle over the reference      ``contrast / 0.5`` and
                          RMS (the population-weighted median over classes):     ``(3 - contrast) / 2``,
                          an empty box averages to almost nothing, ice,          the smaller
                          aggregates and blobs are denser than a particle
``centre_offset_A``       distance (Å) of the centre of mass of the positive     ``1 - (d - 0.15 R) / 0.35 R``
                          density from the box centre: edge-cut particles and
                          off-centre junk sit away from it
``concentration``         RMS inside ``f R`` over the RMS of the ring ``f R ..   ``(c - 1) / 0.4``
                          R``, the larger for f = 0.6 and 0.8: a particle is
                          concentrated inside the circle (a hollow one, such as
                          apoferritin or a ring-shaped channel, in a shell
                          inside 0.8 R), a carbon edge or a cut particle is not
``edge_coherence``        coherence of the gradient structure tensor inside      ``(0.65 - coherence) / 0.2``
                          ``0.8 R`` (:func:`edge_coherence`): 1 for a straight
                          step (carbon edge), 0.03-0.36 for particle views
``structure``             power not explained by the rotational average, as a    reported, weight 0: small
                          fraction of the power inside the circle                and round particles have
                                                                                 as little as blobs
``resolution_A``          ``rlnEstimatedResolution`` relative to the             ``1 - (res / ref - 1) / 6``
                          population-weighted median over the classes
                          (small good classes estimate coarser resolutions
                          than the largest ones)
``population``            hard particle count × K / N (1: an average class)       ``population / 0.25``
========================  =====================================================  ==========================

Sub-scores are clipped to [0.01, 1]; the score is their weighted product
``Π s_i ** w_i`` with :data:`SCORE_WEIGHTS` (a missing feature, e.g. no resolution column,
drops out). The product acts as an AND: a good class has every sub-score near 1, and
one clearly bad sign (``s ≤ 0.5`` at weight 1, ``s ≤ 0.25`` at weight 0.5) takes the class
below the default ``--min-score`` of 0.5. A class with no particles scores 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from cryolens.core.masks import ring_median

__all__ = ["SCORE_WEIGHTS", "class_features", "score_classes", "hard_counts", "edge_coherence"]

#: Exponent of each sub-score in the score's product (the dense side of the contrast sub-score, ``(3 - contrast) / 2``,
#: was ``3 - contrast``: a class of 86 dense junk particles with contrast 2.3 and a faint edge scored 0.59 and was kept
#: at edge weight 0.5; haemoglobin seed 31 junk dropped 75.8 -> 82.8 %, good kept 90.8 % both, seeds 5/11/21
#: unchanged). Edge at 0.5: a good class with some carbon mixed in scores
#: edge 0.5 and was dropped whole at weight 1 (haemoglobin, 3 000 particles, seed 11: a class of 242 good and 70 junk
#: particles, good kept 84.0 -> 93.2 % at 0.5, junk dropped 86.0 -> 80.8 %); a carbon class scores 0.01-0.2.
SCORE_WEIGHTS = {"contrast": 1.0, "centring": 1.0, "concentration": 1.0, "edge": 0.5, "structure": 0.0,
                 "resolution": 1.0, "population": 0.5}

#: A class whose estimated resolution is ``1 + RESOLUTION_SLOPE`` times the reference scores 0 on resolution.
#: Gentle: before class2d's resolution skipped one-shell SSNR dips (:func:`cryolens.class2d.maximisation.
#: resolution_shell`), the good classes of a small protein with 50-130 particles estimated 48 Å against 11-16 Å
#: for the large ones (their SSNR dipped below 1 at the particle's first Fourier minimum), and a slope of 1.5
#: dropped 15 % of the good particles of 3 000 haemoglobin particles; junk classes fail on the other sub-scores.
#: RELION's classes.star (first shell below 1) can still show such dips.
RESOLUTION_SLOPE = 6.0


def hard_counts(class_numbers: np.ndarray, n_classes: int) -> np.ndarray:
    """Particles per class (index 0 = class 1) from the per-particle ``rlnClassNumber`` (hard assignment)."""
    c = np.asarray(class_numbers, dtype=np.int64)
    return np.bincount(c[(c >= 1) & (c <= n_classes)] - 1, minlength=n_classes)


def _radial_mean(img: torch.Tensor, ring: torch.Tensor, n_rings: int) -> torch.Tensor:
    """``(K, n, n)`` images replaced by their rotational average (rings of 1 px)."""
    flat = img.reshape(img.shape[0], -1)
    idx = ring.reshape(-1).expand_as(flat)
    sums = torch.zeros((img.shape[0], n_rings), dtype=img.dtype).scatter_add_(1, idx, flat)
    counts = torch.bincount(ring.reshape(-1), minlength=n_rings).clamp_min(1).to(img.dtype)
    return (sums / counts)[:, ring]


def class_features(averages: torch.Tensor | np.ndarray, *, pixel_size: float, diameter: float) -> pd.DataFrame:
    """Image features of class averages (see the module docstring).

    Args:
        averages: ``(K, n, n)`` class averages, protein bright.
        pixel_size: Å per pixel.
        diameter: particle circle diameter in Å (clipped to the box).

    Returns:
        One row per class: ``contrast_rms`` (RMS inside the circle, the average's units),
        ``centre_offset_A``, ``concentration``, ``structure``, ``edge_coherence``.
    """
    a = torch.as_tensor(np.array(averages, dtype=np.float64))
    k, n = a.shape[0], a.shape[-1]
    radius = min(diameter / 2 / pixel_size, n / 2 - 1)
    yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) - n // 2,) * 2, indexing="ij")
    r = torch.hypot(yy, xx)
    inside = r < radius
    a = a - ring_median(a, radius)[:, None, None]
    a = a * inside
    rms_in = a[:, inside].pow(2).mean(1).sqrt()
    pos = a.clamp_min(0) ** 2
    mass = pos.sum((1, 2)).clamp_min(1e-30)
    offset = torch.hypot((pos * xx).sum((1, 2)) / mass, (pos * yy).sum((1, 2)) / mass)

    def inner_over_outer(f: float) -> torch.Tensor:
        core = r < f * radius
        return a[:, core].pow(2).mean(1).sqrt() / a[:, inside & ~core].pow(2).mean(1).sqrt().clamp_min(1e-30)

    concentration = torch.maximum(inner_over_outer(0.6), inner_over_outer(0.8))
    rings = r.round().long().clamp_max(n)
    residual = (a - _radial_mean(a, rings, n + 1)) * inside
    structure = residual[:, inside].pow(2).sum(1) / a[:, inside].pow(2).sum(1).clamp_min(1e-30)
    coherence = edge_coherence(a, r < 0.8 * radius)
    flat = rms_in <= 1e-12 * max(float(rms_in.max()), 1e-30)
    return pd.DataFrame({
        "contrast_rms": rms_in.numpy(),
        "centre_offset_A": np.where(flat.numpy(), np.nan, offset.numpy() * pixel_size),
        "concentration": np.where(flat.numpy(), 0.0, concentration.numpy()),
        "structure": np.where(flat.numpy(), 0.0, structure.numpy()),
        "edge_coherence": np.where(flat.numpy(), 0.0, coherence.numpy()),
    }, index=pd.RangeIndex(k))


def edge_coherence(images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``(K,)`` coherence of the gradient structure tensor of ``images`` ``(K, n, n)`` over ``region`` ``(n, n)``.

    ``J = Σ ∇a ∇aᵀ`` (central differences) summed over the region; the coherence
    ``(λ₁ − λ₂) / (λ₁ + λ₂)`` of its eigenvalues is 1 when every gradient points one way (a straight step
    such as a carbon edge: all its power lies on one line through the origin of Fourier space), near 0
    for a blob or a particle, whose edges turn all round.
    """
    gy, gx = torch.gradient(images, dim=(-2, -1))
    w = region.to(images.dtype)
    jxx, jyy, jxy = ((gx * gx) * w).sum((-2, -1)), ((gy * gy) * w).sum((-2, -1)), ((gx * gy) * w).sum((-2, -1))
    return torch.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy).clamp_min(1e-30)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def score_classes(features: pd.DataFrame, *, counts: np.ndarray, pixel_size: float, diameter: float,
                  resolution: np.ndarray | None = None) -> pd.DataFrame:
    """Sub-scores and score per class (see the module docstring).

    Args:
        features: from :func:`class_features`, one row per class.
        counts: hard particle count per class.
        pixel_size: Å per pixel; diameter: the particle circle in Å.
        resolution: ``rlnEstimatedResolution`` per class in Å (None: not scored).

    Returns:
        ``features`` with ``n_particles``, ``population``, ``contrast``, the sub-scores
        ``s_contrast`` ... ``s_population`` and ``score`` (0 to 1).
    """
    out = features.copy()
    counts = np.asarray(counts, dtype=np.int64)
    k, total = len(out), max(int(counts.sum()), 1)
    radius_a = diameter / 2
    out["n_particles"] = counts
    out["population"] = counts * k / total
    used = counts > 0
    ref = _weighted_median(out["contrast_rms"].to_numpy()[used], counts[used].astype(float)) if used.any() else 1.0
    out["contrast"] = out["contrast_rms"] / max(ref, 1e-30)
    sub = {
        "contrast": np.minimum(out["contrast"] / 0.5, (3 - out["contrast"]) / 2.0),
        "centring": 1 - (out["centre_offset_A"].fillna(radius_a) - 0.15 * radius_a) / (0.35 * radius_a),
        "concentration": (out["concentration"] - 1) / 0.4,
        "edge": (0.65 - out["edge_coherence"]) / 0.2,
        "structure": (out["structure"] - 0.03) / 0.09,
        "population": out["population"] / 0.25,
    }
    if resolution is not None:
        res = np.asarray(resolution, dtype=np.float64)
        ok = used & np.isfinite(res) & (res > 0)
        ref_res = _weighted_median(res[ok], counts[ok].astype(float)) if ok.any() else math.nan
        out["resolution_A"] = res
        sub["resolution"] = pd.Series(np.where(ok, 1 - (res / ref_res - 1) / RESOLUTION_SLOPE, 0.0), index=out.index)
    log_sum = np.zeros(k)
    for name, s in sub.items():
        s = np.clip(np.asarray(s, dtype=np.float64), 0.01, 1.0)
        out[f"s_{name}"] = s
        log_sum += SCORE_WEIGHTS[name] * np.log(s)
    out["score"] = np.where(used, np.exp(log_sum), 0.0)
    return out
