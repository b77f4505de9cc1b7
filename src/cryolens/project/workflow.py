"""Workflows: a TOML file of steps, each a recorded job, run in order, skipped when unchanged, resumable.

Format (see ``examples/workflow.toml``)::

    [workflow]
    name = "tutorial"          # optional; default the file name without .toml
    project = "."              # optional; relative to this file; default its folder (--project overrides)

    [steps.sim]                # or [[step]] tables with name = "sim"; steps run in file order
    stage = "simulate particles"                       # the cryolens command words
    params = { n = 2000, box = 64, pixel_size = 3, seed = 1 }

    [steps.rec]
    stage = "reconstruct"
    params = { in = "{sim.particles}", sym = "C1" }

    [steps.ref]
    stage = "refine"
    profile = "gpu-queue"      # optional: run on this profile's cluster (--profile)
    params = { in = "{sim.particles}", ref = "{rec.map}" }

    [steps.good]
    stage = "select particles"
    params = { in = "{rec.particles}", where = ["rlnDefocusU < 20000"] }

* ``stage``: the command words (``simulate particles``, ``reconstruct``, ``select
  micrographs`` ...): any cryolens command that takes ``--project``.
* ``profile``: optional; the run profile (``profiles.toml``, see ``cryolens profiles list``) whose
  cluster runs the step (``--profile NAME``), for the stages that take ``--backend``. It must exist
  in the user's or the project's profiles file. Where a step computes does not change its results,
  so a changed profile does not re-run a finished step.
* ``params``: its options without dashes, snake or kebab case (``pixel_size`` or
  ``pixel-size``); booleans are flags (``no_ctf = true``; ``carbon = false`` gives
  ``--no-carbon``); a list repeats an option that may repeat (``where = [..]``) and
  gives the values of a multi-value option (``defocus = [10000, 25000]``). ``out``,
  ``project`` and ``quiet`` are set by the runner.
* References in strings: ``{STEP.OUTPUT}`` is an output of an earlier step, as named in
  its ``job.json`` ``outputs`` (``{sim.particles}``, ``{rec.map}``), ``{STEP.folder}`` its
  job folder; both as paths relative to the project. ``{{`` and ``}}`` are literal braces.
* Steps run in the project folder (relative paths are relative to it), each as
  ``python -m cryolens.cli.main WORDS OPTIONS --project P --quiet`` in its own process,
  recorded in the project database as ``<Stage>/jobNNN``. Interactive choices are rules:
  ``select micrographs|particles`` with ``where``/``class`` params.

Running (plan, skip, resume): :mod:`cryolens.project.workflow_run`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryolens.errors import InputError

__all__ = ["OptionSpec", "StageSpec", "Step", "Workflow", "load_workflow", "build_argv",
           "substitute_refs", "parse_settings", "merge_settings"]

RESERVED = frozenset({"out", "project", "quiet", "help"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_REF = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*)\}")


def _norm(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option: ``flag`` (``--pixel-size``), on/off ``off_flag`` (``--no-carbon``), arity."""

    flag: str
    is_flag: bool = False
    off_flag: str | None = None
    multiple: bool = False
    nargs: int = 1


@dataclass(frozen=True)
class StageSpec:
    """A command usable as a step: its words, options by normalised name, and an argv checker.

    ``check(argv)`` raises ValueError with the command line parser's message when ``argv``
    does not parse (types, missing required options, impossible values); ``outputs`` are the
    names (or regular expressions) of the outputs the command declares, None when they are
    known only after it ran. The CLI layer builds these specs from the commands' declarations.
    """

    words: tuple[str, ...]
    options: Mapping[str, OptionSpec]
    check: Callable[[list[str]], None] | None = None
    outputs: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return " ".join(self.words)


@dataclass
class Step:
    name: str
    stage: StageSpec
    params: dict[str, Any]
    refs: list[tuple[str, str]] = field(default_factory=list)
    profile: str | None = None


@dataclass
class Workflow:
    path: Path
    name: str
    project: Path
    steps: list[Step]

    def index(self, name: str, what: str) -> int:
        for i, s in enumerate(self.steps):
            if s.name == name:
                return i
        raise InputError(f"{self.path}: {what} {name}: no such step (steps: {', '.join(s.name for s in self.steps)}).")


# -- parsing and validation ----------------------------------------------------------------------------------------
def _refs_in(value: Any) -> Iterator[tuple[str, str]]:
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, list):
            yield from _refs_in(v)
        elif isinstance(v, str):
            yield from ((m.group(1), m.group(2)) for m in _REF.finditer(v) if m.group(1))


def substitute_refs(value: Any, lookup: Callable[[str, str], str]) -> Any:
    """``value`` (a params table, list or string) with every ``{step.attr}`` replaced by ``lookup(step, attr)``."""
    if isinstance(value, dict):
        return {k: substitute_refs(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_refs(v, lookup) for v in value]
    if not isinstance(value, str):
        return value
    return _REF.sub(lambda m: m.group(0)[0] if not m.group(1) else lookup(m.group(1), m.group(2)), value)


def _text(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def build_argv(spec: StageSpec, params: Mapping[str, Any]) -> list[str]:
    """Options of ``params`` (already validated and resolved) as command-line words."""
    argv: list[str] = []
    for key, value in params.items():
        opt = spec.options[key]
        if opt.is_flag:
            argv += [opt.flag] if value else ([opt.off_flag] if opt.off_flag else [])
        elif opt.multiple:
            for item in value if isinstance(value, list) else [value]:
                argv += [opt.flag, *map(_text, item)] if isinstance(item, list) else [opt.flag, _text(item)]
        elif isinstance(value, list):
            argv += [opt.flag, *map(_text, value)]
        else:
            argv += [opt.flag, _text(value)]
    return argv


def _check_value(where: str, key: str, opt: OptionSpec, value: Any) -> None:
    def scalar(v: Any) -> bool:
        return isinstance(v, (str, int, float)) and not isinstance(v, bool)

    if opt.is_flag:
        if not isinstance(value, bool):
            raise InputError(f"{where}: {key} is a flag; give true or false.")
        return
    if isinstance(value, bool):
        raise InputError(f"{where}: {key} takes a value, not true/false.")
    items = value if (opt.multiple and isinstance(value, list)) else [value]
    for item in items:
        if opt.nargs > 1:
            if not (isinstance(item, list) and len(item) == opt.nargs and all(map(scalar, item))):
                raise InputError(f"{where}: {key} takes {opt.nargs} values; give a list like [a, b].")
        elif not scalar(item):
            raise InputError(f"{where}: {key} takes one value{' (or a list, to repeat it)' if opt.multiple else ''}; "
                             f"got {value!r}.")


def _parse_step(path: Path, name: str, body: Any, catalog: Mapping[str, StageSpec], earlier: list[Step],
                later: set[str]) -> Step:
    where = f"{path}: step {name}"
    if not isinstance(body, dict):
        raise InputError(f"{where}: must be a table with stage and params.")
    extra = sorted(set(body) - {"stage", "params", "name", "description", "profile"})
    if extra:
        raise InputError(f"{where}: unknown key(s) {', '.join(extra)}; a step has stage, params (and description, "
                         "profile).")
    words = " ".join(str(body.get("stage", "")).replace("_", " ").split())
    if words not in catalog:
        raise InputError(f"{where}: unknown stage {body.get('stage')!r}; use one of: {', '.join(sorted(catalog))}.")
    spec = catalog[words]
    raw = body.get("params", {})
    if not isinstance(raw, dict):
        raise InputError(f"{where}: params must be a table, e.g. params = {{ n = 100 }}.")
    params: dict[str, Any] = {}
    for key, value in raw.items():
        k = _norm(key)
        if k in RESERVED:
            raise InputError(f"{where}: {key} is set by the workflow runner; remove it from params.")
        if k not in spec.options:
            usable = sorted(o for o in spec.options if o not in RESERVED)
            raise InputError(f"{where}: {words} has no option {key}; options: {', '.join(usable)}.")
        _check_value(where, key, spec.options[k], value)
        same = [other for other in params if spec.options[other].flag == spec.options[k].flag]
        if same:
            raise InputError(f"{where}: {key} and {same[0]} are the same option ({spec.options[k].flag}); keep one.")
        params[k] = value
    profile = body.get("profile")
    if profile is not None:
        if not isinstance(profile, str) or not _NAME.match(profile):
            raise InputError(f"{where}: profile must be the name of a run profile, e.g. profile = \"gpu-queue\"; "
                             f"got {profile!r}.")
        if "profile" not in spec.options or "backend" not in spec.options:
            usable = sorted(w for w, sp in catalog.items() if "profile" in sp.options and "backend" in sp.options)
            raise InputError(f"{where}: {words} runs in one process and takes no profile; profiles apply to: "
                             f"{', '.join(usable)}.")
        both = [k for k in ("backend", "profile") if k in params]
        if both:
            raise InputError(f"{where}: profile and params.{both[0]} both say where to compute; keep one.")
    step = Step(name, spec, params, list(_refs_in(list(params.values()))), profile=profile)
    by_name = {s.name: s for s in earlier}
    for ref_step, attr in step.refs:
        if ref_step == name or ref_step in later:
            raise InputError(f"{where}: {{{ref_step}.{attr}}} refers to {'itself' if ref_step == name else 'a later step'}; "
                             "a step can only use outputs of steps above it.")
        if ref_step not in by_name:
            raise InputError(f"{where}: {{{ref_step}.{attr}}} names no step; steps above: "
                             f"{', '.join(by_name) or 'none'}.")
        outputs = by_name[ref_step].stage.outputs
        if attr != "folder" and outputs is not None and not re.fullmatch("|".join(outputs), attr):
            raise InputError(f"{where}: {{{ref_step}.{attr}}}: {by_name[ref_step].stage.name} has no output {attr}; "
                             f"outputs: {', '.join(outputs)} (or folder).")
    if spec.check is not None:  # types and required options, with a stand-in for each reference
        try:
            spec.check(build_argv(spec, substitute_refs(params, lambda s, a: f"{s}.{a}")))
        except ValueError as e:
            if not any(f"{s}.{a}" in str(e) for s, a in step.refs):  # a stand-in is no existing file: fine
                raise InputError(f"{where}: {e}") from None
    return step


def merge_settings(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Step settings ``{step: {param: value}}`` laid over each other, later layers winning per parameter."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for step, values in layer.items():
            out.setdefault(step, {}).update(values)
    return out


def parse_settings(items: list[str] | None, path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``--set STEP.PARAM=VALUE`` items as ``{step: {param: value}}``; VALUE is read as a TOML value
    (``4``, ``2.5``, ``true``, ``[1, 2]``, ``"text"``), else taken as text."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, eq, text = item.partition("=")
        step, dot, param = target.strip().partition(".")
        if not (eq and dot and step and param):
            raise InputError(f"{path}: --set {item!r}: write STEP.PARAM=VALUE, e.g. --set movies.n_movies=4.")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out.setdefault(step, {})[param.strip()] = value
    return out


def load_workflow(path: str | os.PathLike, catalog: Mapping[str, StageSpec], *,
                  project: str | os.PathLike | None = None,
                  settings: Mapping[str, Mapping[str, Any]] | None = None) -> Workflow:
    """Read and validate a workflow file (every step, every reference) before anything runs.

    ``settings`` (``{step: {param: value}}``, from :func:`parse_settings`) replace or add step params
    before validation, so a changed value reruns that step and the steps using its outputs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: workflow file not found; check the path.")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML ({e}); fix the syntax.") from None
    extra = sorted(set(doc) - {"workflow", "step", "steps"})
    if extra:
        raise InputError(f"{path}: unknown table(s) {', '.join(extra)}; use [workflow] and [steps.NAME] or [[step]].")
    head = doc.get("workflow", {})
    if not isinstance(head, dict) or set(head) - {"name", "project", "description"}:
        raise InputError(f"{path}: [workflow] takes name, project and description only.")
    name = str(head.get("name", path.stem))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise InputError(f"{path}: workflow name {name!r} may only hold letters, digits, '.', '_' and '-'.")
    if "step" in doc and "steps" in doc:
        raise InputError(f"{path}: use either [[step]] or [steps.NAME] tables, not both.")
    if "step" in doc:
        if not isinstance(doc["step"], list):
            raise InputError(f"{path}: [[step]] must be an array of tables (write [[step]], not [step]).")
        items = [(str(s.get("name", f"step{i + 1}")) if isinstance(s, dict) else f"step{i + 1}", s)
                 for i, s in enumerate(doc["step"])]
    else:
        items = list(doc.get("steps", {}).items())
    if not items:
        raise InputError(f"{path}: no steps; add [steps.NAME] tables with stage and params.")
    names = [n for n, _ in items]
    for n in names:
        if not _NAME.match(n):
            raise InputError(f"{path}: step name {n!r} must start with a letter and hold letters, digits, '_', '-'.")
        if names.count(n) > 1:
            raise InputError(f"{path}: step name {n} is used twice; give each step its own name.")
    for step_name, values in (settings or {}).items():
        if step_name not in names:
            raise InputError(f"{path}: --set {step_name}.…: no such step (steps: {', '.join(names)}).")
        body = dict(items[names.index(step_name)][1])
        body["params"] = {**body.get("params", {}), **values}
        items[names.index(step_name)] = (step_name, body)
    steps: list[Step] = []
    for i, (n, body) in enumerate(items):
        steps.append(_parse_step(path, n, body, catalog, steps, set(names[i + 1:])))
    root = Path(project) if project is not None else path.parent / str(head.get("project", "."))
    _check_profiles(path, steps, root.resolve())
    return Workflow(path=path, name=name, project=root.resolve(), steps=steps)


def _check_profiles(path: Path, steps: list[Step], root: Path) -> None:
    """Every step's ``profile`` names a run profile of the user's or the project's profiles file."""
    named = [s for s in steps if s.profile is not None]
    if not named:
        return
    from cryolens.compute.profiles import default_profile_files, load_profiles

    known = load_profiles(root)
    for s in named:
        if s.profile not in known:
            files = " or ".join(str(f) for f in default_profile_files(root))
            have = f" (known: {', '.join(sorted(known))})" if known else ""
            raise InputError(f"{path}: step {s.name}: no run profile named {s.profile!r} in {files}{have}; add "
                             f"[profiles.{s.profile}] there or fix the name.")
