"""Options and result of motion correction (units in brackets, conventions in the docstrings)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from cryolens.core.motion import PolynomialMotion
from cryolens.motion.preprocess import PreprocessParams
from cryolens.params import Params, option

__all__ = ["MotionParams", "MotionJobOptions", "MotionResult", "parse_patch_grid"]


def parse_patch_grid(text: str) -> tuple[int, int] | None:
    """``"5x5"`` -> (5, 5); ``"1x1"``, ``"0"`` or ``"none"`` -> None (global only); ValueError otherwise."""
    t = text.strip().lower()
    if t in ("", "0", "none", "global", "1x1", "1"):
        return None
    m = re.fullmatch(r"(\d+)\s*[x,]\s*(\d+)", t)
    if not m:
        raise ValueError("give the patch grid as NXxNY, e.g. 5x5 (1x1 = global only)")
    return int(m.group(1)), int(m.group(2))


@dataclass
class MotionParams(Params):
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
            at the default B-factor the reference keeps < 0.3 % of its amplitude beyond 8 Å and
            7 % at 12 Å, the default (on 1024² x 24 movies at 1.75 Å/px, 12 rather than 8 Å took
            0.36 instead of 0.52 CPU-s per movie for a shift error of 0.25 instead of 0.24 px).
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

    min_shift_A: float = option(2.0, flag="--min-shift", unit="Å", ge=0,
                                help="Smallest shift searched in the first round (keeps frames off fixed-pattern "
                                     "noise)")
    max_shift_A: float = option(40.0, flag="--max-shift", unit="Å", gt=0, help="Largest shift update searched per "
                                                                              "round")
    bfactor_A2: float = option(1500.0, flag="--bfactor", unit="Å²", ge=0, help="B-factor applied to the reference")
    mask_central_cross: bool = option(True, flag="--central-cross",
                                      help="Mask the central cross of the Fourier transform")
    cross_width_x: int = option(1, ge=0, help="Half-width of the cross's vertical line (Fourier pixels)")
    cross_width_y: int = option(1, ge=0, help="Half-width of the cross's horizontal line (Fourier pixels)")
    termination_px: float = option(0.1, flag="--termination", unit="px", gt=0,
                                   help="Stop when the largest shift update is below this")
    max_iterations: int = option(20, flag="--iterations", ge=1, help="Largest number of alignment rounds")
    smoothing_window: int = option(0, ge=0, help="Savitzky-Golay smoothing of the trajectory over this many frames "
                                                 "after each round (0 = none)")
    align_bin: float | None = option(None, ge=1, help="Align on a copy binned by this factor; default: the largest "
                                                      "binning whose Nyquist is finer than --align-resolution")
    align_resolution_A: float = option(12.0, flag="--align-resolution", unit="Å", gt=0,
                                       help="Resolution kept for alignment when --align-bin is not given")
    patches: tuple[int, int] | None = option(
        None, parse=parse_patch_grid, text=lambda g: f"{g[0]}x{g[1]}", metavar="NXxNY",
        help="Local-motion patch grid NXxNY, e.g. 5x5; 1x1 = global alignment only (default)")
    patch_overlap: float = option(0.5, ge=0, lt=1, help="Patch overlap as a fraction of the spacing")
    local_bfactor_A2: float = option(1000.0, flag="--local-bfactor", unit="Å²", ge=0,
                                     help="B-factor on the patch references")
    local_group_frames: int = option(3, ge=1, rule=(lambda n: n % 2 == 1, "odd"),
                                     help="Frames summed (a running group) for the patch correlations")
    local_max_shift_A: float = option(10.0, flag="--local-max-shift", unit="Å", gt=0,
                                      help="Largest local shift update per round")
    local_max_iterations: int = option(5, flag="--local-iterations", ge=1, help="Most rounds of the patch alignment")
    min_patch_snr: float = option(5.0, ge=0, help="Patches whose correlation-peak SNR is below this are left out of "
                                                  "the local fit")
    min_patches: int = option(9, ge=6, help="Fewest usable patches to fit the local model (else global alignment)")
    local_tile_px: int | None = option(None, flag="--local-tile", unit="px", ge=16,
                                       help="Tile stride applying the local model; default 1/8 of the smaller side "
                                            "(64-256)")
    dose_weighting: bool = option(True, help="Write the dose-weighted sum as the micrograph")
    restore_power: bool = option(True, help="Normalise dose weights by sqrt(sum w²) (flat noise power, RELION); "
                                            "--no-restore-power divides by the mean weight")
    max_frame_shift_A: float | None = option(None, flag="--max-frame-shift", unit="Å", gt=0,
                                             help="Reject movies whose consecutive frames move further than this")
    max_total_travel_A: float | None = option(None, flag="--max-travel", unit="Å", gt=0,
                                              help="Reject movies whose total travel exceeds this")
    early_exposure: float = option(4.0, unit="e⁻/Å²", ge=0, help="Exposure limit of rlnAccumMotionEarly")
    chunk_frames: int = option(4, ge=1, help="Frames transformed at full size at once (bounds memory)")
    cache_bytes: int = option(1 << 30, ge=0, help="Keep full-size frame spectra between alignment and summing up to "
                                                  "this many bytes")

    def check(self) -> None:
        """Cross-field rules."""
        if not self.min_shift_A < self.max_shift_A:
            raise ValueError(f"--min-shift {self.min_shift_A:g}: must be smaller than --max-shift "
                             f"{self.max_shift_A:g} (Å)")
        for name in ("min_shift_A", "max_shift_A", "bfactor_A2", "termination_px", "align_resolution_A"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{self.flag(name)} must be finite")
        if self.patches is not None:
            if len(self.patches) != 2 or min(int(p) for p in self.patches) < 1:
                raise ValueError("--patches: give two positive integers NXxNY, e.g. 5x5")
            if int(self.patches[0]) * int(self.patches[1]) < self.min_patches:
                raise ValueError(f"--patches {self.patches[0]}x{self.patches[1]}: fewer than --min-patches "
                                 f"{self.min_patches} patches; use e.g. 5x5")


@dataclass
class MotionJobOptions(Params):
    """What the job needs besides the alignment parameters, each declared once.

    ``preprocess`` (gain orientation, hot pixels, binning) is declared by :class:`PreprocessParams`.
    """

    preprocess: PreprocessParams = option(default_factory=PreprocessParams, cli=False, help="Preprocessing")
    gain: str | None = option(None, help="Gain reference (MRC or TIFF; corrected = raw × gain); default: "
                                         "rlnMicrographGainName per movie")
    defect_file: str | None = option(None, flag="--defect",
                                     help="Defect file (MotionCor2 'x y w h' lines) or defect map (non-zero = bad); "
                                          "default: rlnMicrographDefectFile per movie")
    dose_per_frame: float | None = option(None, unit="e⁻/Å²", gt=0,
                                          help="Exposure per frame; default: rlnMicrographDoseRate from the STAR "
                                               "file, else no dose weighting")
    pre_exposure: float | None = option(None, unit="e⁻/Å²", ge=0,
                                        help="Exposure before the first frame; default: from the STAR file, else 0")
    first_frame: int = option(1, ge=1, help="First frame to use (1-based)")
    last_frame: int | None = option(None, help="Last frame to use (1-based; default, 0 or negative: the last)")
    eer_grouping: int = option(40, ge=1, help="EER readouts summed into one frame")
    eer_upsampling: int = option(1, choices=(1, 2), help="EER rendering: 1 = 4K, 2 = 8K")
    plots: bool = option(True, help="A drift plot per movie")

    def check(self) -> None:
        """The preprocessing rules; the frame range in order."""
        self.preprocess.validate()
        if self.last_frame is not None and 0 < self.last_frame < self.first_frame:
            raise ValueError(f"--last-frame {self.last_frame}: must not come before --first-frame {self.first_frame}")


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
