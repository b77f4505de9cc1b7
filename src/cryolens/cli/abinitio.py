"""``cryolens abinitio``: initial 3D maps from particles without poses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from cryolens.abinitio.params import AbinitioParams
from cryolens.cli.common import JobOptions, console, device_option, err_console, job_target, run_guarded
from cryolens.cli.declare import declare


@contextmanager
def stage_progress(*, quiet: bool) -> Iterator[Callable[[str, int, int, float], None]]:
    """One progress bar per stage (the mini-batch iterations, then each final pass)."""
    if quiet:
        yield lambda stage, done, total, res: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as prog:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int, res: float) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=total)
            prog.update(tasks[stage], completed=done, description=f"{stage} · {res:5.1f} Å")

        yield update


@declare(run=JobOptions, params=AbinitioParams,
         outputs=("map", "particles", "fsc", "iterations", r"class\d{3}"))
def abinitio(
    star: Annotated[Path, typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+); poses are not needed "
                                                    "(ignored), CTF columns optional.")],
    params: AbinitioParams = None,
    run: JobOptions = None,
) -> None:
    """Initial maps from particles without poses: stochastic EM from random maps, resolution annealed.

    Writes map.mrc (largest class; class001.mrc... for --classes > 1), particles.star (class, poses),
    fsc.star, iterations.star, convergence.png, slices.png, projections.png, fsc.png, report.html,
    job.json. The map's hand is arbitrary: compare both hands (cryolens align-maps).

    Example:

      cryolens abinitio --in select/particles.star --out abinitio --classes 2 --sym C1
    """
    from cryolens.jobs.abinitio import run_abinitio

    def body():
        dev = device_option(run.device)
        with job_target("abinitio", run) as target, stage_progress(quiet=run.quiet) as cb:
            job = run_abinitio(star, target.out, params, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"ab initio: class {r['best_class']} of {len(r['class_sizes'])} "
                      f"({r['class_sizes'][r['best_class'] - 1]} of {r['n_particles']} particles), half-map FSC "
                      f"0.143 at {r['resolution_0143_A']:.1f} Å -> {target.out / 'map.mrc'}")

    run_guarded(body)
