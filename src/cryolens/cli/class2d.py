"""``cryolens class2d``: maximum-likelihood 2D classification."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.class2d.params import Class2DParams
from cryolens.cli.common import ParticleJobOptions, console, device_option, job_target, print_warnings, run_guarded
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.cli.common import iteration_progress
from cryolens.cli.resume import CONTINUE_HELP, continue_target, continued_job
from cryolens.errors import InputError


@declare(run=ParticleJobOptions, params=Class2DParams, outputs=("classes", "classes_stack", "particles", "iterations"))
def class2d(
    star: Annotated[Optional[Path], typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+); CTF columns "
                                                              "optional, images not phase-flipped. Required unless "
                                                              "--continue.")] = None,
    continue_: Annotated[Optional[Path], typer.Option("--continue", metavar="JOBDIR", help=CONTINUE_HELP)] = None,
    params: Class2DParams = None,
    run: ParticleJobOptions = None,
    given: dict = None,
) -> None:
    """Classify particles into 2D class averages (maximum likelihood over classes, in-plane angles and shifts).

    Writes classes.mrcs, classes.star, particles.star, iterations.star, classes.png, convergence.png,
    report.html, job.json; after each iteration run_itNNN_classes.mrcs, run_itNNN_data.star and the
    state that --continue resumes from (the last two iterations are kept).

    Examples:

      cryolens class2d --in Extract/job005/particles.star --classes 50 --particle-diameter 200 --out Class2D/job006

      cryolens class2d --in sim/particles.star --classes 20 --iter 10 --particle-diameter 240 --device cuda --out c2d

      cryolens class2d --continue c2d   # after a crash or a wall-time limit

      cryolens class2d --in particles.star --classes 100 --profile gpu --out c2d   # on a cluster
    """
    from cryolens.jobs.class2d import run_class2d

    def body():
        if continue_ is not None:
            c = continued_job("class2d", continue_, params=params, given=given, run=run,
                              inputs={"particles": ("--in", star)})
            if c.finished:
                console.print(c.message, highlight=False)
                return
            dev = c.torch_device(run)
            with continue_target("class2d", c.folder, run.project) as target, \
                    iteration_progress(quiet=run.quiet) as cb:
                job = run_class2d(c.inputs["particles"], target.out, c.params, device=dev, progress=cb,
                                  observer=target.observer, resume=True, backend=run.backend_spec(),
                                  project_dir=getattr(target.project, "root", None))
        else:
            if star is None:
                raise InputError("--in is required to start a 2D classification; give it, or continue an "
                                 "interrupted job with --continue JOBDIR.")
            dev = device_option(run.device)
            with job_target("class2d", run) as target, iteration_progress(quiet=run.quiet) as cb:
                job = run_class2d(star, target.out, params, device=dev, progress=cb, observer=target.observer,
                                  backend=run.backend_spec(), project_dir=getattr(target.project, "root", None))
        r = job.results
        print_warnings(r.get("warnings", []))
        console.print(f"{r['populated_classes']} of {r['classes']} classes populated by {r['n_particles']} particles "
                      f"after {r['iterations']} iterations (best class [bold]{r['best_class_resolution_A']:.1f} Å[/], "
                      f"largest #{r['largest_class']} with {r['largest_class_particles']}) -> "
                      f"{literal(target.out / 'classes.star')}")

    run_guarded(body)
