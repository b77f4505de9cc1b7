"""What every command shares: error handling (exit 2, one sentence), progress bars, devices."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cryolens.core.device import resolve_device
from cryolens.errors import InputError
from cryolens.params import Params, option

T = TypeVar("T")
err_console = Console(stderr=True, soft_wrap=True)
console = Console(soft_wrap=True)

DEVICE_HELP = "Where to compute: auto (a CUDA GPU when present), cpu, or cuda[:N]."
QUIET_HELP = "No progress bar (the job's run.log still records everything)."
PROJECT_HELP = ("Record the job in this project (cryolens.db) and, without --out, write it to "
                "<project>/<Stage>/jobNNN/. Default: the current folder when it holds cryolens.db.")
OUT_HELP = "Output folder (created). Optional inside a project (default <project>/<Stage>/jobNNN/)."

@dataclass
class JobOptions(Params):
    """The options every job-recording command shares, declared once (``run: JobOptions`` in a command)."""

    out: Optional[Path] = option(None, help=OUT_HELP)
    project: Optional[Path] = option(None, help=PROJECT_HELP)
    device: str = option("auto", help=DEVICE_HELP)
    quiet: bool = option(False, short="-q", help=QUIET_HELP)


@dataclass
class MicrographJobOptions(JobOptions):
    """... and those of the per-micrograph commands (motion, ctf, extract, pick)."""

    backend: Optional[str] = option(
        None, help="Compute backend for the micrographs: threads[:N] (N at once in this process), local[:N] "
                   "(worker processes), inprocess (one at a time), tcp://scheduler:port (Dask) or profile:NAME; "
                   "default: the stage's best on this machine")
    j: Optional[int] = option(None, flag="--j", ge=1, help="Micrographs processed at once in N local worker "
                                                           "processes (same as --backend local:N)")


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body; user errors print one sentence and exit with status 2, no traceback."""
    try:
        return fn()
    except InputError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; outputs already written are complete, rerun to redo the job.")
        raise typer.Exit(code=130) from None


@contextmanager
def progress_bar(description: str, *, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar driven by ``callback(done, total)``; a no-op when quiet or not a TTY-less CI."""
    if quiet:
        yield lambda done, total: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  disable=not sys.stderr.isatty() and False) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def device_option(name: str):
    """Resolve ``--device`` inside :func:`run_guarded` (so a bad value exits 2)."""
    return resolve_device(name)


@dataclass
class JobTarget:
    """Where a command writes (``out``) and who records it (``observer``, None outside a project)."""

    out: Path
    project: Any = None
    observer: Any = None


@contextmanager
def job_target(stage: str, out: Path | None, project: Path | None) -> Iterator[JobTarget]:
    """Resolve the project (``--project``, else the current folder when it holds cryolens.db), the job folder
    and the observer that records the job; use inside :func:`run_guarded`.

    A job allocated here that fails before it starts (bad input) is recorded as failed.
    """
    from cryolens.project.db import find_project, open_project
    from cryolens.project.recording import ProjectObserver

    root = project if project is not None else find_project(Path.cwd())
    if root is None:
        if out is None:
            raise InputError("--out is required outside a project; give --out DIR, or run in a project folder "
                             "(`cryolens project init DIR`) or pass --project DIR.")
        yield JobTarget(out=out)
        return
    proj = open_project(root)
    rec = proj.new_job(stage, folder=out)
    observer = ProjectObserver(proj, rec.id)
    try:
        yield JobTarget(out=out if out is not None else proj.abs(rec.folder), project=proj, observer=observer)
    except BaseException as e:
        if not observer.seen_start:
            proj.record_failure(rec.id, f"{type(e).__name__}: {e}")
        raise
