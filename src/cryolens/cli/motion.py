"""``cryolens motion``: motion correction of movies into micrographs with RELION MotionCorr metadata."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, job_target,
                                 progress_bar, run_guarded)
from cryolens.errors import InputError

__all__ = ["motion"]


def _patches(text: str | None) -> tuple[int, int] | None:
    """``"5x5"`` -> (5, 5); ``"1x1"``, ``"0"`` or ``"none"`` -> None (global only)."""
    if text is None:
        return None
    t = text.strip().lower()
    if t in ("", "0", "none", "global", "1x1", "1"):
        return None
    m = re.fullmatch(r"(\d+)\s*[x,]\s*(\d+)", t)
    if not m:
        raise InputError(f"--patches {text}: give the patch grid as NXxNY, e.g. 5x5 (1x1 = global only).")
    return int(m.group(1)), int(m.group(2))


def motion(
    star: Annotated[Path, typer.Option("--in", help="movies.star (RELION 3.1 data_optics + data_movies, or 3.0).")],
    dose_per_frame: Annotated[Optional[float], typer.Option(
        help="Exposure per frame (e⁻/Å²); default: rlnMicrographDoseRate from the STAR file, else no dose "
             "weighting.")]
    = None,
    pre_exposure: Annotated[Optional[float], typer.Option(
        help="Exposure before the first frame (e⁻/Å²); default: from the STAR file, else 0.")] = None,
    patches: Annotated[Optional[str], typer.Option(
        help="Local-motion patch grid NXxNY, e.g. 5x5; 1x1 = global alignment only (default).")] = None,
    patch_overlap: Annotated[Optional[float], typer.Option(help="Patch overlap as a fraction of the spacing.")] = None,
    gain: Annotated[Optional[Path], typer.Option(
        help="Gain reference (MRC or TIFF; corrected = raw × gain); default: rlnMicrographGainName per "
             "movie.")] = None,
    gain_rot: Annotated[int, typer.Option(
        help="Rotate the gain this many times 90° clockwise, as relion_run_motioncorr --gain_rot (0-3).")] = 0,
    gain_flip: Annotated[int, typer.Option(
        help="Then flip the gain: 0 no, 1 upside down, 2 left to right (relion_run_motioncorr --gain_flip).")] = 0,
    defect: Annotated[Optional[Path], typer.Option(
        help="Defect file (MotionCor2 'x y w h' lines) or defect map (non-zero = bad); default: "
             "rlnMicrographDefectFile per movie.")] = None,
    hot_pixels: Annotated[bool, typer.Option("--hot-pixels/--no-hot-pixels",
                                             help="Find hot pixels in the summed frames and fill them.")] = True,
    hot_pixel_sigma: Annotated[float, typer.Option(
        help="Hot-pixel threshold in robust standard deviations above the median sum.")] = 6.0,
    bin: Annotated[float, typer.Option(
        "--bin", help="Fourier binning factor (2: super-resolution to the physical pixel).")] = 1.0,
    first_frame: Annotated[int, typer.Option(help="First frame to use (1-based).")] = 1,
    last_frame: Annotated[int, typer.Option(help="Last frame to use (1-based; 0 or negative = the last).")] = -1,
    eer_grouping: Annotated[int, typer.Option(help="EER readouts summed into one frame.")] = 40,
    eer_upsampling: Annotated[int, typer.Option(help="EER rendering: 1 = 4K, 2 = 8K.")] = 1,
    min_shift: Annotated[Optional[float], typer.Option(
        help="Smallest shift searched in the first round (Å; keeps frames off fixed-pattern noise).")] = None,
    max_shift: Annotated[Optional[float], typer.Option(help="Largest shift update searched per round (Å).")] = None,
    bfactor: Annotated[Optional[float], typer.Option(help="B-factor applied to the reference (Å²).")] = None,
    central_cross: Annotated[Optional[bool], typer.Option(
        "--central-cross/--no-central-cross", help="Mask the central cross of the Fourier transform.")] = None,
    cross_width_x: Annotated[Optional[int], typer.Option(help="Half-width of the cross's vertical line "
                                                                 "(Fourier pixels).")] = None,
    cross_width_y: Annotated[Optional[int], typer.Option(help="Half-width of the cross's horizontal line "
                                                                 "(Fourier pixels).")] = None,
    termination: Annotated[Optional[float], typer.Option(
        help="Stop when the largest shift update is below this (pixels).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Largest number of alignment rounds.")] = None,
    dose_weighting: Annotated[bool, typer.Option("--dose-weighting/--no-dose-weighting",
                                                 help="Write the dose-weighted sum as the micrograph.")] = True,
    max_frame_shift: Annotated[Optional[float], typer.Option(
        help="Reject movies whose consecutive frames move further than this (Å).")] = None,
    max_travel: Annotated[Optional[float], typer.Option(
        help="Reject movies whose total travel exceeds this (Å).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="A drift plot per movie.")] = True,
    backend: Annotated[Optional[str], typer.Option(
        help="Compute backend: threads[:N] (N movies at once in this process; the default on the "
             "CPU), local[:N] processes, inprocess (one at a time), tcp://scheduler:port (Dask) or profile:NAME.")]
    = None,
    j: Annotated[Optional[int], typer.Option(
        "--j", help="Movies processed at once in N local worker processes (default: in-process threads, one "
                    "movie per core, which start faster).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Align the frames of each movie (global, and local with --patches) and write the micrographs.

    Writes Movies/<name>.mrc (dose-weighted sum), Movies/<name>_noDW.mrc, Movies/<name>.star (RELION MotionCorr).

    Also micrographs.star (RELION 3.1), rejected.star, drift.png, report.html and job.json; reruns skip movies done.

    Examples:

      cryolens motion --in sim/movies.star --out mc --dose-per-frame 1.25

      cryolens motion --in movies.star --out mc --gain gain.mrc --gain-rot 1 --gain-flip 2 --patches 5x5 --bin 2

      cryolens motion --in movies.star --out mc --max-travel 50 --backend tcp://head:8786
    """
    from cryolens.jobs.motion import MotionJobOptions, run_motion
    from cryolens.motion import MotionParams
    from cryolens.motion.preprocess import PreprocessParams

    def body():
        given = dict(min_shift_A=min_shift, max_shift_A=max_shift, bfactor_A2=bfactor, mask_central_cross=central_cross,
                     cross_width_x=cross_width_x, cross_width_y=cross_width_y, termination_px=termination,
                     max_iterations=iterations, patch_overlap=patch_overlap, max_frame_shift_A=max_frame_shift,
                     max_total_travel_A=max_travel)
        params = MotionParams(patches=_patches(patches), dose_weighting=dose_weighting,
                              **{k: v for k, v in given.items() if v is not None})
        options = MotionJobOptions(
            preprocess=PreprocessParams(gain_rot=gain_rot, gain_flip=gain_flip, hot_pixels=hot_pixels,
                                        hot_pixel_sigma=hot_pixel_sigma, bin_factor=bin),
            gain=None if gain is None else str(gain), defect_file=None if defect is None else str(defect),
            dose_per_frame=dose_per_frame, pre_exposure=pre_exposure, first_frame=first_frame,
            last_frame=None if last_frame <= 0 else last_frame, eer_grouping=eer_grouping,
            eer_upsampling=eer_upsampling, plots=plots)
        if j is not None and j < 1:
            raise InputError(f"--j {j}: give at least 1 movie at a time.")
        dev = device_option(device)
        with job_target("motion", out, project) as target, progress_bar("movies", quiet=quiet) as cb:
            job = run_motion(star, target.out, params, options, backend=backend, workers=j, device=dev, progress=cb,
                             observer=target.observer)
        r = job.results
        console.print(f"{r['n_movies']} movies ({r['n_skipped']} done before), {r['n_rejected']} rejected, "
                      f"mean total motion [bold]{r['mean_total_motion_A']:.2f} Å[/] -> "
                      f"{target.out / 'micrographs.star'}")

    run_guarded(body)
