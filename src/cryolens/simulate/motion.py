"""Random specimen motion for the movie simulator: global drift and local beam-induced motion.

The models and their conventions (time in frames, displacement vs RELION's correction,
the third-order polynomial) are in :mod:`cryolens.core.motion`; this module draws random
instances of them from a seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryolens.core.motion import SPATIAL_TERMS, DriftTrajectory, PolynomialMotion

__all__ = ["random_drift", "random_local_motion", "MovieMotion", "draw_movie_motion"]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def random_drift(n_frames: int, amplitude: float, *, generator: torch.Generator) -> DriftTrajectory:
    """A random trajectory whose first-to-last frame displacement is ``amplitude`` Å.

    The direction is uniform; 40-70 % of the travel happens in a fast initial phase
    (τ = 1.5-4 frames), the rest as constant drift within ±45° of it, plus two sine
    wobbles of 1.5 % of the amplitude each (periods of half to 1.5 times the movie).
    The largest displacement stays below 1.25 × ``amplitude``.
    """
    if n_frames < 1 or amplitude < 0:
        raise ValueError("need n_frames >= 1 and a non-negative drift amplitude")
    g = generator
    theta = _uniform(g, 0.0, 2 * math.pi)
    fast_fraction = _uniform(g, 0.4, 0.7)
    tau = _uniform(g, 1.5, 4.0)
    slow_theta = theta + _uniform(g, -math.pi / 4, math.pi / 4)
    span = max(n_frames - 1, 1)
    wob = []
    for _ in range(2):
        wt = _uniform(g, 0.0, 2 * math.pi)
        wob.append((0.015 * math.cos(wt), 0.015 * math.sin(wt), _uniform(g, span / 2, 1.5 * span) + 1.0,
                    _uniform(g, 0.0, 2 * math.pi)))
    unit = DriftTrajectory(fast=(fast_fraction * math.cos(theta), fast_fraction * math.sin(theta)), tau=tau,
                           velocity=((1 - fast_fraction) * math.cos(slow_theta) / span,
                                     (1 - fast_fraction) * math.sin(slow_theta) / span),
                           wobble=tuple(wob))
    if amplitude == 0 or n_frames == 1:
        return unit.scaled(0.0)
    end = float(torch.linalg.vector_norm(unit.frame_displacements(n_frames)[-1]))
    return unit.scaled(amplitude / end)


def random_local_motion(n_frames: int, rms: float, *, generator: torch.Generator) -> PolynomialMotion:
    """A random smooth local displacement field (pixels) with RMS ``rms`` over the image at the last frame.

    Each spatial term ``x, x², y, y², xy`` of each axis follows its own cubic time course
    ``b · (α (1 - (1 - u)³) + (1 - α) u)``, ``u = z / (n_frames - 1)``, ``b`` normal,
    ``α ∈ [0.3, 0.9]``: fast at first, like beam-induced motion, exactly representable in
    RELION's model. A constant term cancels the image mean, so the field adds no global
    drift. Returns the *displacement* model (negate it for RELION's correction).
    """
    if rms < 0:
        raise ValueError("local motion RMS must not be negative")
    if n_frames < 2 or rms == 0:
        return PolynomialMotion()
    span = float(n_frames - 1)
    coeffs = torch.zeros(2, SPATIAL_TERMS, 3, dtype=torch.float64)
    for axis in range(2):
        for grp in range(1, SPATIAL_TERMS):
            b = float(torch.randn((), generator=generator, dtype=torch.float64))
            alpha = _uniform(generator, 0.3, 0.9)
            # α(3u - 3u² + u³) + (1 - α)u with u = z / span
            coeffs[axis, grp] = b * torch.tensor([(1 + 2 * alpha) / span, -3 * alpha / span ** 2, alpha / span ** 3])
        # mean of x² (and y²) over [-½, ½] is 1/12: cancel the field's mean
        coeffs[axis, 0] = -(coeffs[axis, 2] + coeffs[axis, 4]) / 12.0
    model = PolynomialMotion(tuple(coeffs[0].reshape(-1).tolist()), tuple(coeffs[1].reshape(-1).tolist()))
    u = torch.linspace(-0.5, 0.5, 33, dtype=torch.float64)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    sx, sy = model.shift_at(span, xx, yy)
    current = float(torch.sqrt((sx * sx + sy * sy).mean()))
    scale = rms / current if current > 0 else 0.0
    return PolynomialMotion(tuple(c * scale for c in model.coeff_x), tuple(c * scale for c in model.coeff_y))


@dataclass
class MovieMotion:
    """The specimen motion of one simulated movie, in movie pixels.

    Attributes:
        drift: the global trajectory [Å].
        displacements: ``(n_frames, 2)`` ``(x, y)`` displacement of each frame's middle [px], row 0 = 0.
        travel: ``(n_frames, 2)`` straight-line travel during each frame [px] (0 without frame blur).
        local: the local *displacement* model [px] (negate it for RELION's correction), or None.
    """

    drift: DriftTrajectory
    displacements: np.ndarray
    travel: np.ndarray
    local: PolynomialMotion | None

    def margin_needed(self) -> int:
        """Pixels of field needed around the movie: the largest global plus local displacement,
        half the largest travel, and 8 px for the interpolation kernels."""
        max_local = 0.0
        if self.local is not None:
            u = torch.linspace(-0.5, 0.5, 17, dtype=torch.float64)
            for z in range(len(self.displacements)):
                lx, ly = self.local.shift_at(z, u[None, :], u[:, None])
                max_local = max(max_local, float(torch.sqrt(lx * lx + ly * ly).max()))
        disp, travel = self.displacements, self.travel
        return int(math.ceil(float(np.sqrt((disp ** 2).sum(1)).max()) + max_local + np.abs(travel).max() / 2)) + 8


def draw_movie_motion(n_frames: int, *, drift: float, local_rms: float | None, frame_blur: bool, pixel_size: float,
                      generator: torch.Generator) -> MovieMotion:
    """Draw a movie's global drift (``drift`` Å first to last frame) and, when ``local_rms`` (Å)
    is given and positive and there are several frames, its local motion, from ``generator``
    in that order; lengths are converted to pixels of ``pixel_size`` Å."""
    trajectory = random_drift(n_frames, drift, generator=generator)
    disp = (trajectory.frame_displacements(n_frames) / pixel_size).numpy()
    travel = (trajectory.frame_travel(n_frames) / pixel_size).numpy()
    if not frame_blur:
        travel = np.zeros_like(travel)
    local = None
    if local_rms is not None and local_rms > 0 and n_frames > 1:
        local = random_local_motion(n_frames, local_rms / pixel_size, generator=generator)
    return MovieMotion(drift=trajectory, displacements=disp, travel=travel, local=local)
