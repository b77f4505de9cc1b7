"""Dose weighting of aligned frames (Grant & Grigorieff 2015) and drift statistics/rejection.

Frame ``i``'s Fourier component at spatial frequency ``k`` (1/Å) is weighted by
``w_i(k) = exp(-N_i / (2 N_e(k)))`` with ``N_i`` the accumulated exposure at the frame's
middle (``pre + (i + ½)·dose``) and ``N_e`` the critical exposure of
:mod:`cryolens.core.dose`. Per frequency the weights are then divided by
``sqrt(Σ_i w_i²)`` (Grant & Grigorieff eq. 9, RELION; ``restore_power=True``) or by
``Σ_i w_i / F`` (the plain sum's scale where there is no damage).
"""

from __future__ import annotations

import functools
import math

import torch

from cryolens.core.dose import critical_exposure, frame_exposures

__all__ = ["DoseWeights", "dose_weights", "motion_statistics", "rejection_reason"]


class DoseWeights:
    """Per-frame weights on one rfft grid, produced a chunk of frames at a time (bounded memory).

    Args:
        h, w: real grid shape [px]; the rfft grid is ``(h, w//2+1)``.
        pixel_size: of that grid [Å].
        n_frames, dose_per_frame, pre_exposure, voltage: exposure model [e⁻/Å², kV].
        restore_power: see the module docstring.
    """

    def __init__(self, h: int, w: int, *, pixel_size: float, n_frames: int, dose_per_frame: float,
                 pre_exposure: float = 0.0, voltage: float = 300.0, restore_power: bool = True, device=None):
        ky = torch.fft.fftfreq(h, d=pixel_size, device=device)
        kx = torch.fft.rfftfreq(w, d=pixel_size, device=device)
        k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
        self.rate = 0.5 / critical_exposure(k, voltage)  # 1 / (2 N_e), 0 at DC
        self.exposures = frame_exposures(n_frames, dose_per_frame, pre_exposure, device=device).to(torch.float32)
        self.step = torch.exp(-dose_per_frame * self.rate)  # w_{i+1} = w_i · step
        # Σ_i exp(-p·N_i·r) over N_i = N_0 + i·d is geometric: exp(-p N_0 r)·(1 - q^F)/(1 - q), q = exp(-p d r)
        pw = 2.0 if restore_power else 1.0
        first = torch.exp(-pw * float(self.exposures[0]) * self.rate)
        x = -pw * dose_per_frame * self.rate
        ratio = torch.where(x < 0, torch.expm1(n_frames * x) / torch.expm1(x).clamp(max=-1e-30),
                            torch.full_like(x, float(n_frames)))
        total = first * ratio
        self.norm = total.sqrt() if restore_power else total / n_frames

    def frame(self, i: int) -> torch.Tensor:
        """Normalised weights ``(h, w//2+1)`` of frame ``i`` (0-based); frame ``i + 1``'s are these times
        :attr:`step` (a new tensor, the caller's to change)."""
        return torch.exp(-float(self.exposures[i]) * self.rate).div_(self.norm)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised weights ``(len(frames), h, w//2+1)`` of the frames with these 0-based indices
        (each index following the previous one costs a product instead of an exponential)."""
        idx = frames.tolist()
        out = torch.empty(len(idx), *self.rate.shape, device=self.rate.device)
        for j, i in enumerate(idx):
            if j and i == idx[j - 1] + 1:
                torch.mul(out[j - 1], self.step, out=out[j])
            else:
                out[j] = self.frame(i)
        return out


@functools.lru_cache(maxsize=4)
def dose_weights(h: int, w: int, *, pixel_size: float, n_frames: int, dose_per_frame: float, pre_exposure: float = 0.0,
                 voltage: float = 300.0, restore_power: bool = True, device=None) -> DoseWeights:
    """A shared :class:`DoseWeights` (read-only after construction) for these arguments: the movies of a
    job have one grid and exposure model, so the per-frequency tables are built once, not per movie."""
    return DoseWeights(h, w, pixel_size=pixel_size, n_frames=n_frames, dose_per_frame=dose_per_frame,
                       pre_exposure=pre_exposure, voltage=voltage, restore_power=restore_power, device=device)


def motion_statistics(shifts_px: torch.Tensor, pixel_size: float, *, dose_per_frame: float | None,
                      pre_exposure: float = 0.0, early_exposure: float = 4.0) -> dict[str, float]:
    """RELION's accumulated-motion statistics of global shifts ``(F, 2)`` [px] -> Å.

    ``total``: Σ over frames 2..F (1-based) of the distance to the previous frame;
    ``early``: the same over frames ``<= (early_exposure - pre_exposure) / dose_per_frame``;
    ``late``: the rest; ``max_step``: the largest frame-to-frame distance.
    """
    s = shifts_px.to(torch.float64)
    steps = torch.linalg.vector_norm(s[1:] - s[:-1], dim=-1) * pixel_size if len(s) > 1 else s.new_zeros(0)
    number = torch.arange(2, len(s) + 1, dtype=torch.float64)
    cutoff = (early_exposure - pre_exposure) / dose_per_frame if dose_per_frame else -math.inf
    early = number <= cutoff
    return {"total": float(steps.sum()), "early": float(steps[early].sum()), "late": float(steps[~early].sum()),
            "max_step": float(steps.max()) if len(steps) else 0.0}


def rejection_reason(stats: dict[str, float], *, max_frame_shift_A: float | None,
                     max_total_travel_A: float | None) -> str | None:
    """A sentence naming the exceeded threshold, or None."""
    if max_frame_shift_A is not None and stats["max_step"] > max_frame_shift_A:
        return (f"the largest shift between consecutive frames, {stats['max_step']:.2f} Å, "
                f"exceeds max_frame_shift_A = {max_frame_shift_A:g} Å")
    if max_total_travel_A is not None and stats["total"] > max_total_travel_A:
        return f"the total travel, {stats['total']:.2f} Å, exceeds max_total_travel_A = {max_total_travel_A:g} Å"
    return None
