"""``cryolens refine``: gold-standard 3D auto-refinement."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (ParticleJobOptions, console, device_option, iteration_progress, job_target,
                                 run_guarded)
from cryolens.cli.declare import declare
from cryolens.cli.resume import CONTINUE_HELP, continue_target, continued_job
from cryolens.errors import InputError
from cryolens.refine.params import RefineParams


@declare(run=ParticleJobOptions, params=RefineParams, outputs=("particles", "half1", "half2", "map", "fsc", "iterations"))
def refine(
    star: Annotated[Optional[Path], typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+), CTF columns "
                                                              "optional. Required unless --continue.")] = None,
    ref: Annotated[Optional[Path], typer.Option("--ref", help="Starting reference map (MRC); resampled to the "
                                                             "particles' grid. Required unless --continue.")] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="Soft reference mask (0..1) instead of the automatic one.")] = None,
    continue_: Annotated[Optional[Path], typer.Option("--continue", metavar="JOBDIR", help=CONTINUE_HELP)] = None,
    params: RefineParams = None,
    run: ParticleJobOptions = None,
    given: dict = None,
) -> None:
    """Refine poses with independent half sets (gold standard) and reconstruct the map.

    Writes half1.mrc, half2.mrc, map.mrc, particles.star, fsc.star, iterations.star, angdist.png,
    report.html, job.json; after each iteration run_itNNN_half1/2.mrc, run_itNNN_data.star and the
    state that --continue resumes from (the last two iterations are kept).

    Example:

      cryolens refine --in sim/particles.star --ref start.mrc --ini-high 40 --sym C1 --out ref1

      cryolens refine --continue ref1   # after a crash or a wall-time limit

      cryolens refine --in particles.star --ref start.mrc --profile gpu --out ref2   # on a cluster
    """
    from cryolens.jobs.refine import run_refine

    def body():
        if continue_ is not None:
            typed = {"particles": ("--in", star), "reference": ("--ref", ref), "mask": ("--mask", mask)}
            c = continued_job("refine", continue_, params=params, given=given, run=run, inputs=typed)
            if c.finished:
                console.print(c.message, highlight=False)
                return
            dev = c.torch_device(run)
            with continue_target("refine", c.folder, run.project) as target, \
                    iteration_progress(quiet=run.quiet) as cb:
                job = run_refine(c.inputs["particles"], c.inputs["reference"], target.out, c.params,
                                 mask=c.inputs.get("mask"), device=dev, progress=cb, observer=target.observer,
                                 resume=True, backend=run.backend_spec(),
                                 project_dir=getattr(target.project, "root", None))
        else:
            for flag, value in (("--in", star), ("--ref", ref)):
                if value is None:
                    raise InputError(f"{flag} is required to start a refinement; give it, or continue an "
                                     "interrupted job with --continue JOBDIR.")
            dev = device_option(run.device)
            with job_target("refine", run) as target, iteration_progress(quiet=run.quiet) as cb:
                job = run_refine(star, ref, target.out, params, mask=mask, device=dev, progress=cb,
                                 observer=target.observer, backend=run.backend_spec(),
                                 project_dir=getattr(target.project, "root", None))
        r = job.results
        console.print(f"resolution (half-map FSC = 0.143): [bold]{r['resolution_0143_A']:.2f} Å[/] after "
                      f"{r['iterations']} iterations ({'converged' if r['converged'] else 'iteration cap'}; "
                      f"{r['n_particles_half1']} + {r['n_particles_half2']} particles) -> {target.out / 'map.mrc'}")

    run_guarded(body)
