"""``cryolens run workflow.toml``: run a workflow's steps as recorded jobs, skipping unchanged ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cryolens.cli.common import QUIET_HELP, console, err_console, run_guarded

__all__ = ["run_command", "stage_catalog"]


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


def run_command(
    workflow: Annotated[Path, typer.Argument(help="Workflow file (TOML; see examples/workflow.toml).")],
    until: Annotated[Optional[str], typer.Option("--until", help="Stop after this step.")] = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Re-run this step even if unchanged (repeatable); the steps using its outputs re-run too.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (run or skip, and why) and run nothing.")] = False,
    project: Annotated[Optional[Path], typer.Option("--project", help="Project folder [the workflow's project, else the folder of the TOML]; created when missing.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Run a workflow: each step is a cryolens command recorded as a job in the project.

    A step whose stage, params and input files are unchanged since it last finished is skipped; a failed or killed step runs again, so rerunning resumes. Step state: <project>/.cryolens/workflows/<name>.json; step logs next to it.

    Examples:

      cryolens run workflow.toml

      cryolens run workflow.toml --dry-run

      cryolens run workflow.toml --until sim

      cryolens run workflow.toml --force rec
    """
    from cryolens.project.workflow import load_workflow
    from cryolens.project.workflow_run import plan_workflow, run_workflow

    def body():
        wf = load_workflow(workflow, stage_catalog(), project=project)
        if dry_run:
            table = Table("step", "stage", "action", "why", "job", title=f"workflow {wf.name} in {wf.project}")
            for r in plan_workflow(wf, until=until, force=force or ()):
                table.add_row(r.step, r.stage, f"[{_STYLE[r.action]}]{r.action}[/]", r.reason, r.job)
            console.print(table)
            return

        def on_event(kind: str, step, info: dict) -> None:
            head = f"[bold]{step.name}[/] ({step.stage.name})"
            if kind == "project":
                console.print(f"created project {info['project']}", highlight=False)
            elif kind == "skip":
                console.print(f"[green]skip[/] {head}: {info['reason']} ({info['folder']})", highlight=False)
            elif kind == "run" and not quiet:
                console.print(f"[yellow]run[/]  {head}: {info['reason']}", highlight=False)
            elif kind == "job" and not quiet:
                console.print(f"     {step.name} -> {info['folder']}", highlight=False)
            elif kind == "finish":
                console.print(f"[green]done[/] {head} in {info['seconds']:.1f} s -> {info['folder']}"
                              + (f"\n     {info['summary']}" if info["summary"] and not quiet else ""),
                              highlight=False)
            elif kind == "fail":
                err_console.print(f"[red]failed[/] {head}; log: {info['log']}", highlight=False)

        done = run_workflow(wf, until=until, force=force or (), on_event=on_event)
        ran = sum(v == "ran" for v in done.values())
        console.print(f"workflow {wf.name}: {ran} step(s) run, {len(done) - ran} skipped", highlight=False)

    run_guarded(body)
