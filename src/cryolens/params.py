"""One declaration per parameter: a stage's ``Params`` dataclass says, per field, its flag,
help with the unit, default and bounds; everything else is derived from it.

A field is declared with :func:`option`::

    @dataclass
    class RefineParams(Params):
        ini_high: float = option(40.0, flag="--ini-high", unit="Å", gt=0,
                                 help="Low-pass the reference to this resolution")

From that one declaration:

* :meth:`Params.validate` checks the bounds and choices (and the class's own cross-field
  :meth:`Params.check`); its messages name the flag a user typed (``--ini-high 0: must
  be > 0 Å``), so the CLI, a workflow step and a Python caller get the same sentence;
* ``cryolens.cli.declare`` builds the Typer options (``--help`` shows the help, the unit
  and the bounds), hence also the workflow catalogue of ``cryolens run``;
* ``job.json`` records ``dataclasses.asdict(params)``.

Conventions: a ``bool`` field whose default is ``True`` becomes ``--name/--no-name``, one
whose default is ``False`` a plain ``--name`` switch. ``flag=None`` derives the flag from
the field name (``batch_size`` -> ``--batch-size``); ``cli=False`` keeps a field out of
the CLI (internal tuning, still settable from Python). ``join=("b",)`` makes one
multi-value option fill this field and the fields named (``--res 30 5`` fills
``res_low_A`` and ``res_high_A``); ``parse``/``text`` convert a field whose CLI form is
text (``--patches 5x5`` <-> ``(5, 5)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = ["Declared", "Params", "option", "declared", "flag_of", "bounds_text", "apply_preset"]

META = "cryolens"
_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Declared:
    """What :func:`option` stores on a field (see the module docstring)."""

    help: str
    flag: str | None = None
    unit: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    rule: tuple[Callable[[Any], bool], str] | None = None
    parse: Callable[[str], Any] | None = None
    text: Callable[[Any], str] | None = None
    metavar: str | None = None
    join: tuple[str, ...] = ()
    cli: bool = True
    short: str | None = None

    def bounds(self) -> str:
        """The bounds as a person reads them: ``> 0``, ``0 - 3``, ``one of exhaustive, fast``."""
        return bounds_text(self)


def option(default: Any = _MISSING, *, help: str, flag: str | None = None, unit: str = "",
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: Sequence[Any] | None = None, rule: tuple[Callable[[Any], bool], str] | None = None,
           parse: Callable[[str], Any] | None = None, text: Callable[[Any], str] | None = None,
           metavar: str | None = None, join: Sequence[str] = (), cli: bool = True, short: str | None = None,
           default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field carrying its one declaration.

    Args:
        default: the default value (or ``default_factory``).
        help: one sentence for ``--help`` (without the unit; it is appended).
        flag: the long flag, e.g. ``"--ini-high"``; None derives it from the field name.
        unit: unit shown in help and errors (``Å``, ``px``, ``°``, ``e⁻/Å²``).
        ge, gt, le, lt: bounds (``None`` values of an optional field are not checked).
        choices: allowed values.
        rule: ``(predicate, "what it must be")`` for anything else (e.g. even numbers).
        parse, text: CLI text -> value and value -> CLI text, for fields not typed as text.
        metavar: how help names the value(s).
        join: further fields this option fills (one multi-value option, e.g. ``--res LOW HIGH``).
        cli: False keeps the field out of the CLI.
        short: a short flag (``-q``).
    """
    meta = {META: Declared(help=help, flag=flag, unit=unit, ge=ge, gt=gt, le=le, lt=lt,
                           choices=tuple(choices) if choices is not None else None, rule=rule, parse=parse,
                           text=text, metavar=metavar, join=tuple(join), cli=cli, short=short)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def declared(cls_or_obj: Any) -> dict[str, Declared]:
    """Field name -> :class:`Declared` for every declared field, in declaration order."""
    return {f.name: f.metadata[META] for f in fields(cls_or_obj) if META in f.metadata}


def flag_of(cls_or_obj: Any, name: str) -> str:
    """The flag a user types for field ``name`` (a joined field answers with its option's flag)."""
    decl = declared(cls_or_obj)
    for other, d in decl.items():
        if name in d.join:
            return _flag(other, d)
    d = decl.get(name)
    if d is None or not d.cli:
        return name
    return _flag(name, d)


def _flag(name: str, d: Declared) -> str:
    return (d.flag or "--" + name.replace("_", "-")).split("/")[0]


def bounds_text(d: Declared) -> str:
    """Bounds and choices of a declaration as text (empty when there are none)."""
    parts = []
    low = f"≥ {d.ge:g}" if d.ge is not None else (f"> {d.gt:g}" if d.gt is not None else "")
    high = f"≤ {d.le:g}" if d.le is not None else (f"< {d.lt:g}" if d.lt is not None else "")
    if d.ge is not None and d.le is not None:
        parts.append(f"{d.ge:g}–{d.le:g}")
    else:
        parts += [p for p in (low, high) if p]
    if d.choices is not None:
        parts.append("one of " + ", ".join(map(str, d.choices)))
    if d.rule is not None:
        parts.append(d.rule[1])
    return ", ".join(parts)


def _values(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _values(item)]
    return [value]


def _violation(d: Declared, value: Any) -> str | None:
    """Why ``value`` breaks declaration ``d`` (None when it does not)."""
    if value is None:
        return None
    if d.choices is not None and value not in d.choices:
        return "must be one of " + ", ".join(map(str, d.choices))
    if d.rule is not None and not d.rule[0](value):
        return f"must be {d.rule[1]}"
    for v in _values(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and math.isnan(v):
            return "must be a number, not NaN"
        if (d.ge is not None and not v >= d.ge) or (d.gt is not None and not v > d.gt) or \
                (d.le is not None and not v <= d.le) or (d.lt is not None and not v < d.lt):
            return f"must be {bounds_text(dataclasses.replace(d, choices=None, rule=None))}" + \
                (f" {d.unit}" if d.unit else "")
    return None


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class Params:
    """Base of every stage's options dataclass: :meth:`validate` from the declarations.

    Subclasses are ``@dataclass`` classes whose fields use :func:`option`; they add
    cross-field rules in :meth:`check` (raise ``ValueError`` naming the flags, see
    :meth:`flag`). ``PRESETS`` (name -> {field: value}) makes ``--preset NAME`` available
    (``PRESETS_HELP`` describes them in ``--help``).
    """

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    PRESETS_HELP: ClassVar[str] = ""

    def validate(self) -> None:
        """Raise ValueError ``"--flag VALUE: must be ..."`` for the first impossible value."""
        for name, d in declared(self).items():
            value = getattr(self, name)
            why = _violation(d, value)
            if why is not None:
                shown = d.text(value) if d.text is not None else _shown(value)
                raise ValueError(f"{flag_of(self, name)} {shown}: {why}")
        self.check()

    def check(self) -> None:
        """Cross-field rules (none by default); raise ValueError naming the flags."""

    @classmethod
    def flag(cls, name: str) -> str:
        """The flag of field ``name`` (for messages of :meth:`check`)."""
        return flag_of(cls, name)


def apply_preset(params: Params, preset: str | None, explicit: set[str]) -> Params:
    """``params`` with the preset's values for every field not given explicitly.

    Raises:
        ValueError: unknown preset name.
    """
    if preset is None:
        return params
    presets = type(params).PRESETS
    if preset not in presets:
        raise ValueError(f"--preset {preset}: unknown preset; use one of {', '.join(presets)}")
    names = {f.name for f in fields(params)}
    values = {k: v for k, v in presets[preset].items() if k in names and k not in explicit}
    return dataclasses.replace(params, **values)
