"""``cryolens reconstruct``: gold-standard half maps and map from particles with poses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryolens.cli.common import (JobOptions, console, device_option,
                                 job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.reconstruct.params import ReconstructParams


@declare(run=JobOptions, params=ReconstructParams, outputs=("particles", "half1", "half2", "map", "fsc"))
def reconstruct(
    star: Annotated[Path, typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+) with poses.")],
    params: ReconstructParams = None,
    seed: Annotated[int, typer.Option(help="Seed for half-set assignment when rlnRandomSubset is absent.")] = 0,
    run: JobOptions = None,
) -> None:
    """Reconstruct half maps (rlnRandomSubset; assigned at random and written back when absent) and the map.

    Writes half1.mrc, half2.mrc, map.mrc, fsc.star, fsc.png, particles.star, report.html, job.json.

    Example:

      cryolens reconstruct --in sim/particles.star --out rec --sym C1
    """
    from cryolens.jobs.reconstruct import run_reconstruct

    def body():
        dev = device_option(run.device)
        with job_target("reconstruct", run) as target, \
                progress_bar("inserting", quiet=run.quiet) as cb:
            job = run_reconstruct(star, target.out, params, seed=seed, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"resolution (half-map FSC = 0.143): [bold]{r['resolution_0143_A']:.2f} Å[/]  "
                      f"({r['n_particles_half1']} + {r['n_particles_half2']} particles) -> {target.out / 'map.mrc'}")

    run_guarded(body)
