"""The state one 2D-classification iteration hands to the next, and what an iteration and a run report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Class2DState", "IterationStats", "Class2DResult"]


@dataclass
class Class2DState:
    """Everything an iteration hands to the next (what a checkpoint must hold).

    Attributes:
        iteration: iterations done (0: initial classes only).
        classes: ``(K, n, n)`` float32 class averages (masked, recentred), on the compute device.
        sigma2: ``(n//2 + 1,)`` noise power per rfft coefficient and shell.
        class_weights: ``(K,)`` prior class probabilities (sum 1).
        particle_class: ``(N,)`` 0-based class of each particle's best pose (-1: not yet seen).
        particle_psi: ``(N,)`` degrees; particle_shift: ``(N, 2)`` origins ``(x, y)`` in px.
        particle_max_prob, particle_loglik, particle_n_significant: ``(N,)`` of the last iteration that used
            the particle; particle_psi_sd (°), particle_shift_sd (px): ``(N,)`` posterior standard deviations
            within the best class.
        class_resolution: ``(K,)`` estimated resolution (Å) of the last M-step.
        seeds: particle row -> class it is assigned to in the next iteration (reseeding).
        rng_state: ``numpy.random.Generator`` bit-generator state.
    """

    iteration: int
    classes: torch.Tensor
    sigma2: torch.Tensor
    class_weights: torch.Tensor
    particle_class: np.ndarray
    particle_psi: np.ndarray
    particle_shift: np.ndarray
    particle_max_prob: np.ndarray
    particle_loglik: np.ndarray
    particle_n_significant: np.ndarray
    particle_psi_sd: np.ndarray
    particle_shift_sd: np.ndarray
    class_resolution: np.ndarray
    seeds: dict[int, int] = field(default_factory=dict)
    rng_state: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, n_particles: int, n_classes: int, box: int, device=None) -> "Class2DState":
        """Before the initial classes: nothing assigned, uniform class weights, unit noise."""
        n = n_particles
        return cls(iteration=0, classes=torch.zeros(n_classes, box, box, device=device),
                   sigma2=torch.ones(box // 2 + 1, device=device),
                   class_weights=torch.full((n_classes,), 1.0 / n_classes, device=device),
                   particle_class=np.full(n, -1, dtype=np.int64), particle_psi=np.zeros(n),
                   particle_shift=np.zeros((n, 2)), particle_max_prob=np.zeros(n), particle_loglik=np.zeros(n),
                   particle_n_significant=np.zeros(n, dtype=np.int64), particle_psi_sd=np.zeros(n),
                   particle_shift_sd=np.zeros(n), class_resolution=np.full(n_classes, np.inf))


@dataclass
class IterationStats:
    """One iteration: resolution limit (Å), sampling, particles used, mean log-likelihood per particle,
    fraction changing class, mean psi (°) and shift (Å) changes of those staying, class sizes, seconds."""

    iteration: int
    resolution_limit: float
    psi_step: float
    shift_step: float
    n_shifts: int
    n_particles: int
    log_likelihood: float
    class_change: float
    psi_change: float
    shift_change: float
    class_sizes: list[int]
    reseeded: int
    seconds: float


@dataclass
class Class2DResult:
    """Class averages and the particles' assignments (last iteration).

    Attributes:
        classes: ``(K, n, n)`` float32; distribution: ``(K,)`` class weights (sum 1);
        resolution: ``(K,)`` estimated resolution (Å, SSNR = 1); accuracy_psi: ``(K,)`` mean posterior
        standard deviation of psi of the members (°); accuracy_shift: ``(K,)`` the same for shifts (px).
        particle_class: ``(N,)`` 0-based; psi: ``(N,)`` °; shifts: ``(N, 2)`` px; max_probability,
        log_likelihood, n_significant: ``(N,)``.
    """

    classes: np.ndarray
    distribution: np.ndarray
    resolution: np.ndarray
    accuracy_psi: np.ndarray
    accuracy_shift: np.ndarray
    particle_class: np.ndarray
    psi: np.ndarray
    shifts: np.ndarray
    max_probability: np.ndarray
    log_likelihood: np.ndarray
    n_significant: np.ndarray
    history: list[IterationStats]
    state: Class2DState
