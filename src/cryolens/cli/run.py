"""``cryolens run workflow.toml``: run a workflow's steps as recorded jobs, skipping unchanged ones."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cryolens.cli.common import QUIET_HELP, console, err_console, run_guarded
from cryolens.cli.markup import literal

__all__ = ["run_command", "stage_catalog", "StepProgress", "SetOption"]

#: ``--set STEP.PARAM=VALUE`` (of ``run`` and ``demo``), parsed by :func:`cryolens.project.workflow.parse_settings`.
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="STEP.PARAM=VALUE: set or replace one step's option for this run (repeatable; VALUE as in TOML).")]


def stage_catalog() -> dict[str, Any]:
    """Every cryolens command that records a job (takes --project and --out, no required positional argument), as
    StageSpecs."""
    import typer.main

    from cryolens.cli.declare import OUTPUTS_ATTR, check_declared
    from cryolens.cli.main import app
    from cryolens.project.workflow import OptionSpec, StageSpec

    def spec(words: tuple[str, ...], cmd) -> StageSpec | None:
        options: dict[str, OptionSpec] = {}
        for p in cmd.params:
            longs = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            if not longs or not hasattr(p, "is_flag"):
                if getattr(p, "required", False):
                    return None  # a required positional argument: not a step
                continue  # an optional positional (import's FILES): a step names its files by option (glob, files)
            offs = [o for o in p.secondary_opts if o.startswith("--")]
            o = OptionSpec(flag=longs[0], is_flag=bool(p.is_flag), off_flag=offs[0] if offs else None,
                           multiple=bool(p.multiple), nargs=int(p.nargs or 1))
            for name in {*(x[2:].replace("-", "_") for x in longs), p.name}:
                options[name] = o
            for off in offs:
                options[off[2:].replace("-", "_")] = OptionSpec(flag=off, is_flag=True)
        if "project" not in options or "out" not in options:
            return None  # not a job-recording command (project jobs, profiles list, ...)

        def check(argv: list[str]) -> None:
            try:
                check_declared(cmd.callback, cmd.make_context(" ".join(words), list(argv)))
            except Exception as e:  # noqa: BLE001 - any parser complaint becomes the step's error
                message = e.format_message() if hasattr(e, "format_message") else str(e)
                raise ValueError(f"{' '.join(words)}: {message.rstrip('.')}; fix its params.") from None

        return StageSpec(words=words, options=options, check=check, outputs=getattr(cmd.callback, OUTPUTS_ATTR, None))

    out: dict[str, StageSpec] = {}

    def walk(cmd, words: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, (*words, name))
        elif words and words[0] != "run" and (s := spec(words, cmd)) is not None:
            out[s.name] = s

    walk(typer.main.get_command(app), ())
    return out


_STYLE = {"run": "yellow", "skip": "green", "stop": "dim"}


class StepProgress:
    """One rich line per workflow step on stderr: ``n/N``, step (stage), a bar, elapsed time and status.

    A step gets its line when it is skipped or starts; the bar pulses while it runs and fills when it ends.
    Use as a context manager around :func:`cryolens.project.workflow_run.run_workflow` and pass
    :meth:`event` on (with the run's other printing); ``quiet`` shows nothing.
    """

    def __init__(self, names: list[str], *, quiet: bool) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.number = {name: k + 1 for k, name in enumerate(names)}
        self.total = len(names)
        self.tasks: dict[str, Any] = {}
        self.progress = None if quiet else Progress(
            TextColumn("{task.fields[n]}"), TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=err_console,
            redirect_stdout=sys.stdout.isatty())  # printed lines go above the bars, or to the file stdout names

    def __enter__(self) -> "StepProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def print(self, text: str, *, err: bool = False, **kw: Any) -> None:
        """Print a line: above the bars while they show on the terminal stdout shares, else to stdout (stderr)."""
        if self.progress is not None and self.progress.live.is_started and sys.stdout.isatty():
            self.progress.console.print(text, **kw)
        else:
            (err_console if err else console).print(text, **kw)

    def event(self, kind: str, step, info: dict) -> None:
        """Follow ``run_workflow``'s events (skip, run, job, finish, fail) for ``step``."""
        p = self.progress
        if p is None or step.name not in self.number:
            return
        if kind in ("skip", "run"):
            n = f"{self.number[step.name]}/{self.total}"
            status = f"[green]skipped[/] ({literal(info['folder'])})" if kind == "skip" else "[yellow]running[/]"
            task = p.add_task(literal(f"{step.name} ({step.stage.name})"), total=1 if kind == "skip" else None,
                              completed=1 if kind == "skip" else 0, n=n, status=status)
            self.tasks[step.name] = task
            if kind == "skip":
                p.stop_task(task)
        elif step.name in self.tasks:
            task = self.tasks[step.name]
            if kind == "job":
                p.update(task, status=f"[yellow]running[/] -> {literal(info['folder'])}")
            elif kind in ("finish", "fail"):
                status = (f"[green]done[/] -> {literal(info['folder'])}" if kind == "finish" else "[red]failed[/]")
                p.update(task, total=1, completed=1 if kind == "finish" else 0, status=status)
                p.stop_task(task)


def execute_workflow(wf, *, until: str | None = None, force=(), quiet: bool = False) -> dict[str, str]:
    """Run a loaded workflow with a progress line per step and a line per event; returns ``run_workflow``'s
    ``{step: "ran"|"skipped"}`` after printing how many steps ran."""
    from cryolens.project.workflow_run import run_workflow

    last = wf.index(until, "--until") if until is not None else len(wf.steps) - 1

    def on_event(kind: str, step, info: dict) -> None:
        head = f"[bold]{literal(step.name)}[/] ({step.stage.name})"
        say = steps.print
        if kind == "project":
            say(f"created project {info['project']}", highlight=False, markup=False)
        elif kind == "skip":
            say(f"[green]skip[/] {head}: {literal(info['reason'])} ({literal(info['folder'])})", highlight=False)
        elif kind == "run" and not quiet:
            say(f"[yellow]run[/]  {head}: {literal(info['reason'])}", highlight=False)
        elif kind == "job" and not quiet:
            say(f"     {step.name} -> {info['folder']}", highlight=False, markup=False)
        elif kind == "finish":
            say(f"[green]done[/] {head} in {info['seconds']:.1f} s -> {literal(info['folder'])}"
                + (f"\n     {literal(info['summary'])}" if info["summary"] and not quiet else ""), highlight=False)
        elif kind == "fail":
            say(f"[red]failed[/] {head}; log: {literal(info['log'])}", err=True, highlight=False)
        steps.event(kind, step, info)

    with StepProgress([s.name for s in wf.steps[:last + 1]], quiet=quiet) as steps:
        done = run_workflow(wf, until=until, force=force, on_event=on_event)
    ran = sum(v == "ran" for v in done.values())
    console.print(f"workflow {wf.name}: {ran} step(s) run, {len(done) - ran} skipped", highlight=False, markup=False)
    return done


def run_command(
    workflow: Annotated[Path, typer.Argument(help="Workflow file (TOML; see examples/workflow.toml).")],
    until: Annotated[Optional[str], typer.Option("--until", help="Stop after this step.")] = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Re-run this step even if unchanged (repeatable); the steps using its outputs re-run too.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (run or skip, and why) and run nothing.")] = False,
    project: Annotated[Optional[Path], typer.Option("--project", help="Project folder [the workflow's project, else the folder of the TOML]; created when missing.")] = None,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Run a workflow: each step is a cryolens command recorded as a job in the project.

    A step whose stage, params and input files are unchanged since it last finished is skipped; a failed or killed
    step runs again, so rerunning resumes. Each step shows a progress line (n/N, elapsed time, status) unless
    --quiet. Step state: <project>/.cryolens/workflows/<name>.json; step logs next to it.

    Examples:

      cryolens run workflow.toml

      cryolens run workflow.toml --dry-run

      cryolens run workflow.toml --until sim

      cryolens run workflow.toml --force rec

      cryolens run workflow.toml --set sim.n=500 --set rec.sym=C2
    """
    from cryolens.project.workflow import load_workflow, parse_settings
    from cryolens.project.workflow_run import plan_workflow

    def body():
        wf = load_workflow(workflow, stage_catalog(), project=project, settings=parse_settings(set_, workflow))
        if dry_run:
            table = Table("step", "stage", "action", "why", "job", title=literal(f"workflow {wf.name} in {wf.project}"))
            for r in plan_workflow(wf, until=until, force=force or ()):
                table.add_row(literal(r.step), r.stage, f"[{_STYLE[r.action]}]{r.action}[/]", literal(r.reason),
                              literal(r.job))
            console.print(table)
            return
        execute_workflow(wf, until=until, force=force or (), quiet=quiet)

    run_guarded(body)
