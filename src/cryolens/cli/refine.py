"""``cryolens refine``: gold-standard 3D auto-refinement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, err_console,
                                 job_target, run_guarded)


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


def refine(
    star: Annotated[Path, typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+), CTF columns optional.")],
    ref: Annotated[Path, typer.Option("--ref", help="Starting reference map (MRC); resampled to the particles' grid.")],
    sym: Annotated[str, typer.Option("--sym", help="Point group: C1, Cn, Dn, T, O, I (RELION orientation).")] = "C1",
    ini_high: Annotated[float, typer.Option("--ini-high", help="Low-pass the reference to this resolution (Å).")] = 40.0,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="Soft reference mask (0..1) instead of the automatic one.")] = None,
    particle_diameter: Annotated[Optional[float], typer.Option("--particle-diameter", help="Mask diameter (Å); default 90% of the box.")] = None,
    max_iter: Annotated[int, typer.Option("--max-iter", help="Iteration cap (convergence usually stops earlier).")] = 12,
    offset_range: Annotated[float, typer.Option("--offset-range", help="Global translational search range (px).")] = 5.0,
    healpix_order: Annotated[int, typer.Option("--healpix-order", help="Global search grid order (2 = 15°).")] = 2,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF even when defocus values are present.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per search batch (bounds memory).")] = 256,
    seed: Annotated[int, typer.Option(help="Seed for half-set assignment when rlnRandomSubset is absent.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Refine poses with independent half sets (gold standard) and reconstruct the map.

    Writes half1.mrc, half2.mrc, map.mrc, particles.star, fsc.star, iterations.star, angdist.png,
    report.html, job.json.

    Example:

      cryolens refine --in sim/particles.star --ref start.mrc --ini-high 40 --sym C1 --out ref1
    """
    from cryolens.jobs.refine import run_refine
    from cryolens.refine import RefineParams

    params = RefineParams(symmetry=sym, ini_high=ini_high, particle_diameter=particle_diameter,
                          max_iterations=max_iter, offset_range=offset_range, global_order=healpix_order,
                          ctf=not no_ctf, batch_size=batch_size, seed=seed)

    def body():
        dev = device_option(device)
        with job_target("refine", out, project) as target, iteration_progress(quiet=quiet) as cb:
            job = run_refine(star, ref, target.out, params, mask=mask, device=dev, progress=cb,
                             observer=target.observer)
        r = job.results
        console.print(f"resolution (half-map FSC = 0.143): [bold]{r['resolution_0143_A']:.2f} Å[/] after "
                      f"{r['iterations']} iterations ({'converged' if r['converged'] else 'iteration cap'}; "
                      f"{r['n_particles_half1']} + {r['n_particles_half2']} particles) -> {target.out / 'map.mrc'}")

    run_guarded(body)
