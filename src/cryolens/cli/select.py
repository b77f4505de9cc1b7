"""``cryolens select micrographs|particles``: keep the rows that pass threshold rules, a class list, a CTF consensus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import OUT_HELP, PROJECT_HELP, QUIET_HELP, console, job_target, run_guarded

app = typer.Typer(help="Select micrographs or particles by rules (thresholds, classes, CTF consensus).",
                  no_args_is_help=True)

WHERE_HELP = ("Rule 'COLUMN OP NUMBER' with OP one of < <= > >= == != (repeatable; all must hold), "
              "e.g. 'rlnCtfMaxResolution < 5'. Optics columns may be used too.")
CLASS_HELP = "Keep these classes (rlnClassNumber), comma-separated, e.g. 1,3."
CONSENSUS_HELP = ("A second STAR of the same items (another CTF estimation): keep only rows where both agree "
                  "(paired by rlnMicrographName / rlnImageName, or by file name).")
TOL_DEFOCUS_HELP = "Consensus: largest difference of mean defocus, as a fraction of the mean (0.05 = 5 %)."
TOL_ANGLE_HELP = "Consensus: largest difference of astigmatism angle (degrees), compared where both are astigmatic."
ASTIG_HELP = "Consensus: compare angles only where both |defocusU - defocusV| exceed this (Å)."


def _select(kind: str, star: Path, where: Optional[list[str]], classes: Optional[str], consensus: Optional[Path],
            tolerance_defocus: float, tolerance_angle: Optional[float], astigmatism_threshold: float,
            out: Optional[Path], project: Optional[Path], quiet: bool) -> None:
    from cryolens.errors import InputError
    from cryolens.jobs.select import run_select
    from cryolens.select import SelectParams, parse_classes

    def body():
        try:
            params = SelectParams(where=tuple(where or ()), classes=parse_classes(classes),
                                  tolerance_defocus=tolerance_defocus, tolerance_angle=tolerance_angle,
                                  astigmatism_threshold=astigmatism_threshold)
        except ValueError as e:
            raise InputError(f"select {kind}: {e}.") from None
        with job_target(f"select_{kind}", out, project) as target:
            job = run_select(kind, star, target.out, params, consensus=consensus, observer=target.observer)
        r = job.results
        if not quiet:
            for criterion, n in r["criteria"].items():
                console.print(f"  {criterion}: {n['passed']} passed, {n['failed']} failed", highlight=False)
        console.print(f"kept [bold]{r['n_kept']}[/] of {r['n_in']} {kind} -> {target.out / (kind + '.star')} "
                      f"(rejected: {target.out / 'rejected.star'})")

    run_guarded(body)


@app.command("micrographs")
def micrographs(
    star: Annotated[Path, typer.Option("--in", help="micrographs.star (e.g. from CTF estimation).")],
    where: Annotated[Optional[list[str]], typer.Option("--where", help=WHERE_HELP)] = None,
    classes: Annotated[Optional[str], typer.Option("--class", help=CLASS_HELP)] = None,
    consensus: Annotated[Optional[Path], typer.Option("--consensus", help=CONSENSUS_HELP)] = None,
    tolerance_defocus: Annotated[float, typer.Option(help=TOL_DEFOCUS_HELP)] = 0.05,
    tolerance_angle: Annotated[Optional[float], typer.Option(help=TOL_ANGLE_HELP)] = None,
    astigmatism_threshold: Annotated[float, typer.Option(help=ASTIG_HELP)] = 300.0,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Keep micrographs that pass every rule; write micrographs.star (kept) and rejected.star.

    Examples:

      cryolens select micrographs --in Ctf/job004/micrographs_ctf.star --where "rlnCtfMaxResolution < 5" --where "rlnCtfFigureOfMerit >= 0.1"

      cryolens select micrographs --in ctf_a/micrographs.star --consensus ctf_b/micrographs.star --tolerance-defocus 0.05 --tolerance-angle 15 --out agreed
    """
    _select("micrographs", star, where, classes, consensus, tolerance_defocus, tolerance_angle,
            astigmatism_threshold, out, project, quiet)


@app.command("particles")
def particles(
    star: Annotated[Path, typer.Option("--in", help="particles.star (e.g. from 2D classification).")],
    where: Annotated[Optional[list[str]], typer.Option("--where", help=WHERE_HELP)] = None,
    classes: Annotated[Optional[str], typer.Option("--class", help=CLASS_HELP)] = None,
    consensus: Annotated[Optional[Path], typer.Option("--consensus", help=CONSENSUS_HELP)] = None,
    tolerance_defocus: Annotated[float, typer.Option(help=TOL_DEFOCUS_HELP)] = 0.05,
    tolerance_angle: Annotated[Optional[float], typer.Option(help=TOL_ANGLE_HELP)] = None,
    astigmatism_threshold: Annotated[float, typer.Option(help=ASTIG_HELP)] = 300.0,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Keep particles that pass every rule and class list; write particles.star (kept) and rejected.star.

    Examples:

      cryolens select particles --in Class2D/job007/particles.star --class 1,3,4

      cryolens select particles --in Refine3D/job010/particles.star --where "rlnMaxValueProbDistribution > 0.2"
    """
    _select("particles", star, where, classes, consensus, tolerance_defocus, tolerance_angle,
            astigmatism_threshold, out, project, quiet)
