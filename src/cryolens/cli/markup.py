"""Literal text in rich output: help, tables and messages keep their ``[brackets]``.

Typer renders help through rich markup and rich prints strings as markup, so
``[profiles.NAME]`` or ``[the workflow's project]`` would vanish as unknown style tags.
Help strings are escaped once, when the command tree is built (:class:`LiteralHelpGroup`,
the root group of ``cryolens``); text that comes from users or programs (paths, error
messages, step names, log lines) goes through :func:`literal` before it is embedded in
markup, or is printed with ``markup=False``.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from typer.core import TyperGroup

__all__ = ["literal", "escape_help", "LiteralHelpGroup"]

_DONE = "cryolens_help_escaped"


def literal(value: Any) -> str:
    """``str(value)`` escaped for rich markup: its ``[...]`` prints as written."""
    return escape(str(value))


def escape_help(cmd: click.Command) -> None:
    """Escape rich markup in the help of ``cmd``, its parameters and, for a group, every sub-command (in place,
    once per object)."""
    if getattr(cmd, _DONE, False):
        return
    setattr(cmd, _DONE, True)
    for attr in ("help", "short_help", "epilog"):
        text = getattr(cmd, attr, None)
        if isinstance(text, str):
            setattr(cmd, attr, escape(text))
    for p in cmd.params:
        if isinstance(getattr(p, "help", None), str) and not getattr(p, _DONE, False):
            p.help = escape(p.help)
            setattr(p, _DONE, True)
    for sub in getattr(cmd, "commands", {}).values():
        escape_help(sub)


class LiteralHelpGroup(TyperGroup):
    """The root group: once typer has built the whole command tree, its help text is made literal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        escape_help(self)
