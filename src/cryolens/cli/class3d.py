"""``cryolens class3d``: maximum-likelihood 3D classification."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.class3d.params import Class3DParams
from cryolens.cli.common import ParticleJobOptions, console, device_option, job_target, print_warnings, run_guarded
from cryolens.cli.declare import declare
from cryolens.cli.common import iteration_progress


@declare(run=ParticleJobOptions, params=Class3DParams, outputs=("particles", "classes", "iterations", r"class\d{3}(_unfil)?"))
def class3d(
    star: Annotated[Path, typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+), with the consensus "
                                                    "poses for --skip-align and local searches; CTF columns "
                                                    "optional.")],
    ref: Annotated[list[Path], typer.Option("--ref", metavar="MAP", help="Starting map (MRC), resampled to the particles' grid; "
                                                          "one (perturbed per class) or one per class "
                                                          "(repeat --ref).")],
    mask: Annotated[Optional[Path], typer.Option("--mask", help="Soft mask (0..1) on the references: focused "
                                                                "classification of the masked region.")] = None,
    params: Class3DParams = None,
    run: ParticleJobOptions = None,
) -> None:
    """Classify particles into 3D classes (maximum likelihood over classes and poses, RELION-style).

    Writes class001.mrc … (filtered) and class001_unfil.mrc …, particles.star (rlnClassNumber,
    rlnMaxValueProbDistribution), classes.star, iterations.star, class_sizes.png, class_slices.png,
    fsc.png, report.html, job.json. `cryolens select particles --class N` takes particles.star.

    Examples:

      cryolens class3d --in Refine3D/job010/particles.star --ref Refine3D/job010/map.mrc --classes 4 --out Class3D/job011

      cryolens class3d --in refined.star --ref consensus.mrc --classes 2 --skip-align --ini-high 30 --iter 25 --out c3d

      cryolens class3d --in refined.star --ref a.mrc --ref b.mrc --classes 2 --mask lobe_mask.mrc --out focused
    """
    from cryolens.jobs.class3d import run_class3d

    def body():
        dev = device_option(run.device)
        with job_target("class3d", run) as target, iteration_progress(quiet=run.quiet) as cb:
            job = run_class3d(star, [str(r) for r in ref], target.out, params, mask=mask, device=dev, progress=cb,
                              observer=target.observer, backend=run.backend_spec(),
                              project_dir=getattr(target.project, "root", None))
        r = job.results
        print_warnings(r["warnings"])
        sizes = ", ".join(f"#{k + 1}: {s}" for k, s in enumerate(r["class_sizes"]))
        console.print(f"{r['classes']} classes from {r['n_particles']} particles after {r['iterations']} iterations "
                      f"({r['search']}): {sizes} -> {target.out / 'particles.star'}", highlight=False)

    run_guarded(body)
