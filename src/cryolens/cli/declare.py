"""Typer options built from a stage's declared ``Params`` (see :mod:`cryolens.params`).

A command module writes only what is not a parameter (inputs, outputs, printing)::

    @declare(params=RefineParams, run=JobOptions, outputs=("particles", "half1", "half2", "map", "fsc"))
    def refine(star: InOption, ref: ..., params: RefineParams = None, run: JobOptions = None):
        ...

:func:`declare` replaces the ``params`` argument by one option per declared field (same
place in ``--help``), builds the dataclass from the parsed values, applies ``--preset``
when the class has presets, and validates it before the command body runs: an
impossible value exits 2 with one sentence naming the flag, before any job folder or
project record exists. The declared ``outputs`` (names or regular expressions of the
outputs in ``job.json``) let ``cryolens run`` check ``{step.output}`` references before
running anything. A command with a keyword argument named ``given`` receives, per declared
class (its argument name), the set of field names the user typed on the command line or set
through the environment, e.g. ``{"params": {"max_iterations"}, "run": {"out"}}`` (``--continue``
uses it to tell a repeated option from a default).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import keyword
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Optional

import click
import typer

from cryolens.cli.common import run_guarded
from cryolens.errors import InputError
from cryolens.params import Declared, Params, apply_preset, bounds_text, declared

__all__ = ["declare", "help_text", "build_params", "check_declared", "DECLARED_ATTR", "OUTPUTS_ATTR"]

DECLARED_ATTR = "cryolens_params"
OUTPUTS_ATTR = "cryolens_outputs"
PRESET = "preset"
CONTEXT = "cryolens_context"
GIVEN = "given"


def help_text(d: Declared) -> str:
    """The ``--help`` line of a declaration: its sentence, then unit and bounds in parentheses."""
    extra = ", ".join(p for p in (d.unit, bounds_text(d)) if p)
    body = d.help.rstrip().rstrip(".")
    return f"{body} ({extra})." if extra else f"{body}."


def _flag_words(name: str, d: Declared, default: Any) -> list[str]:
    flag = d.flag or "--" + name.replace("_", "-")
    words = [flag]
    if isinstance(default, bool) and default and "/" not in flag:
        words = [f"{flag}/--no-{flag[2:]}"]
    if d.short:
        words.append(d.short)
    return words


def _cli_type(name: str, d: Declared, hints: dict[str, Any], defaults: dict[str, Any]) -> tuple[Any, Any]:
    """(annotation, default) of the Typer parameter for field ``name``."""
    default = defaults[name]
    if d.join:
        members = (name, *d.join)
        types = tuple(_plain(hints[m]) for m in members)
        return tuple.__class_getitem__(types), tuple(defaults[m] for m in members)
    if d.parse is not None:
        shown = None if default is None else (d.text(default) if d.text else str(default))
        return (Optional[str] if shown is None else str), shown
    repeated = _repeated(hints[name])
    if repeated is not None:  # tuple[X, ...]: a repeatable option
        return Optional[list[repeated]], (list(default) or None)
    return hints[name], default


def _repeated(tp: Any) -> Any:
    """``X`` for ``tuple[X, ...]`` (a repeatable option), else None."""
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis else None


def _plain(tp: Any) -> Any:
    """``float | None`` -> ``float`` (a member of a joined option always has a value)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) \
        and len(args) == 1 else tp


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _options(cls: type[Params], omit: Sequence[str] = ()) -> tuple[list[inspect.Parameter], dict[str, str]]:
    """One keyword parameter (Annotated with a typer.Option) per declared CLI field of ``cls`` (not in ``omit``),
    named after its flag (``--sym`` -> ``sym``), and the map from those names to the fields."""
    hints = typing.get_type_hints(cls)
    defaults = _defaults(cls)
    out, fields_of = [], {}
    for name, d in declared(cls).items():
        if not d.cli or name in omit:
            continue
        annotation, default = _cli_type(name, d, hints, defaults)
        words = _flag_words(name, d, default)
        param = words[0].split("/")[0][2:].replace("-", "_")
        param += "_" if keyword.iskeyword(param) else ""
        opt = typer.Option(*words, help=help_text(d), metavar=d.metavar,
                           show_default=default is not None and not (isinstance(default, bool) and not default))
        out.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=Annotated[annotation, opt]))
        fields_of[param] = name
    if cls.PRESETS:
        opt = typer.Option("--preset", help=cls.PRESETS_HELP or f"Option set: {', '.join(cls.PRESETS)}; options "
                                                                "given explicitly override it.")
        out.append(inspect.Parameter(PRESET, inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[Optional[str], opt]))
        fields_of[PRESET] = PRESET
    return out, fields_of


def build_params(cls: type[Params], values: dict[str, Any], explicit: set[str] = frozenset()) -> Params:
    """The dataclass from parsed CLI values (joined and text options unpacked), preset applied, validated.

    Raises:
        InputError: a value that does not parse or is impossible (one sentence naming the flag).
    """
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for name, d in declared(cls).items():
        if not d.cli or name not in values:
            continue
        raw = values[name]
        if d.join:
            for member, v in zip((name, *d.join), raw):
                kwargs[member] = v
            explicit = explicit | set(d.join) if name in explicit else explicit
        elif d.parse is not None and raw is not None:
            try:
                kwargs[name] = d.parse(raw)
            except ValueError as e:
                raise InputError(f"{cls.flag(name)} {raw}: {e}.") from None
        elif isinstance(raw, list) or (raw is None and _repeated(hints[name]) is not None):
            kwargs[name] = tuple(raw or ())
        else:
            kwargs[name] = raw
    params = cls(**kwargs)
    try:
        params = apply_preset(params, values.get(PRESET), explicit)
        params.validate()
    except ValueError as e:
        raise InputError(f"{e}.") from None
    return params


def _given(owned: dict[str, dict[str, str]], kwargs: dict[str, Any], ctx: click.Context | None) -> dict[str, set[str]]:
    """Per declared class, the fields whose option the user typed (command line or environment)."""
    # typer runs on its own copy of click (typer._click): compare the source by name
    typed = {n for n in kwargs if ctx is not None and
             getattr(ctx.get_parameter_source(n), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    return {key: {f for p, f in names.items() if p in typed} for key, names in owned.items()}


def _build_all(classes: dict[str, type[Params]], owned: dict[str, dict[str, str]], kwargs: dict[str, Any],
               ctx: click.Context | None) -> dict[str, Params]:
    given = _given(owned, kwargs, ctx)
    return {key: build_params(cls, {f: kwargs[p] for p, f in owned[key].items()}, given[key])
            for key, cls in classes.items()}


def check_declared(callback: Callable, ctx: click.Context) -> None:
    """Build and validate the declared params a parsed context gives ``callback`` (a :func:`declare`'d command).

    Raises:
        InputError: an impossible value (one sentence naming the flag).
    """
    spec = getattr(callback, DECLARED_ATTR, {})
    _build_all({k: cls for k, (cls, _) in spec.items()}, {k: names for k, (_, names) in spec.items()},
               ctx.params, ctx)


def declare(*, outputs: Sequence[str] | None = None, omit: Sequence[str] = (),
            **classes: type[Params]) -> Callable[[Callable], Callable]:
    """Decorator: each keyword argument ``NAME=ParamsClass`` turns the command's ``NAME`` argument into
    that class's declared options (see the module docstring); fields named in ``omit`` keep their
    defaults and get no option in this command."""

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        params: list[inspect.Parameter] = []
        owned: dict[str, dict[str, str]] = {}
        # a command that reads --preset itself gets the value of the one option built for its classes
        wants_preset = PRESET in sig.parameters and any(cls.PRESETS for cls in classes.values())
        wants_given = GIVEN in sig.parameters
        for p in sig.parameters.values():
            if (p.name == PRESET and wants_preset) or (p.name == GIVEN and wants_given):
                continue
            if p.name in classes:
                opts, owned[p.name] = _options(classes[p.name], omit)
                params += opts
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        names = [p.name for p in params]
        clash = {n for n in names if names.count(n) > 1}
        if clash:
            raise TypeError(f"{fn.__name__}: option names declared twice: {', '.join(sorted(clash))}")

        built_names = {n for names in owned.values() for n in names}

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            ctx = kwargs.pop(CONTEXT)  # typer's context: click.get_current_context() is another click's
            built = run_guarded(lambda: _build_all(classes, owned, kwargs, ctx))
            passed = {PRESET: kwargs.get(PRESET)} if wants_preset else {}
            if wants_given:
                passed[GIVEN] = _given(owned, kwargs, ctx)
            return fn(**{k: v for k, v in kwargs.items() if k not in built_names}, **built, **passed)

        del command.__wrapped__  # typer must see the built signature, not fn's
        params.append(inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        setattr(command, DECLARED_ATTR, {key: (cls, owned[key]) for key, cls in classes.items()})
        setattr(command, OUTPUTS_ATTR, tuple(outputs) if outputs is not None else None)
        return command

    return wrap
