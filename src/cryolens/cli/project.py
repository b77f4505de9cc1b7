"""``cryolens project ...``: create a project and look at its jobs, files and lineage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.tree import Tree

from cryolens.cli.common import console, run_guarded
from cryolens.cli.markup import literal

app = typer.Typer(help="Projects: a folder whose cryolens.db records every job, its inputs and outputs.",
                  no_args_is_help=True)

PROJECT_OPT = typer.Option("--project", "-p", help="Project folder [the current folder].")
JSON_OPT = typer.Option("--json", help="Print JSON instead of a table.")
_STYLE = {"finished": "green", "failed": "red", "killed": "magenta", "running": "yellow", "queued": "cyan"}


def _open(project: Optional[Path]):
    from cryolens.project.db import open_project
    return open_project(project if project is not None else Path.cwd())


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _took(j) -> str:
    return f"{j.ended - j.started:.1f} s" if j.started and j.ended else ""


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command("init")
def init(folder: Annotated[Path, typer.Argument(help="Project folder (created if missing).")]) -> None:
    """Create a project: FOLDER/cryolens.db. Stage commands run in it (or with --project) are recorded there.

    Example:

      cryolens project init P && cd P && cryolens simulate particles --preset tutorial
    """
    def body():
        from cryolens.project.db import init_project
        p = init_project(folder)
        console.print(f"project [bold]{literal(p.root)}[/] (schema {p.schema_version()})")
    run_guarded(body)


@app.command("jobs")
def jobs(project: Annotated[Optional[Path], PROJECT_OPT] = None, as_json: Annotated[bool, JSON_OPT] = False) -> None:
    """List the project's jobs (a running job whose process is gone is shown as killed).

    Example:

      cryolens project jobs --json
    """
    def body():
        records = _open(project).jobs()
        if as_json:
            return _print_json([j.to_dict() for j in records])
        table = Table("job", "stage", "folder", "status", "started", "took")
        for j in records:
            table.add_row(j.name, j.stage, literal(j.folder), f"[{_STYLE[j.status]}]{j.status}[/]", _when(j.started),
                          _took(j))
        console.print(table)
    run_guarded(body)


@app.command("show")
def show(job: Annotated[str, typer.Argument(help="Job: number (3, job003), id or folder (Reconstruct/job003).")],
         project: Annotated[Optional[Path], PROJECT_OPT] = None, as_json: Annotated[bool, JSON_OPT] = False) -> None:
    """Show one job: status, parameters, inputs, outputs, results, notes.

    Example:

      cryolens project show job002
    """
    def body():
        p = _open(project)
        j = p.job(job)
        notes = p.notes(j.id)
        if as_json:
            return _print_json(j.to_dict() | {"notes": notes})
        table = Table("field", "value", show_header=False)
        for k in ("name", "stage", "folder", "status", "seed", "host", "pid", "error"):
            if getattr(j, k) is not None:
                table.add_row(k, literal(getattr(j, k)))
        table.add_row("started", _when(j.started))
        table.add_row("took", _took(j))
        for group in ("inputs", "outputs", "params", "results"):
            for k, v in getattr(j, group).items():
                table.add_row(f"{group}.{k}", literal(v))
        for n in notes:
            table.add_row(f"note {_when(n['time'])}", literal(n["text"]))
        console.print(table)
    run_guarded(body)


@app.command("status")
def status(project: Annotated[Optional[Path], PROJECT_OPT] = None, as_json: Annotated[bool, JSON_OPT] = False) -> None:
    """Summarise the project: jobs by status, files recorded, running jobs, database integrity.

    Example:

      cryolens project status
    """
    def body():
        s = _open(project).status()
        if as_json:
            return _print_json(s)
        table = Table("", "", show_header=False)
        table.add_row("project", literal(s["project"]))
        table.add_row("jobs", str(s["jobs"]))
        for k, n in s["by_status"].items():
            if n:
                table.add_row(f"  [{_STYLE[k]}]{k}[/]", str(n))
        table.add_row("files", str(s["assets"]))
        table.add_row("notes", str(s["notes"]))
        table.add_row("running", literal(", ".join(s["running"]) or "-"))
        table.add_row("database", f"schema {s['schema_version']}, integrity {s['integrity']}")
        console.print(table)
    run_guarded(body)


def _tree(node: dict, tree: Tree) -> None:
    job = node["job"]
    label = f"[bold]{literal(node['path'])}[/]"
    label += f"  <- {job['name']} {job['stage']} [{_STYLE[job['status']]}]{job['status']}[/]" if job else "  (input)"
    branch = tree.add(label)
    for child in node["inputs"]:
        _tree(child, branch)


@app.command("lineage")
def lineage(file: Annotated[Path, typer.Argument(help="A file written or read by a recorded job.")],
            project: Annotated[Optional[Path], PROJECT_OPT] = None, as_json: Annotated[bool, JSON_OPT] = False) -> None:
    """Show the chain of jobs and inputs that made FILE.

    Example:

      cryolens project lineage Reconstruct/job002/map.mrc
    """
    def body():
        node = _open(project).lineage(file)
        if as_json:
            return _print_json(node)
        root = Tree("lineage")
        _tree(node, root)
        console.print(root)
    run_guarded(body)


@app.command("note")
def note(job: Annotated[str, typer.Argument(help="Job (number, id or folder) or a recorded file.")],
         text: Annotated[str, typer.Argument(help="The note.")],
         project: Annotated[Optional[Path], PROJECT_OPT] = None) -> None:
    """Attach a note to a job (or to a recorded file).

    Example:

      cryolens project note job002 "first try, no CTF"
    """
    def body():
        from cryolens.errors import InputError
        p = _open(project)
        try:
            target = p.job(job)
            p.add_note(text, job=target.id)
            console.print(f"note added to {target.name} ({target.folder})", markup=False)
        except InputError:
            if not Path(job).is_file():
                raise
            p.add_note(text, asset=job)
            console.print(f"note added to {job}", markup=False)
    run_guarded(body)


@app.command("groups")
def groups(project: Annotated[Optional[Path], PROJECT_OPT] = None, as_json: Annotated[bool, JSON_OPT] = False) -> None:
    """List the named groups of files or STAR rows (movies, micrographs, particles) in the project.

    Example:

      cryolens project groups
    """
    def body():
        records = _open(project).groups()
        if as_json:
            return _print_json([g.to_dict() for g in records])
        table = Table("group", "items", "from", "jobs", "created", "description")
        for g in records:
            table.add_row(literal(g.name), str(g.n_members), literal(", ".join(g.sources) or "files"),
                          literal(", ".join(g.jobs)), _when(g.created), literal(g.description or ""))
        console.print(table)
    run_guarded(body)


@app.command("group")
def group(name: Annotated[str, typer.Argument(help="Group name.")],
          from_job: Annotated[Optional[str], typer.Option("--from-job",
                                                          help="Add the output files of this job.")] = None,
          from_star: Annotated[Optional[Path], typer.Option("--from-star", help="Add the rows of this STAR file "
                                                            "(a subset of movies, micrographs or particles).")] = None,
          column: Annotated[Optional[str], typer.Option("--column", help="Key column of --from-star [by table: "
                                                        "rlnMicrographMovieName, rlnMicrographName, "
                                                        "rlnImageName].")] = None,
          description: Annotated[Optional[str], typer.Option("--description", help="What the group is.")] = None,
          delete: Annotated[bool, typer.Option("--delete", help="Forget the group (files are untouched).")] = False,
          project: Annotated[Optional[Path], PROJECT_OPT] = None, as_json: Annotated[bool, JSON_OPT] = False) -> None:
    """Create or extend a group (--from-job, --from-star), or show its items.

    Example:

      cryolens project group good_ice --from-star Select/job007/micrographs.star --description "thin ice"
    """
    def body():
        p = _open(project)
        if delete:
            p.delete_group(name)
            return console.print(f"group {name} deleted", markup=False)
        if from_job is not None:
            p.group_from_job(name, from_job, description=description)
        if from_star is not None:
            p.group_from_star(name, from_star, column=column, description=description)
        g = p.group(name)
        members = p.group_members(name)
        if as_json:
            return _print_json(g.to_dict() | {"members": members})
        about = f" ({g.description})" if g.description else ""
        console.print(f"group [bold]{literal(g.name)}[/]: {g.n_members} items{literal(about)}")
        table = Table("item", "from", "job")
        for m in members:
            table.add_row(literal(m["item"]), literal(m["source"] or "file"), literal(m["job"] or ""))
        console.print(table)
    run_guarded(body)
