"""Pose distributions for the simulators: uniform on SO(3) or preferred orientation.

Rotations are RELION matrices ``A`` (volume -> image coordinates, see
:mod:`cryolens.core.rotations`); the viewing direction of a particle in the volume
frame is the third row of ``A`` (``(sin tilt cos rot, sin tilt sin rot, cos tilt)``).

Preferred orientation: the viewing direction follows a von Mises–Fisher
distribution on the sphere, density ∝ ``exp(κ·μ·v)`` around the unit direction ``μ``
with concentration ``κ`` (sampled exactly with Wood's 1994 inversion for S²),
mixed with a fraction ``uniform_fraction`` of uniformly distributed directions.
The mean cosine between ``v`` and ``μ`` is ``coth κ − 1/κ`` for the vMF part
(0 for the uniform part). The in-plane angle psi is uniform in every case, so
``distribution="uniform"`` is the Haar measure on SO(3).
"""

from __future__ import annotations

import math

import torch

from cryolens.core.rotations import euler_to_matrix, random_rotations

__all__ = ["POSE_DISTRIBUTIONS", "sample_rotations", "sample_directions", "vmf_mean_cosine", "viewing_directions"]

POSE_DISTRIBUTIONS = ("uniform", "preferred")


def vmf_mean_cosine(concentration: float) -> float:
    """Analytic ``E[μ·v] = coth κ − 1/κ`` of the vMF distribution on S² (0 at κ = 0)."""
    k = float(concentration)
    if k < 1e-6:
        return k / 3.0
    return 1.0 / math.tanh(k) - 1.0 / k


def viewing_directions(rotations: torch.Tensor) -> torch.Tensor:
    """Viewing directions ``(..., 3)`` ``(x, y, z)`` of RELION matrices ``(..., 3, 3)`` (their third row)."""
    return rotations[..., 2, :]


def _orthonormal_frame(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors orthogonal to ``mu`` (3,) and to each other."""
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=mu.dtype, device=mu.device)
    if abs(float(mu[0])) > 0.9:
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=mu.dtype, device=mu.device)
    e1 = torch.linalg.cross(mu, helper)
    e1 = e1 / e1.norm()
    return e1, torch.linalg.cross(mu, e1)


def sample_directions(n: int, *, generator: torch.Generator, direction=(0.0, 0.0, 1.0), concentration: float = 0.0,
                      uniform_fraction: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    """``(n, 3)`` unit vectors: vMF(``direction``, ``concentration``) mixed with a uniform fraction.

    ``concentration = 0`` is the uniform distribution on the sphere. Tensors live on
    the generator's device.
    """
    if concentration < 0:
        raise ValueError("concentration must be non-negative")
    if not 0.0 <= uniform_fraction <= 1.0:
        raise ValueError("uniform_fraction must lie in [0, 1]")
    device = generator.device
    mu = torch.as_tensor(direction, dtype=dtype, device=device).reshape(3)
    if not float(mu.norm()) > 0:
        raise ValueError("the preferred direction must be a non-zero vector")
    mu = mu / mu.norm()
    u = torch.rand(n, generator=generator, dtype=dtype, device=device)
    phi = 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype, device=device)
    mix = torch.rand(n, generator=generator, dtype=dtype, device=device) < uniform_fraction
    k = float(concentration)
    # cosine to mu: Wood's inversion w = 1 + log(u + (1-u) e^{-2κ}) / κ; uniform: w = 2u - 1
    if k > 1e-8:
        w_vmf = 1.0 + torch.log(u + (1.0 - u) * math.exp(-2.0 * k)) / k
    else:
        w_vmf = 2.0 * u - 1.0
    w = torch.where(mix, 2.0 * u - 1.0, w_vmf).clamp(-1.0, 1.0)
    e1, e2 = _orthonormal_frame(mu)
    s = torch.sqrt((1.0 - w * w).clamp_min(0.0))
    v = w[:, None] * mu + s[:, None] * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2)
    return v / v.norm(dim=-1, keepdim=True)


def sample_rotations(n: int, *, generator: torch.Generator, distribution: str = "uniform",
                     direction: tuple[float, float, float] = (0.0, 0.0, 1.0), concentration: float = 0.0,
                     uniform_fraction: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    """``(n, 3, 3)`` RELION rotation matrices drawn from a pose distribution.

    Args:
        n: number of poses.
        generator: torch generator (the tensors live on its device).
        distribution: ``"uniform"`` (Haar measure on SO(3)) or ``"preferred"``
            (viewing direction vMF around ``direction`` mixed with ``uniform_fraction``
            of uniform directions; psi uniform).
        direction: preferred viewing direction ``(x, y, z)`` in the volume frame (normalised here).
        concentration: vMF κ (dimensionless; 0 = uniform, ~10 ≈ 25° spread, large = tight).
        uniform_fraction: fraction of particles with a uniform viewing direction, in [0, 1].
        dtype: float64 by default (the angles go to a STAR file).

    Returns:
        ``(n, 3, 3)`` matrices ``A``; ``A[:, 2, :]`` is the viewing direction.
    """
    if distribution == "uniform":
        return random_rotations(n, generator=generator, dtype=dtype)
    if distribution != "preferred":
        raise ValueError(f"unknown pose distribution {distribution!r}; use one of {', '.join(POSE_DISTRIBUTIONS)}")
    v = sample_directions(n, generator=generator, direction=direction, concentration=concentration,
                          uniform_fraction=uniform_fraction, dtype=dtype)
    tilt = torch.rad2deg(torch.acos(v[:, 2].clamp(-1.0, 1.0)))
    rot = torch.rad2deg(torch.atan2(v[:, 1], v[:, 0]))
    psi = 360.0 * torch.rand(n, generator=generator, dtype=dtype, device=generator.device) - 180.0
    return euler_to_matrix(rot, tilt, psi)
