"""Shared assertion helpers and tiny analytic phantoms for the numeric-core tests.

Import as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import math

import torch


def correlation(a: torch.Tensor, b: torch.Tensor, *, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` over ``dims`` (all dims when ``None``), in float64."""
    a, b = a.double(), b.double()
    dims = tuple(range(a.ndim)) if dims is None else dims
    a = a - a.mean(dim=dims, keepdim=True)
    b = b - b.mean(dim=dims, keepdim=True)
    num = (a * b).sum(dim=dims)
    return num / torch.sqrt((a * a).sum(dim=dims) * (b * b).sum(dim=dims)).clamp_min(1e-300)


def ls_scale(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Least-squares scale ``s`` minimising ``|x - s·ref|²`` (1 when ``x`` has ``ref``'s amplitude)."""
    x, ref = x.double(), ref.double()
    return float((x * ref).sum() / (ref * ref).sum())


def assert_correlated(a: torch.Tensor, b: torch.Tensor, min_corr: float, *, what: str = "arrays") -> None:
    """Assert the global Pearson correlation of ``a`` and ``b`` is at least ``min_corr``."""
    c = float(correlation(a, b))
    assert c >= min_corr, f"{what}: correlation {c:.7f} < {min_corr}"


def assert_images_correlated(a: torch.Tensor, b: torch.Tensor, min_corr: float, *, what: str = "images") -> None:
    """Assert every image of the stacks ``a``, ``b`` ``(B, y, x)`` correlates at least ``min_corr``."""
    c = correlation(a, b, dims=(-2, -1))
    worst = int(torch.argmin(c))
    assert float(c.min()) >= min_corr, (
        f"{what}: worst per-image correlation {float(c.min()):.7f} (image {worst}) < {min_corr}; "
        f"mean {float(c.mean()):.7f}")


def assert_allclose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 0.0, rtol: float = 0.0,
                    what: str = "values") -> None:
    """``torch.testing.assert_close`` on CPU copies with a readable max-error message."""
    actual = torch.as_tensor(actual).detach().cpu()
    expected = torch.as_tensor(expected, dtype=actual.dtype).detach().cpu()
    err = (actual - expected).abs()
    tol = atol + rtol * expected.abs()
    bad = err > tol
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} of {bad.numel()} elements out of tolerance; "
        f"max abs error {float(err.max()):.3g} (atol {atol}, rtol {rtol})")


def centred_coords(n: int, *, ndim: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """Pixel offsets from the box centre ``n // 2``, as ``(z, y, x)`` (3-D) or ``(y, x)`` (2-D) grids."""
    c = torch.arange(n, device=device, dtype=dtype) - n // 2
    return torch.meshgrid(*([c] * ndim), indexing="ij")


def gaussian_blobs(n: int, centres, sigmas, weights=None, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Sum of isotropic 3-D Gaussians ``w·exp(-|r - c|² / 2σ²)`` on an ``(n, n, n)`` grid.

    ``centres`` are ``(K, 3)`` as ``(x, y, z)`` in pixels from the centre ``n // 2``;
    ``weights`` are peak heights (default 1).
    """
    centres = torch.as_tensor(centres, dtype=dtype).reshape(-1, 3)
    sigmas = torch.as_tensor(sigmas, dtype=dtype).reshape(-1).expand(centres.shape[0])
    weights = (torch.ones(centres.shape[0], dtype=dtype) if weights is None
               else torch.as_tensor(weights, dtype=dtype).reshape(-1).expand(centres.shape[0]))
    z, y, x = centred_coords(n, ndim=3, device=device, dtype=dtype)
    vol = torch.zeros((n, n, n), device=device, dtype=dtype)
    for c, s, w in zip(centres.tolist(), sigmas.tolist(), weights.tolist()):
        vol += w * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol


def gaussian_2d(n: int, centres_xy: torch.Tensor, sigma: float, peak: float, *, device=None) -> torch.Tensor:
    """``(B, n, n)`` images of 2-D Gaussians ``peak·exp(-|r - c_b|² / 2σ²)``, ``centres_xy`` ``(B, 2)`` px."""
    y, x = centred_coords(n, ndim=2, device=device)
    cx = centres_xy[:, 0, None, None].to(device=device, dtype=torch.float32)
    cy = centres_xy[:, 1, None, None].to(device=device, dtype=torch.float32)
    return peak * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))


def gaussian_line_integral(sigma: float) -> float:
    """``∫ exp(-z² / 2σ²) dz = σ·√(2π)``: the projected peak of a unit-peak 3-D Gaussian."""
    return sigma * math.sqrt(2 * math.pi)
