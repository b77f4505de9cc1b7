"""``cryolens simulate movies``: dose-fractionated movies with drift, damage, shot noise and ground truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.declare import declare
from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, job_target,
                                 progress_bar, run_guarded)
from cryolens.errors import InputError

__all__ = ["movies"]


@declare(outputs=("movies", "micrographs_truth", "particles_truth", r"truth_map(_class\d+)?"))
def movies(
    preset: Annotated[str, typer.Option(
        help="Starting values: tutorial (20 movies of 1024², 32 frames, 1.75 Å/px) or benchmark (3710x3838x40, "
             "1.232 Å/px); the options below override them.")] = "tutorial",
    n_movies: Annotated[Optional[int], typer.Option(help="Number of movies.")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Frames per movie.")] = None,
    dose_per_frame: Annotated[Optional[float], typer.Option(help="Exposure per frame (e⁻/Å²).")] = None,
    pre_exposure: Annotated[Optional[float], typer.Option(help="Exposure before the first frame (e⁻/Å²).")] = None,
    drift: Annotated[Optional[float], typer.Option(help="Global drift from the first to the last frame (Å); "
                                                         "fast at first, then slow, random direction.")] = None,
    local_motion: Annotated[Optional[bool], typer.Option("--local-motion/--no-local-motion",
                                                         help="Add smooth patch-varying beam-induced motion.")] = None,
    local_motion_rms: Annotated[Optional[float], typer.Option(
        help="RMS local displacement at the last frame (Å).")] = None,
    damage: Annotated[Optional[bool], typer.Option("--damage/--no-damage",
                                                   help="Grant & Grigorieff radiation damage per frame.")] = None,
    gain: Annotated[Optional[bool], typer.Option("--gain/--no-gain",
                                                 help="Non-uniform detector sensitivity; writes gain.mrc.")] = None,
    hot_pixels: Annotated[Optional[int], typer.Option(help="Number of hot pixels of the detector.")] = None,
    dead_pixels: Annotated[Optional[int], typer.Option(help="Number of dead pixels of the detector.")] = None,
    super_resolution: Annotated[Optional[bool], typer.Option(
        "--super-resolution/--no-super-resolution",
        help="Record at half the pixel size: frames twice as large (bin 2 to the output pixel).")] = None,
    format: Annotated[str, typer.Option("--format", help="Movie files: mrc (.mrcs stack) or tiff (LZW).")] = "mrc",
    size: Annotated[Optional[tuple[int, int]], typer.Option(help="Movie size W H (physical pixels).")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(help="Output (physical) pixel size (Å).")] = None,
    particles_per_movie: Annotated[Optional[int], typer.Option(help="Particles per movie (fewer if they do not fit).")]
    = None,
    structure: Annotated[Optional[list[str]], typer.Option(
        "--structure", help="Structure spec (repeatable): phantom, map.mrc[:population=P], model.pdb, ...")] = None,
    map_pixel_size: Annotated[Optional[float], typer.Option(
        help="Voxel size (Å) of maps whose header says 0.")] = None,
    defocus: Annotated[Optional[tuple[float, float]], typer.Option(
        help="Defocus range MIN MAX (Å, underfocus positive).")] = None,
    voltage: Annotated[Optional[float], typer.Option(help="Acceleration voltage (kV): 100, 200 or 300.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (specimen, motion, detector, noise).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Simulate dose-fractionated movies: drift with a fast initial phase, local motion, damage, shot noise.

    Detector gain and hot/dead pixels are optional; frames are integer counts (protein dark).

    Writes Movies/movie_NNNN.mrcs (or .tif) with a RELION MotionCorr-like STAR of the true shifts each.

    Also movies.star (RELION 3.1), gain.mrc, defects.txt, micrographs_truth.star, particles_truth.star.

    And truth_map.mrc, drift.png (trajectories) and report.html.

    Examples:

      cryolens simulate movies --preset tutorial --out sim_movies

      cryolens simulate movies --preset benchmark --n-movies 2 --format tiff --out bench

      cryolens simulate movies --frames 24 --dose-per-frame 2 --drift 30 --no-local-motion --hot-pixels 20 --out drift
    """
    from cryolens.jobs.simulate_micrographs import params_from_preset
    from cryolens.jobs.simulate_movies import run_simulate_movies
    from cryolens.simulate.micrographs import MICROGRAPH_PRESETS
    from cryolens.simulate.movies import MOVIE_PRESETS

    def body():
        if preset not in MOVIE_PRESETS:
            raise InputError(f"--preset {preset}: unknown preset; use one of {', '.join(MOVIE_PRESETS)}.")
        if format not in ("mrc", "tiff"):
            raise InputError(f"--format {format}: not a movie format cryolens writes; use mrc or tiff "
                             "(no maintained library writes EER).")
        if size is not None and min(size) < 64:
            raise InputError(f"--size {size[0]} {size[1]}: movies must be at least 64 x 64 pixels.")
        if n_movies is not None and n_movies < 1:
            raise InputError(f"--n-movies {n_movies}: give at least one movie.")
        if frames is not None and frames < 1:
            raise InputError(f"--frames {frames}: a movie needs at least one frame.")
        if dose_per_frame is not None and not dose_per_frame > 0:
            raise InputError(f"--dose-per-frame {dose_per_frame}: the exposure per frame must be positive (e⁻/Å²).")
        for name, value in (("--drift", drift), ("--local-motion-rms", local_motion_rms), ("--hot-pixels", hot_pixels),
                            ("--dead-pixels", dead_pixels), ("--pre-exposure", pre_exposure)):
            if value is not None and value < 0:
                raise InputError(f"{name} {value}: must not be negative.")
        p = MOVIE_PRESETS[preset]
        movie_over = dict(n_frames=frames, dose_per_frame=dose_per_frame, pre_exposure=pre_exposure, drift=drift,
                          local_motion=local_motion, local_motion_rms=local_motion_rms, damage=damage, gain=gain,
                          hot_pixels=hot_pixels, dead_pixels=dead_pixels, super_resolution=super_resolution,
                          voltage=voltage, seed=seed)
        params = dataclasses.replace(p.params, **{k: v for k, v in movie_over.items() if v is not None})
        if params.damage and min(abs(params.voltage - v) for v in (100.0, 200.0, 300.0)) > 2:
            raise InputError(f"--voltage {params.voltage:g}: the radiation-damage model knows 100, 200 and 300 kV; "
                             "use one of them or --no-damage.")
        try:
            params.validate()
        except ValueError as e:
            raise InputError(f"simulate movies: {e}.") from None
        mic_over = dict(p.micrograph, width=size[0] if size else None, height=size[1] if size else None,
                        particles_per_micrograph=particles_per_movie, defocus_min=defocus[0] if defocus else None,
                        defocus_max=defocus[1] if defocus else None, pixel_size=pixel_size,
                        structures=list(structure) if structure else None)
        for k, v in p.micrograph.items():
            if mic_over.get(k) is None:
                mic_over[k] = v
        mparams, extras = params_from_preset(MICROGRAPH_PRESETS[p.micrograph_preset], mic_over)
        dev = device_option(device)
        with job_target("simulate_movies", out, project) as target, \
                progress_bar("simulating movie frames", quiet=quiet) as cb:
            job = run_simulate_movies(target.out, params, mparams, n_movies=n_movies or p.n_movies,
                                      structures=extras.get("structures"), pixel_size=extras.get("pixel_size"),
                                      box=extras.get("box"), map_pixel_size=map_pixel_size, fmt=format, device=dev,
                                      progress=cb, observer=target.observer)
        r = job.results
        console.print(f"{r['n_movies']} movies of {r['width']}x{r['height']}x{r['n_frames']} at "
                      f"{r['movie_pixel_size_A']:.4f} Å/px ({', '.join(r['frame_dtypes'])}), {r['n_particles']} "
                      f"particles, {r['seconds_per_movie']} s per movie -> {target.out / 'movies.star'}")

    run_guarded(body)
