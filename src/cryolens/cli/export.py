"""``cryolens export cryosparc`` and ``cryolens export coords``: particles and picks for other programs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import JobOptions, console, job_target, run_guarded
from cryolens.cli.declare import declare
from cryolens.jobs.coord_options import CoordinateExport

app = typer.Typer(help="Export particles (cryoSPARC) or picks (Topaz, cisTEM, crYOLO) for other programs.",
                  no_args_is_help=True)


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


@app.command("coords")
@declare(run=JobOptions, cfmt=CoordinateExport, omit=("device",), outputs=("coords_topaz", "coords_cistem",
                                                                          "coords_cbox", "coords_cryolo"))
def coords(
    picks: Annotated[Path, typer.Option("--in", help="Picks: coords.star of `cryolens pick`, a coordinate index "
                                                     "(autopick.star, `import coords`' coords.star) or particles.star.")],
    micrographs: Annotated[Optional[Path], typer.Option(
        "--micrographs", help="micrographs.star the picks belong to (pixel sizes; needed by --format cistem).")] = None,
    cfmt: CoordinateExport = None,
    run: JobOptions = None,
) -> None:
    """Export picks for Topaz (picks_topaz.txt), cisTEM (picks_cistem.txt, Å), crYOLO (CBOX/<stem>.cbox or
    STAR/<stem>.star); `cryolens import coords` reads each back.

    Examples:

      cryolens export coords --in pick/coords.star --format topaz --scale 0.125 --out to_topaz

      cryolens export coords --in pick/coords.star --format cistem --micrographs ctf/micrographs_ctf.star --out to_cistem

      cryolens export coords --in pick/coords.star --format cbox --box 180 --out to_cryolo
    """
    from cryolens.jobs.export_coords import run_export_coords

    def body():
        with job_target("export_coords", run) as target:
            job = run_export_coords(picks, target.out, fmt=cfmt.format, micrographs=micrographs, box=cfmt.box,
                                    scale=cfmt.scale, observer=target.observer)
        r = job.results
        console.print(f"{r['n_picks']} picks of {r['n_micrographs']} micrographs ({r['format']}) -> "
                      f"{target.folder / r['output']}", highlight=False)

    run_guarded(body)
