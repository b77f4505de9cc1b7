"""The state one 2D-classification iteration hands to the next, and what an iteration and a run report.

:func:`cryolens.class2d.classify_2d` hands its :class:`Class2DState` (with the history so far) to
``on_iteration`` after every iteration but the last, and takes one back as ``resume``: given the
same particles and params, the continued run computes exactly what the uninterrupted one does
(``cryolens class2d --continue``). :meth:`Class2DState.to_tensors` / :meth:`Class2DState.to_values`
and :meth:`Class2DState.from_saved` convert to and from named tensors and JSON values, which the
job layer stores (:mod:`cryolens.jobs.checkpoint`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
        particle_gain: ``(N,)`` log-likelihood gained over an empty image model (no signal), i.e. the
            log-likelihood without the image-power term ``-Σ w|X|²/σ²``: near or below 0 for an empty box or a
            particle cut by the box edge, large for a particle that its class explains (and for strong junk).
        particle_scale: ``(N,)`` each particle's amplitude scale: its model image is ``scale · CTF · class`` (1 until
            fitted; mean 1 over the particles seen; near its floor for an empty box).
        class_resolution: ``(K,)`` estimated resolution (Å) of the last M-step.
        seeds: particle row -> class it is assigned to in the next iteration (reseeding).
        rng_state: ``numpy.random.Generator`` bit-generator state.
        history: :class:`IterationStats` of the iterations done.
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
    particle_gain: np.ndarray
    particle_scale: np.ndarray
    class_resolution: np.ndarray
    seeds: dict[int, int] = field(default_factory=dict)
    rng_state: dict = field(default_factory=dict)
    history: list["IterationStats"] = field(default_factory=list)

    _TENSORS = ("classes", "sigma2", "class_weights")
    _ARRAYS = ("particle_class", "particle_psi", "particle_shift", "particle_max_prob", "particle_loglik",
               "particle_n_significant", "particle_psi_sd", "particle_shift_sd", "particle_gain", "particle_scale",
               "class_resolution")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The named CPU tensors to save (the per-particle arrays as tensors of their own dtype)."""
        out = {k: getattr(self, k).detach().cpu() for k in self._TENSORS}
        out.update({k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in self._ARRAYS})
        return out

    def to_values(self) -> dict[str, Any]:
        """The JSON values to save: iteration, reseeding seeds, RNG state and history."""
        return {"iteration": self.iteration, "seeds": [[int(r), int(c)] for r, c in self.seeds.items()],
                "rng_state": self.rng_state, "history": [dataclasses.asdict(h) for h in self.history]}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], values: dict[str, Any], device=None) -> "Class2DState":
        """Rebuild a state from :meth:`to_tensors` and :meth:`to_values` output (tensors moved to ``device``).

        Raises:
            KeyError: a tensor or value is missing.
        """
        missing = [k for k in (*cls._TENSORS, *cls._ARRAYS) if k not in tensors]
        if missing:
            raise KeyError(f"saved 2D classification state lacks {', '.join(missing)}")
        return cls(iteration=int(values["iteration"]), **{k: tensors[k].to(device) for k in cls._TENSORS},
                   **{k: tensors[k].numpy().copy() for k in cls._ARRAYS},
                   seeds={int(r): int(c) for r, c in values["seeds"]}, rng_state=values["rng_state"],
                   history=[IterationStats(**h) for h in values["history"]])

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
                   particle_shift_sd=np.zeros(n), particle_gain=np.zeros(n), particle_scale=np.ones(n),
                   class_resolution=np.full(n_classes, np.inf))


@dataclass
class IterationStats:
    """One iteration: resolution limit (Å), sampling, particles used, mean log-likelihood per particle,
    fraction changing class, mean psi (°) and shift (Å) changes of those staying (NaN where no particle had a
    class before), class sizes (best class counts over all particles), reseeded classes, seconds."""

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
        classes: ``(K, n, n)`` float32 (``K`` counts the empty class, last and zero, with ``empty_class``);
        distribution: ``(K,)`` class weights (sum 1);
        resolution: ``(K,)`` estimated resolution (Å, where the SSNR drops below 1 to stay); accuracy_psi:
        ``(K,)`` mean posterior standard deviation of psi of the members (°); accuracy_shift: ``(K,)`` the same
        for shifts (px).
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
