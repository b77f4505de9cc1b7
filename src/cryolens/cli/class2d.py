"""``cryolens class2d``: maximum-likelihood 2D classification."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryolens.class2d.params import Class2DParams
from cryolens.cli.common import JobOptions, console, device_option, job_target, run_guarded
from cryolens.cli.declare import declare
from cryolens.cli.refine import iteration_progress


@declare(run=JobOptions, params=Class2DParams, outputs=("classes", "classes_stack", "particles", "iterations"))
def class2d(
    star: Annotated[Path, typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+); CTF columns optional, "
                                                    "images not phase-flipped.")],
    params: Class2DParams = None,
    run: JobOptions = None,
) -> None:
    """Classify particles into 2D class averages (maximum likelihood over classes, in-plane angles and shifts).

    Writes classes.mrcs, classes.star, particles.star, iterations.star, classes.png, convergence.png,
    report.html, job.json.

    Examples:

      cryolens class2d --in Extract/job005/particles.star --classes 50 --particle-diameter 200 --out Class2D/job006

      cryolens class2d --in sim/particles.star --classes 20 --iter 10 --particle-diameter 240 --device cuda --out c2d
    """
    from cryolens.jobs.class2d import run_class2d

    def body():
        dev = device_option(run.device)
        with job_target("class2d", run) as target, iteration_progress(quiet=run.quiet) as cb:
            job = run_class2d(star, target.out, params, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"{r['populated_classes']} of {r['classes']} classes populated by {r['n_particles']} particles "
                      f"after {r['iterations']} iterations (best class [bold]{r['best_class_resolution_A']:.1f} Å[/], "
                      f"largest #{r['largest_class']} with {r['largest_class_particles']}) -> "
                      f"{target.out / 'classes.star'}")

    run_guarded(body)
