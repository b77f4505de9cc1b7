"""``cryolens abinitio``: initial 3D maps from particles without poses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.abinitio.params import AbinitioParams
from cryolens.cli.common import (BackendJobOptions, console, device_option, job_target, progress_bars,
                                 run_guarded)
from cryolens.cli.declare import declare
from cryolens.cli.resume import CONTINUE_HELP, continue_target, continued_job
from cryolens.errors import InputError
from cryolens.params import option


@dataclass
class AbinitioJobOptions(BackendJobOptions):
    """The job options of ``cryolens abinitio``: its pose searches can run on a compute backend."""

    backend: Optional[str] = option(
        None, help="Compute backend for the pose searches, in chunks of particles whose image transforms are sent "
                   "from this process: threads[:N] (N chunks at once in this process), local[:N] (worker "
                   "processes), inprocess, tcp://scheduler:port (Dask) or profile:NAME; default: this process")


@contextmanager
def stage_progress(*, quiet: bool) -> Iterator[Callable[[str, int, int, float], None]]:
    """One progress bar per stage (the mini-batch iterations, then each final pass) with its resolution (Å)."""
    with progress_bars(quiet=quiet) as update:
        yield lambda stage, done, total, res: update(stage, f"{stage} · {res:5.1f} Å", done, total)


@declare(run=AbinitioJobOptions, params=AbinitioParams,
         outputs=("map", "particles", "fsc", "iterations", r"class\d{3}"))
def abinitio(
    star: Annotated[Optional[Path], typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+); poses are not "
                                                              "needed (ignored), CTF columns optional. Required "
                                                              "unless --continue.")] = None,
    continue_: Annotated[Optional[Path], typer.Option("--continue", metavar="JOBDIR", help=CONTINUE_HELP)] = None,
    params: AbinitioParams = None,
    run: AbinitioJobOptions = None,
    given: dict = None,
) -> None:
    """Initial maps from particles without poses: stochastic EM from random maps, resolution annealed.

    Writes map.mrc (largest class; class001.mrc... for --classes > 1), particles.star (class, poses),
    fsc.star, iterations.star, convergence.png, slices.png, projections.png, fsc.png, report.html,
    job.json; after each iteration run_itNNN_class001.mrc... and the state that --continue resumes
    from (the last two are kept). The map's hand is arbitrary: compare both hands (cryolens align-maps).

    Example:

      cryolens abinitio --in select/particles.star --out abinitio --classes 2 --sym C1

      cryolens abinitio --continue abinitio   # after a crash or a wall-time limit

      cryolens abinitio --in select/particles.star --profile gpu --out abinitio   # on a cluster
    """
    from cryolens.jobs.abinitio import run_abinitio

    def body():
        if continue_ is not None:
            c = continued_job("abinitio", continue_, params=params, given=given, run=run,
                              inputs={"particles": ("--in", star)})
            if c.finished:
                console.print(c.message, highlight=False)
                return
            dev = c.torch_device(run)
            with continue_target("abinitio", c.folder, run.project) as target, \
                    stage_progress(quiet=run.quiet) as cb:
                job = run_abinitio(c.inputs["particles"], target.out, c.params, device=dev, progress=cb,
                                   observer=target.observer, resume=True, backend=run.backend_spec(),
                                   project_dir=getattr(target.project, "root", None))
        else:
            if star is None:
                raise InputError("--in is required to start ab initio; give it, or continue an interrupted job "
                                 "with --continue JOBDIR.")
            dev = device_option(run.device)
            with job_target("abinitio", run) as target, stage_progress(quiet=run.quiet) as cb:
                job = run_abinitio(star, target.out, params, device=dev, progress=cb, observer=target.observer,
                                   backend=run.backend_spec(), project_dir=getattr(target.project, "root", None))
        r = job.results
        console.print(f"ab initio: class {r['best_class']} of {len(r['class_sizes'])} "
                      f"({r['class_sizes'][r['best_class'] - 1]} of {r['n_particles']} particles), half-map FSC "
                      f"0.143 at {r['resolution_0143_A']:.1f} Å -> {target.out / 'map.mrc'}")

    run_guarded(body)
