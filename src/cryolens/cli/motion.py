"""``cryolens motion``: motion correction of movies into micrographs with RELION MotionCorr metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from cryolens.cli.common import (MicrographJobOptions, console, device_option, job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.motion.params import MotionJobOptions, MotionParams
from cryolens.motion.preprocess import PreprocessParams

__all__ = ["motion"]


@declare(run=MicrographJobOptions, params=MotionParams, preprocess=PreprocessParams, options=MotionJobOptions,
         outputs=("micrographs", "rejected"))
def motion(
    star: Annotated[Path, typer.Option("--in", help="movies.star (RELION 3.1 data_optics + data_movies, or 3.0).")],
    options: MotionJobOptions = None,
    preprocess: PreprocessParams = None,
    params: MotionParams = None,
    run: MicrographJobOptions = None,
) -> None:
    """Align the frames of each movie (global, and local with --patches) and write the micrographs.

    Writes Movies/<name>.mrc (dose-weighted sum), Movies/<name>_noDW.mrc, Movies/<name>.star (RELION MotionCorr).

    Also micrographs.star (RELION 3.1), rejected.star, drift.png, report.html and job.json; reruns skip movies done.

    Examples:

      cryolens motion --in sim/movies.star --out mc --dose-per-frame 1.25

      cryolens motion --in movies.star --out mc --gain gain.mrc --gain-rot 1 --gain-flip 2 --patches 5x5 --bin 2

      cryolens motion --in movies.star --out mc --max-travel 50 --backend tcp://head:8786
    """
    from cryolens.jobs.motion import run_motion

    def body():
        job_options = dataclasses.replace(options, preprocess=preprocess)
        dev = device_option(run.device)
        with job_target("motion", run) as target, progress_bar("movies", quiet=run.quiet) as cb:
            job = run_motion(star, target.out, params, job_options, backend=run.backend_spec(), workers=run.j, device=dev, progress=cb,
                             observer=target.observer)
        r = job.results
        console.print(f"{r['n_movies']} movies ({r['n_skipped']} done before), {r['n_rejected']} rejected, "
                      f"mean total motion [bold]{r['mean_total_motion_A']:.2f} Å[/] ({r['mean_total_motion_px']:.2f} movie px, "
                      f"the unit of rlnAccumMotionTotal) -> "
                      f"{target.out / 'micrographs.star'}")

    run_guarded(body)
