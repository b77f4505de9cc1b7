"""What auto-refinement needs to go on after a finished iteration (for ``cryolens refine --continue``).

:func:`cryolens.refine.auto_refine` hands a :class:`RefineState` to its ``on_iteration`` callback after
every iteration that is not the last, and takes one back as ``resume`` to continue from it. Given the
same particles, reference, mask and params, a continued refinement computes exactly what the
uninterrupted one computes: the state holds every number the next iteration reads (poses, both
half-set references and masks, the noise spectra, the sampling schedule and the convergence
counters). No file I/O here: :meth:`RefineState.to_tensors` / :meth:`RefineState.to_values` and
:meth:`RefineState.from_saved` convert to and from named tensors and JSON values, which the job
layer stores (:mod:`cryolens.jobs.checkpoint`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["IterationStats", "Schedule", "RefineState"]


@dataclass
class IterationStats:
    """One iteration: resolution (Å, half-map FSC 0.143), band limit (Å), sampling, pose changes.

    ``mode`` is the score and the search: ``cc-global``, ``ml-global`` or ``ml-local``;
    angle changes are in degrees (modulo symmetry), the shift change in px.
    """

    iteration: int
    resolution: float
    band_limit: float
    angular_step: float
    offset_step: float
    mean_angle_change: float
    median_angle_change: float
    rms_shift_change: float
    mode: str
    seconds: float


@dataclass
class Schedule:
    """The sampling and convergence bookkeeping carried from one iteration to the next.

    Attributes:
        resolution: the resolution (Å) the next iteration aligns to.
        step: angular step (degrees) of the next local searches; ``offset_step`` likewise in px.
        best: best resolution so far (Å); ``stall``: iterations in a row without 1 % improvement
            at the finest sampling; ``converged``: the next iteration is the final one.
    """

    resolution: float
    step: float
    offset_step: float
    best: float = float("inf")
    stall: int = 0
    converged: bool = False


@dataclass
class RefineState:
    """The refinement after finished iteration ``iteration`` (tensors on the CPU).

    Attributes:
        rotations ``(N, 3, 3)``, shifts ``(N, 2)`` px (origins), log_likelihood ``(N,)``,
        max_probability ``(N,)``: per particle, table row order.
        subset: ``(N,)`` int64 half set (1/2) of each particle (checked on resume).
        references: ``(2, n, n, n)`` the two half sets' next references (Wiener-filtered).
        masks: ``(2, n, n, n)`` their dynamic masks, or None while the sphere or the user's mask applies.
        sigma2: ``(2, n//2+1)`` the noise spectra per shell of each half set.
        schedule: :class:`Schedule` for the next iteration; history: the iterations so far.
        half1, half2: the iteration's unfiltered half maps ``(n, n, n)`` (for the user; not needed
            to continue, so not part of :meth:`to_tensors`).
    """

    iteration: int
    rotations: torch.Tensor
    shifts: torch.Tensor
    log_likelihood: torch.Tensor
    max_probability: torch.Tensor
    subset: torch.Tensor
    references: torch.Tensor
    masks: torch.Tensor | None
    sigma2: torch.Tensor
    schedule: Schedule
    history: list[IterationStats]
    half1: torch.Tensor | None = None
    half2: torch.Tensor | None = None

    _TENSORS = ("rotations", "shifts", "log_likelihood", "max_probability", "subset", "references", "masks",
                "sigma2")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The named tensors to save (CPU), without the half maps."""
        return {k: getattr(self, k).cpu() for k in self._TENSORS if getattr(self, k) is not None}

    def to_values(self) -> dict[str, Any]:
        """The JSON values to save: the schedule and the history."""
        return {"schedule": dataclasses.asdict(self.schedule),
                "history": [dataclasses.asdict(h) for h in self.history]}

    @classmethod
    def from_saved(cls, iteration: int, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> "RefineState":
        """Rebuild a state from :meth:`to_tensors` and :meth:`to_values` output.

        Raises:
            KeyError: a tensor or value is missing.
        """
        t = {k: tensors.get(k) for k in cls._TENSORS}
        missing = [k for k, v in t.items() if v is None and k != "masks"]
        if missing:
            raise KeyError(f"saved refine state lacks {', '.join(missing)}")
        return cls(iteration=iteration, schedule=Schedule(**values["schedule"]),
                   history=[IterationStats(**h) for h in values["history"]], **t)
