"""``cryolens report`` (the project report, static HTML) and ``cryolens serve`` (the local web viewer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import console, err_console, run_guarded
from cryolens.cli.markup import literal

PROJECT_ARG = typer.Argument(help="Project folder [the current folder].", show_default=False)


def _open(project: Optional[Path]):
    from cryolens.project.db import open_project
    return open_project(project if project is not None else Path.cwd())


def report_command(
    project: Annotated[Optional[Path], PROJECT_ARG] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the page here [PROJECT/report.html].")] = None,
) -> None:
    """Write the project report: one static HTML page (no server needed) linking the jobs in workflow order
    with the numbers that matter (movies, micrographs kept, particles picked and kept, classes, resolution,
    B-factor), each job's verdict and the lineage of the final map.

    Example:

      cryolens report P && xdg-open P/report.html
    """
    def body():
        from cryolens.errors import InputError
        from cryolens.report.project_report import write_project_report
        p = _open(project)
        if out is not None and out.is_dir():
            raise InputError(f"{out}: is a folder; give --out a file name such as {out / 'report.html'}.")
        path = write_project_report(p, out)
        console.print(f"project report -> [bold]{literal(path)}[/]")
    run_guarded(body)


def serve_command(
    project: Annotated[Optional[Path], PROJECT_ARG] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to bind. The viewer has no authentication: "
                                                     "another address than 127.0.0.1 exposes the project to "
                                                     "the network (a warning is printed).")] = "127.0.0.1",
    log: Annotated[bool, typer.Option("--log", help="Print each request.")] = False,
) -> None:
    """Serve a local web viewer of a project: the job list with status and live progress of running jobs
    (refreshing), each job's report and plots, the project report. Paths outside the project are refused.
    Stop with Ctrl-C.

    Example:

      cryolens serve P --port 8080   # then open http://127.0.0.1:8080/
    """
    def body():
        from cryolens.errors import InputError
        from cryolens.report.serve import LOCALHOST, make_server
        p = _open(project)
        if host not in (LOCALHOST, "localhost", "::1"):
            err_console.print(f"[bold yellow]warning:[/] binding {literal(host)}: anyone who can reach this address "
                              "can read the project's files; the viewer has no authentication.")
        try:
            server = make_server(p, host=host, port=port, quiet=not log)
        except OSError as e:
            raise InputError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); "
                             "choose another --port or --host.") from None
        h, bound = server.server_address[:2]
        console.print(f"serving {literal(p.root)} at [bold]http://{'[' + h + ']' if ':' in h else h}:{bound}/[/] "
                      "(Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("stopped")
        finally:
            server.server_close()
    run_guarded(body)
