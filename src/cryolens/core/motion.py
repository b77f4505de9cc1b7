"""Specimen motion during a movie: the global drift and local beam-induced motion models.

Shared by the movie simulator (:mod:`cryolens.simulate.motion` draws random instances)
and motion correction (:mod:`cryolens.motion`), so the models live in ``core``.

Conventions (pinned by tests and by RELION's MotionCorr output):

- Time ``t`` is measured in frames from the start of the exposure; frame ``i``
  (0-based) is exposed from ``t = i`` to ``t = i + 1``.
- A *displacement* ``d`` is where the specimen has moved to: frame ``i`` shows the
  specimen content of the first frame moved by ``d_i`` (``frame_i(x) = frame_0(x - d_i)``).
- RELION's ``rlnMicrographShiftX/Y`` (``data_global_shift``, ``data_local_shift``,
  ``data_local_motion_model``) are *corrections*: the shift to apply to a frame to
  align it with the first frame, i.e. ``-d``, in pixels of the movie, 0 for frame 1.

Global drift (:class:`DriftTrajectory`): a fast initial phase that decays
exponentially, a slow constant drift and a small smooth wobble,

    p(t) = a (1 - exp(-t / τ)) + v t + Σ_j w_j sin(2π t / P_j + φ_j)          (Å)

with the displacement of frame ``i`` taken at its middle, ``d_i = p(i + ½) - p(½)``,
and the travel during frame ``i`` (for motion blur) ``p(i + 1) - p(i)``.

Local motion (:class:`PolynomialMotion`): RELION's ``ThirdOrderPolynomialModel``
(MotionCor2's model), 18 coefficients per axis,

    s(z, x, y) = Σ_g (c[3g] z + c[3g+1] z² + c[3g+2] z³) · b_g(x, y),
    b = (1, x, x², y, y², xy),   x = px / width - ½,   y = py / height - ½,

with ``z`` the 0-based frame index and ``px, py`` 0-based pixel coordinates; the
value is in pixels and vanishes at ``z = 0``. RELION writes the coefficients of the
correction (``-displacement``) in ``data_local_motion_model`` (X: indices 0-17, Y: 18-35).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["DriftTrajectory", "PolynomialMotion", "SPATIAL_TERMS", "relion_patch_centres"]


@dataclass(frozen=True)
class DriftTrajectory:
    """Global specimen position ``p(t)`` in Å (see the module docstring).

    Attributes:
        fast: ``(x, y)`` Å reached by the exponential phase as ``t → ∞``.
        tau: time constant of the fast phase (frames).
        velocity: ``(x, y)`` Å per frame of the slow drift.
        wobble: per component ``(ax, ay, period_frames, phase_rad)``.
    """

    fast: tuple[float, float] = (0.0, 0.0)
    tau: float = 2.0
    velocity: tuple[float, float] = (0.0, 0.0)
    wobble: tuple[tuple[float, float, float, float], ...] = ()

    def position(self, t: torch.Tensor | float) -> torch.Tensor:
        """``p(t)`` in Å, shaped ``(*t.shape, 2)`` as ``(x, y)`` (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)[..., None]
        p = torch.tensor(self.fast, dtype=torch.float64) * (1.0 - torch.exp(-t / self.tau))
        p = p + torch.tensor(self.velocity, dtype=torch.float64) * t
        for ax, ay, period, phase in self.wobble:
            p = p + torch.tensor((ax, ay), dtype=torch.float64) * torch.sin(2 * math.pi * t / period + phase)
        return p

    def frame_displacements(self, n_frames: int) -> torch.Tensor:
        """``(n_frames, 2)`` displacement of each frame's middle from the first frame's (Å); row 0 is 0."""
        t = torch.arange(n_frames, dtype=torch.float64) + 0.5
        return self.position(t) - self.position(0.5)

    def frame_travel(self, n_frames: int) -> torch.Tensor:
        """``(n_frames, 2)`` distance travelled during each frame, ``p(i+1) - p(i)`` (Å)."""
        t = torch.arange(n_frames + 1, dtype=torch.float64)
        p = self.position(t)
        return p[1:] - p[:-1]

    def scaled(self, factor: float) -> "DriftTrajectory":
        """The same shape with every length multiplied by ``factor`` (e.g. Å -> pixels)."""
        f = float(factor)
        return DriftTrajectory(fast=(self.fast[0] * f, self.fast[1] * f), tau=self.tau,
                               velocity=(self.velocity[0] * f, self.velocity[1] * f),
                               wobble=tuple((ax * f, ay * f, p, ph) for ax, ay, p, ph in self.wobble))


#: Spatial terms of the polynomial model: 1, x, x², y, y², xy.
SPATIAL_TERMS = 6


@dataclass(frozen=True)
class PolynomialMotion:
    """RELION's third-order polynomial motion model (see the module docstring).

    Attributes:
        coeff_x, coeff_y: 18 coefficients each, in RELION's order, values in pixels.
    """

    coeff_x: tuple[float, ...] = (0.0,) * 18
    coeff_y: tuple[float, ...] = (0.0,) * 18

    def __post_init__(self) -> None:
        if len(self.coeff_x) != 18 or len(self.coeff_y) != 18:
            raise ValueError("a third-order polynomial motion model has 18 coefficients per axis")

    @property
    def coefficients(self) -> list[float]:
        """The 36 values of RELION's ``data_local_motion_model`` (X then Y)."""
        return [float(c) for c in (*self.coeff_x, *self.coeff_y)]

    @classmethod
    def from_coefficients(cls, values) -> "PolynomialMotion":
        v = [float(c) for c in values]
        if len(v) != 36:
            raise ValueError(f"expected 36 coefficients, got {len(v)}")
        return cls(tuple(v[:18]), tuple(v[18:]))

    def negated(self) -> "PolynomialMotion":
        """The model of ``-s`` (displacement <-> RELION correction)."""
        return PolynomialMotion(tuple(-c for c in self.coeff_x), tuple(-c for c in self.coeff_y))

    def temporal(self, z: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per spatial term ``T_g(z) = c[3g] z + c[3g+1] z² + c[3g+2] z³``: two ``(6,)`` float64 tensors (x, y)."""
        zz = torch.tensor([z, z * z, z ** 3], dtype=torch.float64)
        cx = torch.tensor(self.coeff_x, dtype=torch.float64).reshape(SPATIAL_TERMS, 3)
        cy = torch.tensor(self.coeff_y, dtype=torch.float64).reshape(SPATIAL_TERMS, 3)
        return cx @ zz, cy @ zz

    def shift_at(self, z: float, x: torch.Tensor | float, y: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Model value ``(sx, sy)`` in pixels at frame ``z`` (0-based) and normalised ``x``, ``y`` (broadcast)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64)
        out = []
        for t in self.temporal(z):
            out.append(t[0] + t[1] * x + t[2] * x * x + t[3] * y + t[4] * y * y + t[5] * x * y)
        return out[0], out[1]

    def shift_at_pixels(self, z: float, px, py, *, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`shift_at` at 0-based pixel coordinates of a ``width × height`` movie."""
        return self.shift_at(z, torch.as_tensor(px, dtype=torch.float64) / width - 0.5,
                             torch.as_tensor(py, dtype=torch.float64) / height - 0.5)


def relion_patch_centres(size: int, n_patches: int) -> list[int]:
    """Patch centres (0-based pixels) along one axis as RELION's motion correction places them.

    The axis is cut into ``n_patches`` pieces of ``size // n_patches`` pixels, each made
    even by dropping a pixel, and the centre is ``(start + end - 1) // 2`` (370, 1112,
    1854, 2596, 3338 for 3710 pixels in 5 patches).
    """
    if n_patches < 1 or size < 2 * n_patches:
        raise ValueError("need at least one patch of two pixels")
    step = size // n_patches
    out = []
    for i in range(n_patches):
        start, end = i * step, min((i + 1) * step, size)
        if (end - start) % 2 == 1:
            if end == size:
                start += 1
            else:
                end -= 1
        out.append((start + end - 1) // 2)
    return out
