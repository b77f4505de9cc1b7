"""Options and result of motion correction (units in brackets, conventions in the docstrings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryolens.core.motion import PolynomialMotion

__all__ = ["MotionParams", "MotionResult"]


@dataclass
class MotionParams:
    """Options of :func:`cryolens.motion.align_movie`; defaults follow cisTEM's Align Movies (Unblur).

    Global alignment (each frame against the sum of the others, iterated):
        min_shift_A: in the first round the peak is searched at shifts of at least this [Å]
            (keeps frames off a zero-shift peak of fixed-pattern noise); 0 disables it.
        max_shift_A: largest shift update searched per round [Å].
        bfactor_A2: B-factor ``exp(-B s²/4)`` applied to the reference (the sum of the other
            frames) before correlation [Å²].
        mask_central_cross: zero the Fourier lines ``|kx| < cross_width_x`` and
            ``|ky| < cross_width_y`` of the correlation (detector line artefacts).
        cross_width_x, cross_width_y: half-widths of the cross [Fourier pixels of the
            alignment grid]; a width of 1 masks the axis line itself.
        termination_px: stop when the largest shift update of a round is below this [input px].
        max_iterations: largest number of rounds.
        smoothing_window: Savitzky-Golay (order 1) smoothing of the trajectory over this many
            frames after each round (Unblur); 0 = none.
        align_bin: align on a Fourier-cropped copy binned by this factor (>= 1); shifts are
            then applied to the full frames by Fourier phase shifts. ``None``: automatic, the
            largest binning whose Nyquist stays finer than ``align_resolution_A``.
        align_resolution_A: resolution kept for alignment when ``align_bin`` is None [Å];
            at the default B-factor the reference keeps < 0.3 % of its amplitude beyond 8 Å.
    Local (patch) motion:
        patches: ``(nx, ny)`` patch grid, e.g. ``(5, 5)`` (RELION's patch centres); None = global only.
        patch_overlap: each patch is ``(1 + overlap)`` times the grid spacing wide.
        local_bfactor_A2: B-factor on the patch references [Å²].
        local_group_frames: frames summed (a running group centred on each frame) for the
            patch correlations, for signal; the polynomial model smooths the rest.
        local_max_shift_A: largest local shift update per round [Å].
        local_max_iterations: most rounds of the patch alignment (it stops earlier when the
            RMS update is below ``termination_px``).
        min_patch_snr: patches whose mean correlation-peak SNR (peak minus mean over the
            standard deviation of the correlation map) is below this are left out of the fit;
            with fewer than ``min_patches`` left, the result falls back to global alignment.
        min_patches: fewest usable patches to fit the local model.
        local_tile_px: tile stride [input px] used to apply the local model when summing
            (each tile shifted exactly in Fourier space, tiles blended); None = automatic
            (1/8 of the smaller side, clamped to 64-256).
    Dose weighting (Grant & Grigorieff 2015, exposure at each frame's middle):
        dose_weighting: also return the dose-weighted sum (needs ``dose_per_frame``).
        restore_power: normalise the weights of each frequency by ``sqrt(Σ w²)`` (Grant &
            Grigorieff eq. 9, RELION's dose-weighted sum: flat noise power); False divides
            by ``Σ w / n_frames`` instead (the plain sum's scale where nothing is damaged).
    Rejection:
        max_frame_shift_A: reject the movie when two consecutive frames are further apart [Å].
        max_total_travel_A: reject when the summed frame-to-frame travel exceeds this [Å].
        early_exposure: exposure limit of RELION's rlnAccumMotionEarly [e⁻/Å²].
    Memory:
        chunk_frames: frames transformed at full size at once.
        cache_bytes: keep the full-size frame spectra between alignment and summing when they
            fit in this many bytes (saves one FFT per frame), else recompute them.
    """

    min_shift_A: float = 2.0
    max_shift_A: float = 40.0
    bfactor_A2: float = 1500.0
    mask_central_cross: bool = True
    cross_width_x: int = 1
    cross_width_y: int = 1
    termination_px: float = 0.1
    max_iterations: int = 20
    smoothing_window: int = 0
    align_bin: float | None = None
    align_resolution_A: float = 8.0
    patches: tuple[int, int] | None = None
    patch_overlap: float = 0.5
    local_bfactor_A2: float = 1000.0
    local_group_frames: int = 3
    local_max_shift_A: float = 10.0
    local_max_iterations: int = 5
    min_patch_snr: float = 5.0
    min_patches: int = 9
    local_tile_px: int | None = None
    dose_weighting: bool = True
    restore_power: bool = True
    max_frame_shift_A: float | None = None
    max_total_travel_A: float | None = None
    early_exposure: float = 4.0
    chunk_frames: int = 4
    cache_bytes: int = 1 << 30

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for impossible values."""
        checks = [
            (self.min_shift_A >= 0, "min_shift_A must not be negative (Å)"),
            (self.max_shift_A > 0, "max_shift_A must be positive (Å)"),
            (self.min_shift_A < self.max_shift_A, "min_shift_A must be smaller than max_shift_A"),
            (self.bfactor_A2 >= 0 and self.local_bfactor_A2 >= 0, "B-factors must not be negative (Å²)"),
            (self.cross_width_x >= 0 and self.cross_width_y >= 0, "cross widths must not be negative"),
            (self.termination_px > 0, "termination_px must be positive (pixels)"),
            (self.max_iterations >= 1, "max_iterations must be at least 1"),
            (self.smoothing_window >= 0, "smoothing_window must not be negative (0 = off)"),
            (self.align_bin is None or self.align_bin >= 1, "align_bin must be at least 1 (or None)"),
            (self.align_resolution_A > 0, "align_resolution_A must be positive (Å)"),
            (0 <= self.patch_overlap < 1, "patch_overlap must be within [0, 1)"),
            (self.local_group_frames >= 1 and self.local_group_frames % 2 == 1,
             "local_group_frames must be an odd number >= 1"),
            (self.local_max_shift_A > 0, "local_max_shift_A must be positive (Å)"),
            (self.local_max_iterations >= 1, "local_max_iterations must be at least 1"),
            (self.min_patch_snr >= 0, "min_patch_snr must not be negative"),
            (self.min_patches >= 6, "min_patches must be at least 6 (the model has 6 spatial terms)"),
            (self.local_tile_px is None or self.local_tile_px >= 16, "local_tile_px must be at least 16"),
            (self.max_frame_shift_A is None or self.max_frame_shift_A > 0, "max_frame_shift_A must be positive"),
            (self.max_total_travel_A is None or self.max_total_travel_A > 0, "max_total_travel_A must be positive"),
            (self.early_exposure >= 0, "early_exposure must not be negative (e/Å²)"),
            (self.chunk_frames >= 1, "chunk_frames must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.patches is not None:
            if len(self.patches) != 2 or min(int(p) for p in self.patches) < 1:
                raise ValueError("patches must be two positive integers (nx, ny) or None")
            if int(self.patches[0]) * int(self.patches[1]) < self.min_patches:
                raise ValueError(f"a {self.patches[0]}x{self.patches[1]} patch grid has fewer than "
                                 f"min_patches={self.min_patches} patches; use e.g. 5x5")
        for name in ("min_shift_A", "max_shift_A", "bfactor_A2", "termination_px", "align_resolution_A"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name} must be finite")


@dataclass
class MotionResult:
    """What :func:`cryolens.motion.align_movie` found and made.

    Attributes:
        shifts_px: ``(F, 2)`` float64 ``(x, y)`` global *correction* shifts [input px] relative
            to frame 0 (row 0 = 0): the shift that moves frame ``i``'s content onto frame 0's,
            RELION's ``rlnMicrographShiftX/Y`` of ``data_global_shift``.
        aligned_sum: ``(H, W)`` float32 sum of the corrected frames (local model applied when fitted).
        dose_weighted_sum: ``(H, W)`` float32 dose-weighted sum, or None (no dose or disabled).
        patch_centres: ``(P, 2)`` float64 ``(x, y)`` patch centres [input px] or None.
        patch_shifts: ``(P, F, 2)`` float64 measured local correction beyond the global one at
            each patch [input px], relative to frame 0 (RELION's ``data_local_shift``), or None.
        patch_snr: ``(P,)`` mean correlation-peak SNR of each patch, or None.
        local_model: RELION's third-order polynomial model of the local correction
            (``data_local_motion_model``, 36 coefficients in pixels) or None (global only,
            or too little signal in the patches: see ``local_fallback``).
        local_fallback: why the local model was not fitted although patches were asked, else None.
        accum_motion_total_A, accum_motion_early_A, accum_motion_late_A: RELION's
            rlnAccumMotionTotal/Early/Late: sum of the frame-to-frame global travel over all
            frames, over frames whose (1-based) number is ``<= (early_exposure -
            pre_exposure) / dose_per_frame``, and over the rest [Å]. Early is 0 and late the
            total without a dose.
        accum_motion_total_px, accum_motion_early_px, accum_motion_late_px: the same in input
            pixels: what RELION 3.1 actually writes in rlnAccumMotionTotal/Early/Late (its label
            says Å; checked against relion_run_motioncorr 3.1.3 output).
        max_frame_shift_A: largest frame-to-frame global travel [Å].
        rejected: why the movie exceeds a rejection threshold, else None.
        iterations: rounds of the global alignment; converged: the last update was below
            ``termination_px``.
        score: mean correlation-peak SNR of the frames in the last global round.
        align_pixel_size: pixel size the alignment worked at [Å].
    """

    shifts_px: torch.Tensor
    aligned_sum: torch.Tensor
    dose_weighted_sum: torch.Tensor | None
    patch_centres: torch.Tensor | None
    patch_shifts: torch.Tensor | None
    patch_snr: torch.Tensor | None
    local_model: PolynomialMotion | None
    local_fallback: str | None
    accum_motion_total_A: float
    accum_motion_early_A: float
    accum_motion_late_A: float
    max_frame_shift_A: float
    rejected: str | None
    iterations: int
    converged: bool
    score: float
    align_pixel_size: float
    accum_motion_total_px: float = 0.0
    accum_motion_early_px: float = 0.0
    accum_motion_late_px: float = 0.0
