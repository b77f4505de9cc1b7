"""What ab initio needs to go on after a finished step (for ``cryolens abinitio --continue``).

A *step* is one mini-batch iteration (steps ``1..iterations``) or one final pass over all particles
(steps ``iterations + 1 ..``). :func:`cryolens.abinitio.abinitio` hands an :class:`AbinitioState` to
its ``on_iteration`` callback after every step but the last, and takes one back as ``resume``: given
the same particles and params it then computes exactly what the uninterrupted run computes. The
state holds every number a later step reads: each running start's accumulated sums, maps,
references, class priors and log-likelihoods, the noise spectrum, the random generator, the
history and the snapshots. No file I/O here: :meth:`AbinitioState.to_tensors` /
:meth:`AbinitioState.to_values` and :meth:`AbinitioState.from_saved` convert to and from named tensors
and JSON values, which the job layer stores (:mod:`cryolens.jobs.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["AbinitioState"]


@dataclass
class AbinitioState:
    """Ab initio after finished step ``iteration`` (tensors on the CPU; ``S`` starts running, ``K`` classes,
    working box ``n``).

    Attributes:
        starts: 0-based numbers of the starts still running (``S``); best_start: the kept start's
            number once pruned (0 before).
        sums: ``(S, K, 3, M)`` each start's and class's running back-projection sums (real, imaginary,
            CTF² weight; :class:`cryolens.core.projector.BackProjector` ``acc``).
        maps, references: ``(S, K, n, n, n)`` the reconstructions and the alignment references.
        log_prior: ``(S, K)`` log class priors; log_likelihood: per start, the mean log-likelihood
            per particle of each step so far.
        sigma2: ``(n//2+1,)`` noise power per shell; generator: the run's ``torch.Generator`` state.
        history: :class:`cryolens.abinitio.engine.IterationRecord` fields per iteration, as dicts.
        snapshot_labels, snapshots ``(L, n, n, n)``: the map at stages of the run so far.
        pixel_size: working pixel (Å), for files a person may look at.
    """

    iteration: int
    starts: list[int]
    best_start: int
    sums: torch.Tensor
    maps: torch.Tensor
    references: torch.Tensor
    log_prior: torch.Tensor
    log_likelihood: list[list[float]]
    sigma2: torch.Tensor
    generator: torch.Tensor
    history: list[dict[str, Any]]
    snapshot_labels: list[str]
    snapshots: torch.Tensor
    pixel_size: float

    _TENSORS = ("sums", "maps", "references", "log_prior", "sigma2", "generator", "snapshots")
    _VALUES = ("starts", "best_start", "log_likelihood", "history", "snapshot_labels", "pixel_size")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The named tensors to save (CPU)."""
        return {k: getattr(self, k).cpu() for k in self._TENSORS}

    def to_values(self) -> dict[str, Any]:
        """The JSON values to save."""
        return {k: getattr(self, k) for k in self._VALUES}

    @classmethod
    def from_saved(cls, iteration: int, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> "AbinitioState":
        """Rebuild a state from :meth:`to_tensors` and :meth:`to_values` output.

        Raises:
            KeyError: a tensor or value is missing.
        """
        missing = [k for k in cls._TENSORS if k not in tensors] + [k for k in cls._VALUES if k not in values]
        if missing:
            raise KeyError(f"saved ab-initio state lacks {', '.join(missing)}")
        return cls(iteration=iteration, **{k: tensors[k] for k in cls._TENSORS},
                   **{k: values[k] for k in cls._VALUES})
