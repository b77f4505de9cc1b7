"""Consensus of several pick sets (Scipion's consensus picking): picks of different sets closer
than a radius are one particle, scored by the number of sets that found it.

Batched torch: a neighbour matrix over all picks and connected components by label
propagation (no Python loop per pick).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["consensus"]


def consensus(pick_sets: Sequence, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge pick sets of one micrograph.

    Picks from all sets are linked when closer than ``radius``; each connected group is one
    particle at the mean position of its picks, scored by the number of distinct sets in the
    group (picks of one set inside a group count once). Keep particles with ``score >= k`` for
    "found by at least k pickers" (``score == len(pick_sets)``: the AND consensus).

    Args:
        pick_sets: sequences of ``(K_i, 2)`` coordinates ``(x, y)`` (tensors or arrays), one per picker.
        radius: linking distance in the coordinates' unit (e.g. pixels; a fraction of the diameter).

    Returns:
        ``(xy (M, 2) float32, score (M,) int64)``, by descending score.
    """
    sets = [torch.as_tensor(s, dtype=torch.float32).reshape(-1, 2) for s in pick_sets]
    dev = sets[0].device if sets else torch.device("cpu")
    sets = [s.to(dev) for s in sets]
    if not sets or sum(len(s) for s in sets) == 0:
        return torch.zeros((0, 2), device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    xy = torch.cat(sets)
    owner = torch.cat([torch.full((len(s),), i, dtype=torch.long, device=dev) for i, s in enumerate(sets)])
    n = len(xy)
    link = torch.cdist(xy, xy) < radius
    label = torch.arange(n, device=dev)
    while True:  # smallest index in each connected component
        nxt = torch.where(link, label[None, :], n).min(dim=1).values
        nxt = torch.minimum(nxt, label)
        nxt = nxt[nxt]  # pointer jumping speeds long chains
        if torch.equal(nxt, label):
            break
        label = nxt
    comp, inv = torch.unique(label, return_inverse=True)
    m = len(comp)
    count = torch.zeros(m, device=dev).index_add_(0, inv, torch.ones(n, device=dev))
    centre = torch.zeros((m, 2), device=dev).index_add_(0, inv, xy) / count[:, None]
    seen = torch.zeros((m, len(sets)), dtype=torch.bool, device=dev)
    seen[inv, owner] = True
    score = seen.sum(dim=1)
    order = torch.argsort(score, descending=True, stable=True)
    return centre[order], score[order]
