"""``cryolens simulate movies``: dose-fractionated movies with drift, damage, shot noise and ground truth."""

from __future__ import annotations

from cryolens.cli.common import (JobOptions, console, device_option,
                                 job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.simulate.movie_params import MovieDataSet

__all__ = ["movies"]


@declare(run=JobOptions, params=MovieDataSet, outputs=("movies", "micrographs_truth", "particles_truth", r"truth_map(_class\d+)?"))
def movies(
    params: MovieDataSet = None,
    run: JobOptions = None,
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
    from cryolens.jobs.simulate_movies import run_simulate_movies

    def body():
        dev = device_option(run.device)
        with job_target("simulate_movies", run) as target, \
                progress_bar("simulating movie frames", quiet=run.quiet) as cb:
            job = run_simulate_movies(target.out, params.movie_params(), params.micrograph_params(),
                                      n_movies=params.n_movies, fmt=params.fmt, device=dev, progress=cb,
                                      observer=target.observer)
        r = job.results
        console.print(f"{r['n_movies']} movies of {r['width']}x{r['height']}x{r['n_frames']} at "
                      f"{r['movie_pixel_size_A']:.4f} Å/px ({', '.join(r['frame_dtypes'])}), {r['n_particles']} "
                      f"particles, {r['seconds_per_movie']} s per movie -> {target.out / 'movies.star'}")

    run_guarded(body)
