"""``cryolens export cryosparc``: particles for other programs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryolens.cli.common import JobOptions, console, job_target, run_guarded
from cryolens.cli.declare import declare

app = typer.Typer(help="Export particles for other programs (cryoSPARC).", no_args_is_help=True)


@app.command("cryosparc")
@declare(run=JobOptions, omit=("device",), outputs=("particles_cs", "particles"))
def cryosparc(
    star: Annotated[Path, typer.Option("--in", help="Particle STAR file (RELION 3.1, or 3.0 with its optics).")],
    run: JobOptions = None,
) -> None:
    """Export particles for cryoSPARC: particles.cs (blob, ctf and, with poses, alignments3D fields),
    stacks/ (a link per particle stack) and particles.star naming the links.

    Load particles.cs with cryosparc-tools (Dataset.load), or run cryoSPARC's Import Particle Stack with
    particles.star as Particle meta path and stacks/ as Particle data path. Poses become rotation vectors,
    shifts pixels, defocus angles radians; optics groups become exposure groups.

    Example:

      cryolens export cryosparc --in Refine/job012/particles.star --out to_cryosparc
    """
    from cryolens.jobs.export_cryosparc import check_cryosparc_export, run_export_cryosparc

    def body():
        checked = check_cryosparc_export(star)  # before a job folder is taken
        with job_target("export_cryosparc", run) as target:
            job = run_export_cryosparc(star, target.out, checked=checked, observer=target.observer)
        r = job.results
        console.print(f"{r['n_particles']} particles ({r['n_stacks']} stacks, box {r['box']}, "
                      f"{'with' if r['poses'] else 'no'} poses) -> {target.folder / 'particles.cs'}")

    run_guarded(body)
