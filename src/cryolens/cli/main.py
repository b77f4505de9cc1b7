"""The ``cryolens`` command."""

from __future__ import annotations

import importlib
import sys

import typer

from cryolens import __version__
from cryolens.cli.markup import LiteralHelpGroup

#: The commands in help order: (name, module in ``cryolens.cli``, attribute, click command class or None). A
#: module whose attribute is ``app`` is a group of sub-commands. Modules are imported only for the commands built.
COMMANDS: tuple[tuple[str, str, str, str | None], ...] = (
    ("project", "project", "app", None), ("import", "importing", "app", None), ("export", "export", "app", None),
    ("motion", "motion", "motion", None), ("ctf", "ctf", "ctf", None), ("pick", "pick", "pick", "PickCommand"),
    ("pick-consensus", "pick", "pick_consensus", "ConsensusCommand"), ("extract", "extract", "extract", None),
    ("class2d", "class2d", "class2d", None), ("select", "select", "app", None),
    ("reconstruct", "reconstruct", "reconstruct", None), ("abinitio", "abinitio", "abinitio", None),
    ("refine", "refine", "refine", None), ("class3d", "class3d", "class3d", None),
    ("postprocess", "postprocess", "postprocess", None), ("fsc", "fsc", "fsc_command", None),
    ("align-maps", "align_maps", "align_maps", None), ("flip-hand", "align_maps", "flip_hand", None),
    ("run", "run", "run_command", None), ("demo", "demo", "demo", None), ("simulate", "simulate", "app", None),
    ("profiles", "profiles", "app", None), ("report", "report", "report_command", None),
    ("serve", "report", "serve_command", None),
)


def _quick_exit_allowed() -> bool:
    """Whether this process may skip the interpreter's teardown: not switched off (``CRYOLENS_FAST_EXIT=0``),
    no non-daemon thread and no child process still running."""
    import os
    import threading

    if os.environ.get("CRYOLENS_FAST_EXIT", "1").lower() in ("0", "off", "false", "no"):
        return False
    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return False
    mp = sys.modules.get("multiprocessing")
    return not (mp is not None and mp.active_children())


class CryolensApp(typer.Typer):
    """The ``cryolens`` command. When it is run as the program (``app()``: the ``cryolens`` script or
    ``python -m cryolens.cli.main``) and a command succeeds, the process ends with ``os._exit(0)`` after
    flushing the output and running the ``atexit`` handlers (log files, temporary folders): the
    interpreter's own teardown of torch, pandas and matplotlib modules took ~0.6 s of every command
    (measured: reconstruct 5.5 -> 4.9 s). Tests invoke the click command directly and are unaffected."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as e:
            if e.code in (0, None) and _quick_exit_allowed():
                import atexit
                import os

                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
                if run_exitfuncs is None:  # not CPython: the ordinary exit
                    raise
                run_exitfuncs()
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                os._exit(0)
            raise


def build_app(command: str | None = None) -> CryolensApp:
    """The ``cryolens`` command with every sub-command, or with ``command`` alone when it is one of
    :data:`COMMANDS` (what the program does when it is given one: the other commands' modules are not
    imported, ~0.1 s less start-up)."""
    app = CryolensApp(
        name="cryolens",
        help=("Cryo-EM single-particle analysis: import, motion, ctf, pick, extract, class2d, select, reconstruct, "
              "abinitio, refine, class3d, postprocess, align-maps; workflows (run), projects, simulation."),
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        cls=LiteralHelpGroup,  # help text keeps its [brackets]
    )
    known = command in {c[0] for c in COMMANDS}
    for name, module, attr, cls in COMMANDS:
        if known and name != command:
            continue
        mod = importlib.import_module(f"cryolens.cli.{module}")
        if attr == "app":
            app.add_typer(mod.app, name=name)
        else:
            app.command(name, **({"cls": getattr(mod, cls)} if cls else {}))(getattr(mod, attr))
    app.callback()(main)
    return app


def __getattr__(name: str):
    """``app``: the whole command, built on first use."""
    if name == "app":
        built = globals()["app"] = build_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cryolens {__version__}")
        raise typer.Exit()


def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Cryo-EM single-particle analysis in Python."""


if __name__ == "__main__":  # pragma: no cover
    build_app()()
