"""What every command shares: error handling (exit 2, one sentence), progress bars, devices."""

from __future__ import annotations

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
from cryolens.jobs.folders import check_target, staged
from cryolens.params import Params, option

T = TypeVar("T")
err_console = Console(stderr=True, soft_wrap=True)
console = Console(soft_wrap=True)

DEVICE_HELP = "Where to compute: auto (a CUDA GPU when present), cpu, or cuda[:N]."
QUIET_HELP = "No progress bar (the job's run.log still records everything)."
PROJECT_HELP = ("Record the job in this project (cryolens.db) and, without --out, write it to "
                "<project>/<Stage>/jobNNN/. Default: the current folder when it holds cryolens.db.")
OUT_HELP = "Output folder (created). Optional inside a project (default <project>/<Stage>/jobNNN/)."
OVERWRITE_HELP = ("Replace the finished job in the --out folder: the new job is built aside and swapped in only "
                  "when it succeeds, so a failure leaves the old job as it was. Without it a folder holding a "
                  "finished job is refused (an unfinished one is resumed).")

@dataclass
class JobOptions(Params):
    """The options every job-recording command shares, declared once (``run: JobOptions`` in a command)."""

    out: Optional[Path] = option(None, help=OUT_HELP)
    project: Optional[Path] = option(None, help=PROJECT_HELP)
    device: str = option("auto", help=DEVICE_HELP)
    quiet: bool = option(False, short="-q", help=QUIET_HELP)
    overwrite: bool = option(False, help=OVERWRITE_HELP)


PROFILE_HELP = ("Run profile (a [profiles.NAME] table of profiles.toml, see 'cryolens profiles list') whose "
                "cluster does the work; same as --backend profile:NAME")


def backend_spec(backend: str | None, profile: str | None) -> str | None:
    """The backend spec of ``--backend``/``--profile`` (``profile:NAME``), None when neither is given.

    Raises:
        InputError: both are given.
    """
    if backend is not None and profile is not None:
        raise InputError(f"--backend {backend} and --profile {profile} both name where to compute; give one.")
    return f"profile:{profile.strip()}" if profile is not None else backend


@dataclass
class BackendJobOptions(JobOptions):
    """... and ``--profile``, for the commands that also take a ``--backend`` (declared by each, with its own help)."""

    profile: Optional[str] = option(None, help=PROFILE_HELP)

    def backend_spec(self) -> str | None:
        """``--backend`` or ``--profile NAME`` as one backend spec (:func:`backend_spec`)."""
        return backend_spec(getattr(self, "backend", None), self.profile)


@dataclass
class MicrographJobOptions(BackendJobOptions):
    """... and those of the per-micrograph commands (motion, ctf, extract, pick)."""

    backend: Optional[str] = option(
        None, help="Compute backend for the micrographs: threads[:N] (N at once in this process), local[:N] "
                   "(worker processes), inprocess (one at a time), tcp://scheduler:port (Dask) or profile:NAME; "
                   "default: the stage's best on this machine")
    j: Optional[int] = option(None, flag="--j", ge=1, help="Micrographs processed at once in N local worker "
                                                           "processes (same as --backend local:N)")


@dataclass
class ParticleJobOptions(BackendJobOptions):
    """... and those of the particle stages whose expectation step can run on a compute backend (refine, class2d,
    class3d)."""

    backend: Optional[str] = option(
        None, help="Compute backend for the expectation step, in chunks of particles whose images the workers "
                   "read: threads[:N] (N chunks at once in this process), local[:N] (worker processes), inprocess, "
                   "tcp://scheduler:port (Dask) or profile:NAME; default: this process, batch by batch")


def print_warnings(warnings: list[str]) -> None:
    """A finished job's warnings on standard error, one line each (escaped: a path with brackets stays text)."""
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)


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
def progress_bars(*, quiet: bool, remaining: bool = False) -> Iterator[Callable[[Any, str, int, int | None], None]]:
    """Rich progress bars on stderr, one per key, driven by ``update(key, description, done, total)``.

    Nothing is drawn before the first update, so an input error found before any work shows no bar; ``remaining``
    adds an estimate of the time left; a no-op when ``quiet``.
    """
    if quiet:
        yield lambda key, description, done, total: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    prog = Progress(*columns, *([TimeRemainingColumn()] if remaining else []), console=err_console)
    tasks: dict[Any, Any] = {}

    def update(key: Any, description: str, done: int, total: int | None) -> None:
        if not tasks:
            prog.start()
        if key not in tasks:
            tasks[key] = prog.add_task(description, total=total)
        prog.update(tasks[key], completed=done, total=total, description=description)

    try:
        yield update
    finally:
        if tasks:
            prog.stop()


@contextmanager
def progress_bar(description: str, *, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """One :func:`progress_bars` bar driven by ``callback(done, total)``, with the time left."""
    with progress_bars(quiet=quiet, remaining=True) as update:
        yield lambda done, total: update(0, description, done, total)


@contextmanager
def iteration_progress(*, quiet: bool) -> Iterator[Callable[[int, int, int, float], None]]:
    """One bar per iteration, labelled with the iteration and the resolution it aligns to (Å)."""
    with progress_bars(quiet=quiet) as update:
        yield lambda it, done, total, res: update(it, f"iteration {it:2d} · aligning to {res:5.1f} Å", done, total)


def device_option(name: str):
    """Resolve ``--device`` inside :func:`run_guarded` (so a bad value exits 2)."""
    return resolve_device(name)


@dataclass
class JobTarget:
    """Where a command writes and who records it.

    ``folder`` is the job folder the user named (or the project allocated); ``out`` is where the job writes:
    ``folder`` itself, or during ``--overwrite`` a staging folder until the job succeeds and is swapped in
    (then ``folder`` again, so code after the job reads and prints the final paths). ``observer`` is None
    outside a project.
    """

    folder: Path
    project: Any = None
    observer: Any = None
    staging: Any = None

    @property
    def out(self) -> Path:
        s = self.staging
        return s.path if s is not None and not s.committed else self.folder


@contextmanager
def job_target(stage: str, run: JobOptions) -> Iterator[JobTarget]:
    """Resolve the project (``run.project``, else the current folder when it holds cryolens.db), the job folder
    (``run.out``) and the observer that records the job; use inside :func:`run_guarded`.

    The folder is a transaction (:mod:`cryolens.jobs.folders`): one that holds a finished job is refused
    unless ``overwrite`` (then the job is staged aside and swapped in on success); one where a job is running
    is refused; inside a project a folder belongs to one job (see :func:`cryolens.project.claim.claim_job`).
    A job allocated here that fails before it starts (bad input) is recorded as failed, and its folder
    carries a FAILURE marker (or is removed when still empty).
    """
    from cryolens.project.claim import claim_job
    from cryolens.project.db import find_project, open_project

    out, overwrite = run.out, run.overwrite
    root = run.project if run.project is not None else find_project(Path.cwd())
    if root is None:
        if out is None:
            raise InputError("--out is required outside a project; give --out DIR, or run in a project folder "
                             "(`cryolens project init DIR`) or pass --project DIR.")
        with staged_target(out, overwrite=overwrite) as target:
            yield target
        return
    with claim_job(open_project(root), stage, out, overwrite=overwrite) as (proj, folder, observer):
        with staged_target(folder, overwrite=overwrite) as target:
            target.project, target.observer = proj, observer
            yield target


@contextmanager
def staged_target(folder: Path, *, overwrite: bool) -> Iterator[JobTarget]:
    """A :class:`JobTarget` for ``folder`` after its checks; staged aside when overwriting a job."""
    state = check_target(folder, overwrite=overwrite)
    if not overwrite or state == "empty":
        yield JobTarget(folder=folder)
        return
    here, target = Path.cwd().resolve(), folder.resolve()
    if target == here or target in here.parents:
        raise InputError(f"{folder}: --overwrite cannot replace the folder you are working in; run the command "
                         "from outside it, or choose another --out.")
    with staged(folder) as staging:
        yield JobTarget(folder=folder, staging=staging)
