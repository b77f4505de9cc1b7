"""Radiation damage per spatial frequency (Grant & Grigorieff 2015, eLife 4:e06980).

The specimen's signal at spatial frequency ``k`` (1/Å) fades with the accumulated
exposure ``N`` (e⁻/Å²) as

    D(k, N) = exp(-N / (2 N_e(k))),    N_e(k) = (0.245 · k^-1.665 + 2.81) · f(V)   e⁻/Å²

(their eq. 3 and 5; ``N_e`` is the critical exposure, at which the amplitude has
fallen to ``1/√e``). The fit was made at 300 kV; lower voltages damage more per
electron, which RELION and cisTEM express by scaling the critical exposure with
``f(300 kV) = 1``, ``f(200 kV) = 0.8`` and (RELION) ``f(100 kV) = 0.64``. Other
voltages raise :class:`ValueError`, as in RELION.

A frame that receives exposure from ``N_start`` to ``N_end`` is weighted with the
exposure at its middle, ``(N_start + N_end) / 2``, as Grant & Grigorieff do (RELION's
motion correction uses the exposure at the frame's *end*; ``at="end"`` gives that).
``k = 0`` has an infinite critical exposure and a weight of 1.

The model is shared by the simulator and the stages, so it lives in ``core``: pure
functions of tensors. The movie simulator applies :func:`damage_filter` to each frame
and :func:`critical_exposure` to its Fourier frames; motion correction's dose weighting
(:mod:`cryolens.motion.dose_weight`) builds on :func:`critical_exposure` and
:func:`frame_exposures`; :func:`damage_weights` (``normalize=True``) gives RELION's
dose-weighted sum in one call.
"""

from __future__ import annotations

import torch

__all__ = ["CRITICAL_EXPOSURE_A", "CRITICAL_EXPOSURE_B", "CRITICAL_EXPOSURE_C", "voltage_factor",
           "critical_exposure", "damage_filter", "frame_exposures", "damage_weights"]

#: Grant & Grigorieff (2015) eq. 3 at 300 kV: ``N_e(k) = A · k^B + C`` (k in 1/Å, N_e in e⁻/Å²).
CRITICAL_EXPOSURE_A = 0.245
CRITICAL_EXPOSURE_B = -1.665
CRITICAL_EXPOSURE_C = 2.81

_VOLTAGE_FACTORS = {300.0: 1.0, 200.0: 0.8, 100.0: 0.64}


def voltage_factor(voltage: float) -> float:
    """Scale of the critical exposure at ``voltage`` kV relative to 300 kV (1, 0.8 at 200, 0.64 at 100).

    Raises:
        ValueError: a voltage more than 2 kV away from 100, 200 or 300 kV (no published factor).
    """
    for v, f in _VOLTAGE_FACTORS.items():
        if abs(float(voltage) - v) <= 2.0:
            return f
    raise ValueError(f"no radiation-damage model for {voltage} kV; use 100, 200 or 300 kV")


def critical_exposure(k: torch.Tensor | float, voltage: float = 300.0) -> torch.Tensor:
    """Critical exposure ``N_e(k)`` in e⁻/Å² at spatial frequencies ``k`` (1/Å, any shape).

    ``N_e(k) = (0.245 · k^-1.665 + 2.81) · f(V)``; ``inf`` at ``k = 0``. Returns a float tensor
    of ``k``'s shape (float32 unless ``k`` is float64).
    """
    k = torch.as_tensor(k)
    if not k.is_floating_point():
        k = k.to(torch.float32)
    return (CRITICAL_EXPOSURE_A * k.abs().pow(CRITICAL_EXPOSURE_B) + CRITICAL_EXPOSURE_C) * voltage_factor(voltage)


def damage_filter(exposure: torch.Tensor | float, k: torch.Tensor | float, voltage: float = 300.0) -> torch.Tensor:
    """Amplitude left after ``exposure`` e⁻/Å²: ``exp(-N / (2 N_e(k)))``.

    ``exposure`` and ``k`` broadcast against each other (e.g. exposures ``(F, 1, 1)`` and a
    frequency grid ``(H, W)`` give ``(F, H, W)``).
    """
    ne = critical_exposure(k, voltage)
    n = torch.as_tensor(exposure, dtype=ne.dtype, device=ne.device)
    if bool((n < 0).any()):
        raise ValueError("exposure must not be negative")
    return torch.exp(-n / (2.0 * ne))


def frame_exposures(n_frames: int, dose_per_frame: float, pre_exposure: float = 0.0, *,
                    at: str = "middle", dtype=torch.float64, device=None) -> torch.Tensor:
    """Accumulated exposure (e⁻/Å²) of each frame: ``pre + (i + 0.5)·dose`` (``at="middle"``),
    ``pre + (i + 1)·dose`` (``"end"``, RELION) or ``pre + i·dose`` (``"start"``), ``i = 0..n-1``."""
    offset = {"start": 0.0, "middle": 0.5, "end": 1.0}.get(at)
    if offset is None:
        raise ValueError(f"at must be 'start', 'middle' or 'end', not {at!r}")
    if n_frames < 1 or dose_per_frame < 0 or pre_exposure < 0:
        raise ValueError("need n_frames >= 1 and non-negative dose_per_frame and pre_exposure")
    i = torch.arange(n_frames, dtype=dtype, device=device)
    return pre_exposure + (i + offset) * dose_per_frame


def damage_weights(n_frames: int, dose_per_frame: float, k: torch.Tensor | float, voltage: float = 300.0,
                   pre_exposure: float = 0.0, *, at: str = "middle", normalize: bool = False) -> torch.Tensor:
    """Damage filter of every frame of a movie at frequencies ``k`` (1/Å).

    Args:
        n_frames: frames in the movie.
        dose_per_frame: exposure per frame (e⁻/Å²).
        k: spatial frequencies (1/Å), any shape ``S``.
        voltage: kV (100, 200 or 300).
        pre_exposure: exposure before the first frame (e⁻/Å²).
        at: which exposure stands for a frame: ``"middle"`` (Grant & Grigorieff), ``"end"`` (RELION).
        normalize: divide by ``sqrt(Σ_frames w²)`` per frequency (RELION's dose-weighted sum,
            Grant & Grigorieff eq. 9), so the weights of a frequency have unit norm.

    Returns:
        ``(n_frames, *S)`` weights, ``exp(-N_i / (2 N_e(k)))`` (normalised if asked).
    """
    k = torch.as_tensor(k)
    ne = critical_exposure(k, voltage)
    n = frame_exposures(n_frames, dose_per_frame, pre_exposure, at=at, dtype=ne.dtype, device=ne.device)
    w = torch.exp(-n.reshape(-1, *([1] * ne.ndim)) / (2.0 * ne))
    if normalize:
        w = w / torch.sqrt((w * w).sum(dim=0, keepdim=True))
    return w
