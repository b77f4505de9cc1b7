"""``cryolens demo``: the tutorial workflow, movies in, validated map out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cryolens.cli.common import QUIET_HELP, console, run_guarded
from cryolens.cli.markup import literal
from cryolens.cli.run import SetOption


def demo(
    out: Annotated[Path, typer.Option("--out", help="Project folder of the demo; created when missing, resumed when "
                                                    "it holds an unfinished demo.")] = Path("demo"),
    quick: Annotated[bool, typer.Option("--quick", help="The same chain on 3 short movies at 3.5 Å/px (about 120 "
                                                        "particles, fewer classes and iterations): a few minutes, lower resolution.")] = False,
    align: Annotated[bool, typer.Option("--align/--no-align", help="Align the final map onto the simulator's truth "
                                                                   "(both hands) and report their FSC 0.5.")] = True,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Movies in, map out: simulate the tutorial's movies of apoferritin and run the tutorial workflow on them.

    Steps (cryolens/workflows/tutorial.toml, also examples/tutorial.toml): simulate movies, import movies, motion, ctf,
    select micrographs, pick, extract, class2d, select classes --auto, abinitio, extract (unbinned, recentred),
    refine, postprocess. The pipeline sees only the movies, gain, defects and acquisition parameters; the
    simulator's truth is used afterwards, to score the map. Writes OUT/summary.json (map, half maps, truth map,
    gold-standard resolution, FSC with the truth, wall time, steps) and the project report OUT/report.html.
    Rerunning skips the finished steps, so an interrupted demo resumes where it stopped.

    Examples:

      cryolens demo

      cryolens demo --out /tmp/demo --quick

      cryolens demo --out /tmp/demo2 --quick --set movies.seed=7
    """
    from cryolens.cli.run import execute_workflow, stage_catalog
    from cryolens.project.db import open_project
    from cryolens.project.demo import QUICK_SETTINGS, TUTORIAL_WORKFLOW, write_summary
    from cryolens.project.workflow import load_workflow, merge_settings, parse_settings
    from cryolens.report.project_report import write_project_report

    def body():
        t0 = time.time()
        settings = merge_settings(QUICK_SETTINGS if quick else {}, parse_settings(set_, TUTORIAL_WORKFLOW))
        wf = load_workflow(TUTORIAL_WORKFLOW, stage_catalog(), project=out, settings=settings)
        execute_workflow(wf, quiet=quiet)
        summary = write_summary(wf, wall_s=time.time() - t0, align=align)
        report = write_project_report(open_project(wf.project))
        table = Table("step", "stage", "job", "s", "went in → came out", title="cryolens demo")
        for r in summary["steps"]:
            said = r["summary"].split(" -> ")[0]  # what went in and came out, without the output path
            table.add_row(literal(r["step"]), r["stage"], literal(r["job"]),
                          "" if r["seconds"] is None else f"{r['seconds']:.0f}", literal(said))
        if not quiet:
            console.print(table)
        truth = (f"; FSC 0.5 with the truth {summary['truth_fsc05_A']:.1f} Å"
                 f"{' (other hand)' if summary.get('hand_flipped') else ''}") if "truth_fsc05_A" in summary else ""
        console.print(f"map {wf.project / summary['map']}: {summary['resolution_A']:.2f} Å (gold-standard FSC 0.143)"
                      f"{truth}; {summary['wall_s']:.0f} s; report {report}", highlight=False, markup=False)

    run_guarded(body)
