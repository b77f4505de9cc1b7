"""Accuracy of picks against ground truth: one-to-one matching within a radius, precision, recall, F1.

Shared by the tests and ``benchmarks/picking.py``. NumPy/SciPy (evaluation, not a hot path).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

__all__ = ["PickMatch", "match_picks"]


@dataclass
class PickMatch:
    """Outcome of :func:`match_picks`.

    Attributes:
        tp, fp, fn: true positives (matched picks), false positives (unmatched picks), false
            negatives (unmatched true particles).
        precision, recall, f1: ``tp/(tp+fp)``, ``tp/(tp+fn)``, their harmonic mean (0 when undefined).
        pairs: ``(tp, 2)`` int indices ``(pick, truth)`` of the matches.
        distances: ``(tp,)`` distance of each match (the coordinates' unit).
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    pairs: np.ndarray
    distances: np.ndarray

    def as_dict(self) -> dict:
        """The counts and rates (for JSON)."""
        return dict(tp=self.tp, fp=self.fp, fn=self.fn, precision=self.precision, recall=self.recall, f1=self.f1)


def match_picks(picks, truth, radius: float) -> PickMatch:
    """Match picks to true centres one-to-one, each pair closer than ``radius``.

    The matching maximises the number of pairs and, among those, minimises the summed distance
    (assignment on the pairs within ``radius``), so one pick never counts for two particles
    and a duplicate pick on one particle is a false positive.

    Args:
        picks: ``(K, 2)`` pick coordinates ``(x, y)`` (array-like or tensor).
        truth: ``(N, 2)`` true coordinates in the same unit (e.g. micrograph pixels).
        radius: match distance, e.g. 0.2 × diameter in pixels.
    """
    p = np.asarray(picks.cpu() if hasattr(picks, "cpu") else picks, dtype=float).reshape(-1, 2)
    t = np.asarray(truth.cpu() if hasattr(truth, "cpu") else truth, dtype=float).reshape(-1, 2)
    pairs = np.zeros((0, 2), dtype=int)
    dist = np.zeros(0)
    if len(p) and len(t):
        close = cKDTree(p).sparse_distance_matrix(cKDTree(t), radius, output_type="coo_matrix")
        if close.nnz:
            big = 10.0 * radius + 1.0  # cost of "no pair": any real pair is cheaper
            cost = np.full((len(p), len(t)), big)
            d = np.hypot(*(p[close.row] - t[close.col]).T)
            cost[close.row, close.col] = d
            r, c = linear_sum_assignment(cost)
            ok = cost[r, c] < radius
            pairs = np.stack([r[ok], c[ok]], axis=1)
            dist = cost[r[ok], c[ok]]
    tp = len(pairs)
    fp, fn = len(p) - tp, len(t) - tp
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return PickMatch(tp, fp, fn, prec, rec, f1, pairs, dist)
