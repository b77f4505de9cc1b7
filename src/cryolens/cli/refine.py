"""``cryolens refine``: gold-standard 3D auto-refinement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (JobOptions, console, device_option,
                                 err_console, job_target, run_guarded)
from cryolens.cli.declare import declare
from cryolens.refine.params import RefineParams


@contextmanager
def iteration_progress(*, quiet: bool) -> Iterator[Callable[[int, int, int, float], None]]:
    """One progress bar per iteration, labelled with the iteration and the resolution it aligns to."""
    if quiet:
        yield lambda it, done, total, res: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as prog:
        tasks: dict[int, int] = {}

        def update(it: int, done: int, total: int, res: float) -> None:
            if it not in tasks:
                tasks[it] = prog.add_task(f"iteration {it:2d} · aligning to {res:5.1f} Å", total=total)
            prog.update(tasks[it], completed=done)

        yield update


@declare(run=JobOptions, params=RefineParams, outputs=("particles", "half1", "half2", "map", "fsc", "iterations"))
def refine(
    star: Annotated[Path, typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+), CTF columns optional.")],
    ref: Annotated[Path, typer.Option("--ref", help="Starting reference map (MRC); resampled to the particles' grid.")],
    mask: Annotated[Optional[Path], typer.Option("--mask", help="Soft reference mask (0..1) instead of the automatic one.")] = None,
    params: RefineParams = None,
    run: JobOptions = None,
) -> None:
    """Refine poses with independent half sets (gold standard) and reconstruct the map.

    Writes half1.mrc, half2.mrc, map.mrc, particles.star, fsc.star, iterations.star, angdist.png,
    report.html, job.json.

    Example:

      cryolens refine --in sim/particles.star --ref start.mrc --ini-high 40 --sym C1 --out ref1
    """
    from cryolens.jobs.refine import run_refine

    def body():
        dev = device_option(run.device)
        with job_target("refine", run.out, run.project, overwrite=run.overwrite) as target, iteration_progress(quiet=run.quiet) as cb:
            job = run_refine(star, ref, target.out, params, mask=mask, device=dev, progress=cb,
                             observer=target.observer)
        r = job.results
        console.print(f"resolution (half-map FSC = 0.143): [bold]{r['resolution_0143_A']:.2f} Å[/] after "
                      f"{r['iterations']} iterations ({'converged' if r['converged'] else 'iteration cap'}; "
                      f"{r['n_particles_half1']} + {r['n_particles_half2']} particles) -> {target.out / 'map.mrc'}")

    run_guarded(body)
