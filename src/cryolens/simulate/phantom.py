"""Built-in procedural phantom: an asymmetric pseudo-protein made of Gaussian 'atoms'.

No download needed (used by ``make demo`` and the tests). A seeded self-avoiding
random walk of residue-sized steps (3.8 Å) is folded inside an asymmetric ellipsoid,
and each position is rendered as a Gaussian of the given B-factor, so the map has
secondary-structure-like density down to a few Å and no symmetry.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["asymmetric_phantom", "render_gaussians"]


def _random_chain(n_atoms: int, semi_axes: np.ndarray, rng: np.random.Generator, step: float = 3.8) -> np.ndarray:
    """Random walk of ``n_atoms`` positions (Å) with fixed step inside an ellipsoid, avoiding clashes."""
    pos = np.zeros((n_atoms, 3))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    for i in range(1, n_atoms):
        for _ in range(50):
            d = direction + 0.6 * rng.normal(size=3)
            d /= np.linalg.norm(d)
            p = pos[i - 1] + step * d
            inside = np.sum((p / semi_axes) ** 2) <= 1.0
            clash = i > 2 and np.min(np.linalg.norm(pos[: i - 2] - p, axis=1)) < 3.0
            if inside and not clash:
                break
        else:  # stuck: step towards the centre
            d = -pos[i - 1] / (np.linalg.norm(pos[i - 1]) + 1e-9)
            p = pos[i - 1] + step * d
        pos[i] = p
        direction = d
    return pos


def render_gaussians(positions: np.ndarray, weights: np.ndarray, *, box: int, pixel_size: float,
                     bfactor: float, device=None) -> torch.Tensor:
    """Render isotropic Gaussians on a ``(box,)*3`` grid (centre ``box//2``).

    Args:
        positions: ``(A, 3)`` as ``(x, y, z)`` in Å relative to the box centre.
        weights: ``(A,)`` integrated density of each Gaussian.
        bfactor: Å²; the Gaussian's variance is ``B / (8π²)`` plus one pixel² for sampling.
    """
    sigma2 = bfactor / (8 * math.pi ** 2) + pixel_size ** 2
    grid = (torch.arange(box, device=device, dtype=torch.float32) - box // 2) * pixel_size
    vol = torch.zeros((box, box, box), device=device)
    pos = torch.as_tensor(positions, dtype=torch.float32, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device) / (2 * math.pi * sigma2) ** 1.5
    # Separable exponentials per atom, accumulated in chunks (memory ~ chunk * box^2).
    for s in range(0, pos.shape[0], 64):
        p, ww = pos[s:s + 64], w[s:s + 64]
        ex = torch.exp(-((grid[None, :] - p[:, 0:1]) ** 2) / (2 * sigma2))
        ey = torch.exp(-((grid[None, :] - p[:, 1:2]) ** 2) / (2 * sigma2))
        ez = torch.exp(-((grid[None, :] - p[:, 2:3]) ** 2) / (2 * sigma2))
        vol += torch.einsum("a,az,ay,ax->zyx", ww, ez, ey, ex)
    return vol * pixel_size ** 3


def asymmetric_phantom(box: int = 64, pixel_size: float = 2.0, *, diameter: float | None = None,
                       bfactor: float = 30.0, seed: int = 0, device=None) -> torch.Tensor:
    """An asymmetric pseudo-protein map ``(box, box, box)``, peak density normalised to 1.

    Args:
        box: box size in voxels.
        pixel_size: Å per voxel.
        diameter: longest particle dimension in Å (default 60% of the box width).
        bfactor: atomic B-factor in Å² (sets the finest detail).
        seed: random seed of the fold (the default phantom is always the same).
    """
    rng = np.random.default_rng(seed)
    d = diameter if diameter is not None else 0.6 * box * pixel_size
    semi = np.array([0.5, 0.36, 0.28]) * d
    volume = (4 / 3) * math.pi * semi.prod()
    n_atoms = int(volume / 140.0)  # ~ one residue per 140 Å^3 at protein packing density
    chain = _random_chain(n_atoms, semi, rng)
    # Break the mirror symmetry of the envelope with a side domain.
    side = _random_chain(max(n_atoms // 20, 8), semi / 2.2, rng) + np.array([0.3, 0.4, 0.15]) * d
    pos = np.concatenate([chain, side])
    weights = rng.uniform(6.0, 8.0, size=len(pos))
    vol = render_gaussians(pos, weights, box=box, pixel_size=pixel_size, bfactor=bfactor, device=device)
    return vol / vol.max()
