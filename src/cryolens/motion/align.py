"""Motion correction of one movie: global alignment, optional local model, sums, dose weighting.

Pipeline (all frames batched, memory bounded by frame chunks):

1. Full-size rfft of each chunk of frames, Fourier-cropped to the alignment grid
   (``MotionParams.align_bin`` / ``align_resolution_A``); the full spectra are kept when
   they fit ``cache_bytes``.
2. Global alignment on the cropped spectra (:func:`cryolens.motion.global_align.align_frames`):
   each frame against the B-factor-weighted sum of the others, cross-masked, sub-pixel
   peaks, Unblur's minimum shift in the first round; shifts re-referenced to frame 0.
3. With ``patches``: patch trajectories on the globally aligned alignment-grid frames and
   RELION's polynomial model fitted to them (:mod:`cryolens.motion.patch_align`), unless
   too few patches have signal (then global only, with the reason in ``local_fallback``).
4. Sums at full size by exact Fourier phase shifts (tiles blended when a local model is
   applied), plain and dose-weighted in the same pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cryolens.core.fourier import good_fft_size, irfftn
from cryolens.core.motion import PolynomialMotion
from cryolens.core.native import shift_sum
from cryolens.motion.dose_weight import DoseWeights, dose_weights, motion_statistics, rejection_reason
from cryolens.motion.global_align import (align_frames, bfactor_filter, crop_spectrum, cross_mask, freq_axes,
                                         phase_factors, phase_ramp)
from cryolens.motion.params import MotionParams, MotionResult
from cryolens.motion.patch_align import fit_polynomial_model, local_sums, measure_patches

__all__ = ["align_movie", "alignment_shape"]


def alignment_shape(height: int, width: int, pixel_size: float, params: MotionParams) -> tuple[int, int]:
    """Even ``(h, w)`` of the alignment grid (Fourier crop of the frames)."""
    b = params.align_bin if params.align_bin is not None else max(1.0, params.align_resolution_A / (2 * pixel_size))
    return _fft_size(height, b), _fft_size(width, b)


def _fft_size(n: int, binning: float) -> int:
    """Even size near ``n / binning`` (never above ``n``, at least 32) whose prime factors are 2, 3 and 5.

    {2, 3, 5} rather than :func:`good_fft_size`'s default {2, 3, 5, 7}: the alignment grid
    decides the measured shifts, which tests and benchmarks against RELION pin.
    """
    top = n - n % 2
    target = min(top, max(32, int(round(n / binning))))
    return min(top, good_fft_size(target, primes=(2, 3, 5)))


def align_movie(frames: torch.Tensor, *, pixel_size: float, params: MotionParams, dose_per_frame: float | None = None,
                pre_exposure: float = 0.0, voltage: float = 300.0,
                progress: Callable[[int, int], None] | None = None) -> MotionResult:
    """Align the frames of a movie and sum them.

    Args:
        frames: ``(F, H, W)`` gain-corrected, defect-filled frames (any float dtype, any device);
            not modified.
        pixel_size: of the frames [Å].
        params: options (``params.validate()`` is called).
        dose_per_frame: exposure per frame [e⁻/Å²]; None: no dose weighting, no early/late split.
        pre_exposure: exposure before the first frame [e⁻/Å²].
        voltage: [kV] (100, 200 or 300 for dose weighting).
        progress: called as ``progress(done, total)`` in arbitrary work units.

    Returns:
        :class:`MotionResult`; shifts are RELION's correction shifts relative to frame 0.

    Raises:
        ValueError: bad parameters, a frame stack that is not ``(F, H, W)`` with F >= 1 and
            H, W >= 32, a non-positive pixel size, or non-finite values.
    """
    params.validate()
    _check_inputs(frames, pixel_size, dose_per_frame, pre_exposure)
    n, hh, ww = frames.shape
    dev = frames.device
    h, w = alignment_shape(hh, ww, pixel_size, params)
    bx, by = ww / w, hh / h
    apix = pixel_size * (bx + by) / 2  # alignment pixel [Å]
    n_chunks = -(-n // params.chunk_frames)
    local_asked = params.patches is not None and n >= 3
    ticker = _Ticker(progress, 2 * n_chunks + 1 + int(local_asked))

    small, cache = _frame_spectra(frames, (h, w), params, ticker)  # 1. spectra
    if cache and not local_asked:  # the sums need only the spectra: frames handed over (take_frames) are freed
        frames = None
    shifts_a, iterations, converged, score = _global_alignment(small, apix, (bx, by), params)  # 2.
    shifts = (shifts_a * torch.tensor([bx, by], dtype=torch.float64, device=dev)).cpu()
    ticker.tick()
    local = _LocalMotion()  # 3. local motion
    if local_asked:
        local = _local_motion(small, shifts_a, (hh, ww), apix, params)
        ticker.tick()
    elif params.patches is not None:
        local = _LocalMotion(fallback="fewer than 3 frames: no local model")
    del small

    weights = None  # 4. sums
    if params.dose_weighting and dose_per_frame is not None:
        def weights(th: int, tw: int) -> DoseWeights:
            return dose_weights(th, tw, pixel_size=pixel_size, n_frames=n, dose_per_frame=dose_per_frame,
                                pre_exposure=pre_exposure, voltage=voltage, restore_power=params.restore_power,
                                device=dev)
    if local.coeffs is not None:
        cache.clear()  # the local sums cut tiles from the frames themselves
        stride = params.local_tile_px or max(64, min(256, 2 * (min(hh, ww) // 16)))
        stride -= stride % 2
        aligned_sum, dw_sum = local_sums(frames, shifts, local.coeffs, stride=stride, weights=weights,
                                         progress=ticker.within(n_chunks))
        ticker.tick(n_chunks)
    else:
        aligned_sum, dw_sum = _global_sums(frames, (n, hh, ww), shifts, cache, weights, params.chunk_frames,
                                           ticker.tick)

    stats = motion_statistics(shifts, pixel_size, dose_per_frame=dose_per_frame, pre_exposure=pre_exposure,
                              early_exposure=params.early_exposure)
    return MotionResult(
        shifts_px=shifts, aligned_sum=aligned_sum, dose_weighted_sum=dw_sum,
        patch_centres=local.centres, patch_shifts=local.patch_shifts, patch_snr=local.patch_snr,
        local_model=local.model, local_fallback=local.fallback, accum_motion_total_A=stats["total"],
        accum_motion_early_A=stats["early"], accum_motion_late_A=stats["late"], max_frame_shift_A=stats["max_step"],
        rejected=rejection_reason(stats, max_frame_shift_A=params.max_frame_shift_A,
                                  max_total_travel_A=params.max_total_travel_A),
        iterations=iterations, converged=converged, score=score, align_pixel_size=apix,
        accum_motion_total_px=stats["total"] / pixel_size, accum_motion_early_px=stats["early"] / pixel_size,
        accum_motion_late_px=stats["late"] / pixel_size)


def _check_inputs(frames: torch.Tensor, pixel_size: float, dose_per_frame: float | None, pre_exposure: float) -> None:
    if frames.ndim != 3 or frames.shape[0] < 1 or min(frames.shape[1:]) < 32:
        raise ValueError(f"frames must be (F, H, W) with F >= 1 and H, W >= 32, not {tuple(frames.shape)}")
    if not pixel_size > 0:
        raise ValueError("pixel_size must be positive (Å)")
    if dose_per_frame is not None and not dose_per_frame > 0:
        raise ValueError("dose_per_frame must be positive (e/Å²) or None")
    if pre_exposure < 0:
        raise ValueError("pre_exposure must not be negative (e/Å²)")


class _Ticker:
    """Progress in work units: ``tick(k)`` after finished units, ``within(k)`` for a step of ``k`` units."""

    def __init__(self, progress: Callable[[int, int], None] | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def tick(self, k: int = 1) -> None:
        self.done += k
        if self.progress is not None:
            self.progress(self.done, self.total)

    def within(self, units: int) -> Callable[[int, int], None]:
        """A ``progress(k, total)`` callback of a step worth ``units`` units (does not advance ``done``)."""
        def report(k: int, total: int) -> None:
            if self.progress is not None:
                self.progress(self.done + round(units * k / total), self.total)
        return report


def _frame_spectra(frames: torch.Tensor, shape: tuple[int, int], params: MotionParams,
                   ticker: _Ticker) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Edge-tapered spectra ``(F, h, w//2+1)`` on the alignment grid ``shape``, and the full-size
    spectra of each chunk of frames when they fit ``params.cache_bytes`` (else an empty list)."""
    n, hh, ww = frames.shape
    h, w = shape
    cache_ok = n * hh * (ww // 2 + 1) * 8 <= params.cache_bytes
    cache: list[torch.Tensor] = []
    small = torch.empty(n, h, w // 2 + 1, dtype=torch.complex64, device=frames.device)
    for c in range(-(-n // params.chunk_frames)):
        sl = slice(c * params.chunk_frames, min(n, (c + 1) * params.chunk_frames))
        spec = torch.fft.rfft2(frames[sl].to(torch.float32))
        small[sl] = crop_spectrum(spec, (hh, ww), (h, w))
        if cache_ok:
            cache.append(spec)
        del spec
        ticker.tick()
    if not bool(torch.isfinite(torch.view_as_real(small).sum())):  # NaN and inf propagate
        raise ValueError("the frames contain NaN or infinite values; fill defects and check the gain reference")
    return _taper_edges(small, h, w), cache


def _global_alignment(small: torch.Tensor, apix: float, binning: tuple[float, float], params: MotionParams):
    """``(shifts (F, 2) [alignment px] relative to frame 0, iterations, converged, score)``."""
    n, h, w = small.shape[0], small.shape[1], 2 * (small.shape[2] - 1)
    dev = small.device
    filt = bfactor_filter(h, w, apix, params.bfactor_A2, device=dev)
    if params.mask_central_cross:
        filt = filt * cross_mask(h, w, params.cross_width_x, params.cross_width_y, device=dev)
    if n == 1:
        return torch.zeros(1, 2, dtype=torch.float64, device=dev), 0, True, 0.0
    trace = align_frames(small, w, filt=filt, max_shift=params.max_shift_A / apix,
                         min_shift_first=params.min_shift_A / apix, termination=params.termination_px,
                         max_iterations=params.max_iterations, px_scale=binning, smoothing=params.smoothing_window)
    return trace.shifts - trace.shifts[:1], trace.iterations, trace.converged, float(trace.snr.mean())


@dataclass
class _LocalMotion:
    """Patch measurements and the local model (see :class:`MotionResult`); ``coeffs`` ``(2, 18)``."""

    centres: torch.Tensor | None = None
    patch_shifts: torch.Tensor | None = None
    patch_snr: torch.Tensor | None = None
    model: PolynomialMotion | None = None
    fallback: str | None = None
    coeffs: torch.Tensor | None = None


def _local_motion(small: torch.Tensor, shifts_a: torch.Tensor, full_shape: tuple[int, int], apix: float,
                  params: MotionParams) -> _LocalMotion:
    """Patch trajectories on the globally aligned frames and the polynomial model fitted to them,
    unless fewer than ``params.min_patches`` patches reach ``params.min_patch_snr``."""
    h, w = small.shape[1], 2 * (small.shape[2] - 1)
    ky, kx = freq_axes(h, w, device=small.device)
    aligned = irfftn(small * phase_ramp(shifts_a, ky, kx), s=(h, w))
    meas = measure_patches(aligned, full_shape=full_shape, grid=tuple(int(p) for p in params.patches),
                           overlap=params.patch_overlap, pixel_size=apix, bfactor=params.local_bfactor_A2,
                           max_shift_A=params.local_max_shift_A, group=params.local_group_frames,
                           cross=(params.cross_width_x, params.cross_width_y) if params.mask_central_cross
                           else None, termination=params.termination_px,
                           max_iterations=params.local_max_iterations)
    del aligned
    out = _LocalMotion(centres=meas.centres, patch_snr=meas.snr)
    use = meas.snr >= params.min_patch_snr
    if int(use.sum()) < params.min_patches:
        out.fallback = (f"only {int(use.sum())} of {len(use)} patches have a correlation-peak SNR >= "
                        f"{params.min_patch_snr:g} (need {params.min_patches}); global alignment only")
        out.patch_shifts = meas.shifts - meas.shifts[:, :1]
    else:
        hh, ww = full_shape
        out.model, out.patch_shifts = fit_polynomial_model(meas, use, width=ww, height=hh)
        out.coeffs = torch.tensor([out.model.coeff_x, out.model.coeff_y], dtype=torch.float64)
    return out


def _taper_edges(spec: torch.Tensor, h: int, w: int, fraction: float = 0.1) -> torch.Tensor:
    """Spectra of the mean-subtracted frames with their edges faded to 0 over ``fraction`` of each side.

    Without it the seam of the periodic frame (new content drifting in at the borders) pulls
    every frame towards the others' unshifted position.
    """
    real = irfftn(spec, s=(h, w))
    real -= real.mean(dim=(-2, -1), keepdim=True)
    real *= _edge_taper(h, max(2, int(fraction * h)), spec.device)[:, None] * \
        _edge_taper(w, max(2, int(fraction * w)), spec.device)[None, :]
    return torch.fft.rfft2(real)


def _edge_taper(n: int, edge: int, device) -> torch.Tensor:
    t = torch.ones(n, device=device)
    ramp = torch.sin(0.5 * torch.pi * (torch.arange(edge, device=device) + 0.5) / edge) ** 2
    t[:edge] = ramp
    t[n - edge:] = ramp.flip(0)
    return t


def _global_sums(frames: torch.Tensor | None, shape: tuple[int, int, int], shifts: torch.Tensor,
                 cache: list[torch.Tensor], weights: Callable[[int, int], DoseWeights] | None, chunk: int,
                 tick: Callable[[], None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain and dose-weighted sums of the frames ``shape`` ``(F, H, W)`` moved by ``shifts (F, 2)`` [px] (Fourier
    phase shifts), from the cached spectra of each chunk, else from ``frames``."""
    n, hh, ww = shape
    dev = cache[0].device if cache else frames.device
    ky, kx = freq_axes(hh, ww, device=dev)
    acc = torch.zeros(hh, ww // 2 + 1, dtype=torch.complex64, device=dev)
    dw = weights(hh, ww) if weights is not None else None
    acc_dw = torch.zeros_like(acc) if dw is not None else None
    running = dw.frame(0) if dw is not None else None  # the C kernel's weights: frame f0's, advanced in place
    for c, f0 in enumerate(range(0, n, chunk)):
        idx = torch.arange(f0, min(n, f0 + chunk))
        spec = cache[c] if cache else torch.fft.rfft2(frames[f0:f0 + len(idx)].to(torch.float32))
        if cache:
            cache[c] = None  # type: ignore[call-overload]  # ours now: modified in place, freed as we go
        ey, ex = phase_factors(shifts[idx].to(dev), ky, kx)
        wts = None
        if not shift_sum(acc, acc_dw, spec, ey, ex, running, dw.step if dw is not None else None):
            wts = dw(idx) if dw is not None else None  # PyTorch: frame by frame, no (chunk, H, W) temporaries
            for j in range(len(idx)):
                shifted = spec[j].mul_(ey[j, :, None]).mul_(ex[j, None, :])
                acc.add_(shifted)
                if acc_dw is not None:
                    acc_dw.add_(shifted * wts[j])  # complex x real
        del spec, wts
        tick()
    aligned = irfftn(acc, s=(hh, ww)).to(torch.float32)
    dose = irfftn(acc_dw, s=(hh, ww)).to(torch.float32) if acc_dw is not None else None
    return aligned, dose
