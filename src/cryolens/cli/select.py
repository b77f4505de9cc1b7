"""``cryolens select micrographs|particles|classes``: keep rows that pass rules, a class list, a CTF consensus, or
the particles of 2D classes chosen by list or by automatic score."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import JobOptions, console, job_target, print_warnings, run_guarded
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.select.class_params import ClassSelectParams
from cryolens.select.params import SelectParams

app = typer.Typer(help="Select micrographs or particles by rules (thresholds, classes, CTF consensus, image "
                       "z-scores), or 2D classes by list or automatic score.",
                  no_args_is_help=True)

CONSENSUS_HELP = ("A second STAR of the same items (another CTF estimation): keep only rows where both agree "
                  "(paired by rlnMicrographName / rlnImageName, or by file name).")
OUTPUTS = {"micrographs": ("micrographs", "rejected"), "particles": ("particles", "rejected"),
           "classes": ("particles", "rejected", "averages", "classes", "scores")}


def _select(kind: str, star: Path, params: SelectParams, consensus: Optional[Path], run: JobOptions) -> None:
    from cryolens.jobs.select import run_select

    def body():
        with job_target(f"select_{kind}", run) as target:
            job = run_select(kind, star, target.out, params, consensus=consensus, observer=target.observer)
        r = job.results
        if not run.quiet:
            for criterion, n in r["criteria"].items():
                console.print(f"  {criterion}: {n['passed']} passed, {n['failed']} failed", highlight=False)
        console.print(f"kept [bold]{r['n_kept']}[/] of {r['n_in']} {kind} -> {literal(target.out / (kind + '.star'))} "
                      f"(rejected: {literal(target.out / 'rejected.star')})")

    run_guarded(body)


@app.command("micrographs")
@declare(run=JobOptions, omit=("device", "max_zscore"), params=SelectParams, outputs=OUTPUTS["micrographs"])
def micrographs(
    star: Annotated[Path, typer.Option("--in", help="micrographs.star (e.g. from CTF estimation).")],
    params: SelectParams = None,
    consensus: Annotated[Optional[Path], typer.Option("--consensus", help=CONSENSUS_HELP)] = None,
    run: JobOptions = None,
) -> None:
    """Keep micrographs that pass every rule; write micrographs.star (kept) and rejected.star.

    Examples:

      cryolens select micrographs --in Ctf/job004/micrographs_ctf.star --where "rlnCtfMaxResolution < 5" --where "rlnCtfFigureOfMerit >= 0.1"

      cryolens select micrographs --in ctf_a/micrographs.star --consensus ctf_b/micrographs.star --tolerance-defocus 0.05 --tolerance-angle 15 --out agreed
    """
    _select("micrographs", star, params, consensus, run)


@app.command("particles")
@declare(run=JobOptions, omit=("device",), params=SelectParams, outputs=OUTPUTS["particles"])
def particles(
    star: Annotated[Path, typer.Option("--in", help="particles.star (e.g. from 2D classification).")],
    params: SelectParams = None,
    consensus: Annotated[Optional[Path], typer.Option("--consensus", help=CONSENSUS_HELP)] = None,
    run: JobOptions = None,
) -> None:
    """Keep particles that pass every rule and class list; write particles.star (kept) and rejected.star.

    Examples:

      cryolens select particles --in Class2D/job007/particles.star --class 1,3,4

      cryolens select particles --in Refine3D/job010/particles.star --where "rlnMaxValueProbDistribution > 0.2"

      cryolens select particles --in Extract/job005/particles.star --max-zscore 3
    """
    _select("particles", star, params, consensus, run)


@app.command("classes")
@declare(run=JobOptions, omit=("device",), params=ClassSelectParams, outputs=OUTPUTS["classes"])
def classes(
    folder: Annotated[Path, typer.Option("--in", help="A 2D classification folder (classes.mrcs, classes.star, "
                                                      "particles.star).")],
    params: ClassSelectParams = None,
    run: JobOptions = None,
) -> None:
    """Keep the particles of chosen 2D classes; write particles.star, rejected.star, the kept averages (classes.mrcs + classes.star, for pick --templates), class_scores.star and classes.png.

    --auto scores each class from 0 to 1 (contrast, centring, concentration in the particle circle, in-plane structure, estimated resolution, population) and keeps those reaching --min-score.

    Examples:

      cryolens select classes --in Class2D/job008 --class 1,3,4

      cryolens select classes --in Class2D/job008 --auto --min-score 0.4 --out Select/good
    """
    from cryolens.jobs.select_classes import run_select_classes

    def body():
        with job_target("select_classes", run) as target:
            job = run_select_classes(folder, target.out, params, observer=target.observer)
        r = job.results
        print_warnings(r.get("warnings", []))
        if not run.quiet:
            for c, n in r["counts"].items():
                mark = "kept" if int(c) in r["kept_classes"] else "dropped"
                console.print(f"  class {c}: {n} particles, {mark}", highlight=False)
        console.print(f"kept [bold]{r['n_kept']}[/] of {r['n_in']} particles in {len(r['kept_classes'])} of "
                      f"{r['n_classes']} classes -> {literal(target.out / 'particles.star')} (averages: "
                      f"{literal(target.out / 'classes.mrcs')})")

    run_guarded(body)
