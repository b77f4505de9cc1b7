"""What 3D classification returns: class maps, per-particle assignments and poses, per-iteration statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cryolens.core.fsc import FSCResult

__all__ = ["Class3DIteration", "Class3DResult"]


@dataclass
class Class3DIteration:
    """One EM iteration.

    Attributes:
        iteration: 1-based; resolution_limit: alignment band limit (Å); mode: ``skip``, ``local``,
        ``global`` (``cc-global`` for a first global iteration scored by correlation).
        class_sizes: particles whose most probable class is each class; distribution: the class priors.
        class_change: fraction of particles whose most probable class changed (the first iteration:
        against the starting assignment of none, so 1.0). resolutions: each class's FSC 0.143 resolution (Å)
        between random halves of its particles. mean_log_likelihood: per particle (up to a per-image constant).
        median_angle_change: degrees (modulo symmetry); rms_shift_change: px; seconds: wall time.
    """

    iteration: int
    resolution_limit: float
    mode: str
    class_sizes: list[int]
    distribution: list[float]
    class_change: float
    resolutions: list[float]
    mean_log_likelihood: float
    median_angle_change: float
    rms_shift_change: float
    seconds: float


@dataclass
class Class3DResult:
    """3D classes (CPU tensors) and per-particle results (NumPy, table row order; classes 0-based here).

    Attributes:
        maps: ``(K, n, n, n)`` class maps Wiener-filtered with ``tau2_fudge·SSNR`` from their half-set FSC
            (RELION's regularised references); unfiltered: the plain ``ΣCTF·X / ΣCTF²`` maps.
        fsc: per class, the FSC between maps of random halves of its particles (soft spherical mask).
        probabilities: ``(N, K)`` class posteriors; particle_class: ``(N,)`` most probable class;
        max_probability: ``(N,)`` its posterior; rotations ``(N, 3, 3)``, shifts ``(N, 2)`` px (origins):
        the pose of the most probable class; log_likelihood: ``(N,)`` ``log Σ_k π_k p(X | k)`` up to a
        per-image constant.
        distribution: ``(K,)`` class priors; accuracy_rotations (°), accuracy_shifts (px): ``(K,)`` mean
        widths of the members' pose posteriors (NaN when poses were not searched).
        stop: why the iterations ended: ``iterations`` (all ``--iter``), ``converged`` (fewer than
        ``stop_change`` changed class) or ``plateau`` (fewer than ``plateau_change`` for ``plateau`` iterations).
    """

    maps: torch.Tensor
    unfiltered: torch.Tensor
    fsc: list[FSCResult]
    probabilities: np.ndarray
    particle_class: np.ndarray
    max_probability: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    log_likelihood: np.ndarray
    distribution: np.ndarray
    accuracy_rotations: np.ndarray
    accuracy_shifts: np.ndarray
    history: list[Class3DIteration] = field(default_factory=list)
    stop: str = "iterations"

    @property
    def resolution(self) -> np.ndarray:
        """``(K,)`` FSC 0.143 resolution of each class (Å; inf for an empty class)."""
        return np.array([c.resolution_at(0.143) for c in self.fsc])

    @property
    def class_sizes(self) -> np.ndarray:
        """``(K,)`` particles whose most probable class is each class."""
        return np.bincount(self.particle_class, minlength=self.maps.shape[0])
