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

    [steps.good]
    stage = "select particles"
    params = { in = "{rec.particles}", where = ["rlnDefocusU < 20000"] }

* ``stage``: the command words (``simulate particles``, ``reconstruct``, ``select
  micrographs`` ...): any cryolens command that takes ``--project``.
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

Execution: the state lives in ``<project>/.cryolens/workflows/<name>.json`` (written
atomically), with each step's log next to it in ``<name>/<step>.log``. A step's *hash*
covers its stage, its resolved options and the content (sha256; size and mtime above
64 MiB) of every file they name. A step is skipped when an earlier run of it with the
same hash finished and its folder still holds the success marker, ``job.json`` and
every output; otherwise it runs (a failed or killed run is simply run again). A step
that re-runs gets a new job folder, so the steps that use its outputs see new inputs
and re-run too. ``until`` stops after a step, ``force`` re-runs steps regardless.
Only one runner per workflow at a time (a lock file); the lock dies with its process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryolens.errors import InputError
from cryolens.io.atomic import write_json_atomic
from cryolens.jobs.runner import SUCCESS_MARKER
from cryolens.project.db import HASH_LIMIT, Project, _process_alive, find_project, init_project, open_project

__all__ = ["OptionSpec", "StageSpec", "Step", "Workflow", "PlanRow", "KNOWN_OUTPUTS", "load_workflow",
           "plan_workflow", "run_workflow", "build_argv", "state_path"]

STATE_DIR = ".cryolens/workflows"
RESERVED = frozenset({"out", "project", "quiet", "help"})
HISTORY = 20  # finished runs remembered per step (an old one is reused when its hash comes back)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_REF = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*)\}")
#: Output names of the stages whose outputs are known before running (others are checked when they ran).
KNOWN_OUTPUTS: dict[str, str] = {
    "simulate particles": r"particles|stack|truth_map(_class\d+|_morph[01])?",
    "simulate micrographs": r"micrographs|coords|particles_truth|truth_map(_class\d+)?",
    "simulate movies": r"movies|micrographs_truth|particles_truth|truth_map(_class\d+)?",
    "reconstruct": r"particles|half1|half2|map|fsc",
    "select micrographs": r"micrographs|rejected",
    "select particles": r"particles|rejected",
}


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
    does not parse (types, missing required options); the CLI layer builds these specs.
    """

    words: tuple[str, ...]
    options: Mapping[str, OptionSpec]
    check: Callable[[list[str]], None] | None = None

    @property
    def name(self) -> str:
        return " ".join(self.words)


@dataclass
class Step:
    name: str
    stage: StageSpec
    params: dict[str, Any]
    refs: list[tuple[str, str]] = field(default_factory=list)


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


@dataclass
class PlanRow:
    step: str
    stage: str
    action: str  # run | skip | stop
    reason: str
    job: str = ""


# -- parsing and validation ----------------------------------------------------------------------------------------
def _refs_in(value: Any) -> Iterator[tuple[str, str]]:
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, list):
            yield from _refs_in(v)
        elif isinstance(v, str):
            yield from ((m.group(1), m.group(2)) for m in _REF.finditer(v) if m.group(1))


def _substitute(value: Any, lookup: Callable[[str, str], str]) -> Any:
    """``value`` (a params table, list or string) with every ``{step.attr}`` replaced by ``lookup(step, attr)``."""
    if isinstance(value, dict):
        return {k: _substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, lookup) for v in value]
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
    extra = sorted(set(body) - {"stage", "params", "name", "description"})
    if extra:
        raise InputError(f"{where}: unknown key(s) {', '.join(extra)}; a step has stage, params (and description).")
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
    step = Step(name, spec, params, list(_refs_in(list(params.values()))))
    by_name = {s.name: s for s in earlier}
    for ref_step, attr in step.refs:
        if ref_step == name or ref_step in later:
            raise InputError(f"{where}: {{{ref_step}.{attr}}} refers to {'itself' if ref_step == name else 'a later step'}; "
                             "a step can only use outputs of steps above it.")
        if ref_step not in by_name:
            raise InputError(f"{where}: {{{ref_step}.{attr}}} names no step; steps above: "
                             f"{', '.join(by_name) or 'none'}.")
        pattern = KNOWN_OUTPUTS.get(by_name[ref_step].stage.name)
        if attr != "folder" and pattern is not None and not re.fullmatch(pattern, attr):
            raise InputError(f"{where}: {{{ref_step}.{attr}}}: {by_name[ref_step].stage.name} has no output {attr}; "
                             f"outputs: {pattern.replace('|', ', ')} (or folder).")
    if spec.check is not None:  # types and required options, with a stand-in for each reference
        try:
            spec.check(build_argv(spec, _substitute(params, lambda s, a: f"{s}.{a}")))
        except ValueError as e:
            if not any(f"{s}.{a}" in str(e) for s, a in step.refs):  # a stand-in is no existing file: fine
                raise InputError(f"{where}: {e}") from None
    return step


def load_workflow(path: str | os.PathLike, catalog: Mapping[str, StageSpec], *,
                  project: str | os.PathLike | None = None) -> Workflow:
    """Read and validate a workflow file (every step, every reference) before anything runs."""
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
    steps: list[Step] = []
    for i, (n, body) in enumerate(items):
        steps.append(_parse_step(path, n, body, catalog, steps, set(names[i + 1:])))
    root = Path(project) if project is not None else path.parent / str(head.get("project", "."))
    return Workflow(path=path, name=name, project=root.resolve(), steps=steps)


# -- state -------------------------------------------------------------------------------------------------------------
def state_path(root: str | os.PathLike, name: str) -> Path:
    return Path(root) / STATE_DIR / f"{name}.json"


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault("steps", {})
    state.setdefault("digests", {})
    return state


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``<state>.lock`` for the whole run (flock: released by the kernel when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{path.with_suffix('.lock')}: this workflow is being run by another process; "
                             "wait for it to end.") from None
        yield
    finally:
        os.close(fd)


def _digest(path: Path, cache: dict[str, list]) -> str:
    """sha256 of a file (size + mtime above HASH_LIMIT), cached by (size, mtime_ns)."""
    st = path.stat()
    key = str(path)
    hit = cache.get(key)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    if st.st_size > HASH_LIMIT:
        digest = f"size={st.st_size},mtime_ns={st.st_mtime_ns}"
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    cache[key] = [st.st_size, st.st_mtime_ns, digest]
    return digest


def _step_hash(root: Path, stage: str, argv: list[str], cache: dict[str, list]) -> str:
    files = {}
    for word in argv:
        p = Path(word) if Path(word).is_absolute() else root / word
        try:
            if not word.startswith("-") and p.is_file():
                files[word] = _digest(p, cache)
        except OSError:  # a value that is no possible path (too long, ...)
            continue
    text = json.dumps({"stage": stage, "argv": argv, "files": files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _intact(root: Path, folder: str) -> dict[str, str] | None:
    """Outputs (project-relative) of a finished job folder that is still complete, else None."""
    d = root / folder
    try:
        record = json.loads((d / "job.json").read_text())
    except (OSError, ValueError):
        return None
    if not (d / SUCCESS_MARKER).is_file() or record.get("status") != "finished":
        return None
    outputs = {}
    for name, p in record.get("outputs", {}).items():
        full = Path(p) if Path(p).is_absolute() else root / p
        if not full.exists():
            return None
        outputs[name] = _rel(root, full)
    return outputs


def _rel(root: Path, path: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.abspath(path)).as_posix()


def _reusable(root: Path, record: dict | None, digest: str) -> tuple[dict, dict] | None:
    """The latest finished run of a step with this hash whose folder is intact: (run, outputs)."""
    for run in reversed((record or {}).get("history", [])):
        if run["hash"] == digest:
            outputs = _intact(root, run["folder"])
            if outputs is not None:
                return run, outputs
    return None


def _why_run(root: Path, record: dict | None, digest: str) -> str:
    if not record or not record.get("history") and record.get("status") is None:
        return "never run"
    status = record.get("status")
    if status == "running" and record.get("pid") and _process_alive(record["pid"], record.get("started")):
        return f"running now (process {record['pid']})"
    if status in ("running", "failed"):
        return "last run was killed" if status == "running" else "last run failed"
    if any(r["hash"] == digest for r in record.get("history", [])):
        return "its job folder is gone or incomplete"
    return "params or inputs changed"


# -- running -----------------------------------------------------------------------------------------------------------
Event = Callable[[str, Step, dict], None]


class _Run:
    """One pass over a workflow: resolves references from the runs chosen so far."""

    def __init__(self, wf: Workflow, *, until: str | None, force: Sequence[str]) -> None:
        self.wf, self.root = wf, wf.project
        self.last = wf.index(until, "--until") if until is not None else len(wf.steps) - 1
        self.force = {wf.steps[wf.index(f, "--force")].name for f in force}
        self.state_file = state_path(self.root, wf.name)
        self.state = _load_state(self.state_file)
        self.chosen: dict[str, tuple[str, dict[str, str]]] = {}  # step -> (folder, outputs)

    def argv(self, step: Step) -> list[str]:
        def lookup(ref: str, attr: str) -> str:
            folder, outputs = self.chosen[ref]
            if attr == "folder":
                return folder
            if attr not in outputs:
                raise InputError(f"{self.wf.path}: step {step.name}: {{{ref}.{attr}}}: step {ref} ({folder}) has no "
                                 f"output {attr}; outputs: {', '.join(outputs)} (or folder).")
            return outputs[attr]
        ordered = {k: step.params[k] for k in sorted(step.params)}  # reordering params changes no hash
        return build_argv(step.stage, _substitute(ordered, lookup))

    def decide(self, step: Step, argv: list[str]) -> tuple[str, str, tuple[dict, dict] | None]:
        digest = _step_hash(self.root, step.stage.name, argv, self.state["digests"])
        record = self.state["steps"].get(step.name)
        if step.name in self.force:
            return digest, "forced (--force)", None
        found = _reusable(self.root, record, digest)
        return digest, ("unchanged" if found else _why_run(self.root, record, digest)), found

    def save(self) -> None:
        self.state.update(workflow=self.wf.name, toml=str(self.wf.path.resolve()), updated=time.time())
        write_json_atomic(self.state_file, self.state)


def plan_workflow(wf: Workflow, *, until: str | None = None, force: Sequence[str] = ()) -> list[PlanRow]:
    """What :func:`run_workflow` would do, without running or writing anything."""
    run = _Run(wf, until=until, force=force)
    rows: list[PlanRow] = []
    changing: set[str] = set()
    for i, step in enumerate(wf.steps):
        if i > run.last:
            rows.append(PlanRow(step.name, step.stage.name, "stop", f"after --until {wf.steps[run.last].name}"))
            continue
        upstream = sorted({r for r, _ in step.refs} & changing)
        if upstream and step.name not in run.force:
            rows.append(PlanRow(step.name, step.stage.name, "run", f"new input from {', '.join(upstream)}"))
            changing.add(step.name)
            continue
        _, reason, found = run.decide(step, run.argv(step))
        if found:
            run.chosen[step.name] = (found[0]["folder"], found[1])
            rows.append(PlanRow(step.name, step.stage.name, "skip", reason, found[0]["folder"]))
        else:
            rows.append(PlanRow(step.name, step.stage.name, "run", reason))
            changing.add(step.name)
    return rows


def _child_error(log: Path, code: int) -> str:
    """The one-sentence error a failed step printed (``error: ...``), else its last line, else its status."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1]
    if lines:
        return lines[-1]
    return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"


def _find_job(project: Project, pid: int, since: float):
    for rec in reversed(project.jobs()):
        if rec.pid == pid and rec.created >= since - 1.0:
            return rec
    return None


def _execute(run: _Run, step: Step, argv: list[str], digest: str, on_event: Event) -> None:
    project = open_project(run.root)
    log = run.state_file.with_suffix("") / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    quiet = ["--quiet"] if "quiet" in step.stage.options else []
    command = [sys.executable, "-m", "cryolens.cli.main", *step.stage.words, *argv, "--project", str(run.root), *quiet]
    record = run.state["steps"].setdefault(step.name, {})
    history = record.get("history", [])
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=run.root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    record.clear()
    record.update(stage=step.stage.name, status="running", hash=digest, argv=argv, pid=proc.pid, started=t0,
                  folder=None, job_id=None, log=_rel(run.root, log), history=history)
    run.save()
    on_event("start", step, {"command": command})
    job = None
    try:
        while proc.poll() is None:
            if job is None:
                job = _find_job(project, proc.pid, t0)
                if job is not None:
                    record.update(folder=job.folder, job_id=job.id)
                    run.save()
                    on_event("job", step, {"folder": job.folder, "job": job.name})
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    except BaseException:  # Ctrl-C reaches the step's process too (same process group): let it end
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        record.update(status="failed", ended=time.time(), error="interrupted")
        run.save()
        raise
    job = job or _find_job(project, proc.pid, t0)
    folder = job.folder if job is not None else None
    outputs = _intact(run.root, folder) if folder is not None and proc.returncode == 0 else None
    record.update(folder=folder, job_id=job.id if job else None, ended=time.time())
    if outputs is None:
        error = _child_error(log, proc.returncode)
        record.update(status="failed", error=error)
        run.save()
        on_event("fail", step, {"error": error, "log": str(log)})
        raise InputError(f"{run.wf.path}: step {step.name} ({step.stage.name}) failed: {error.rstrip('.')}; "
                         f"log: {log}. Fix it and rerun: finished steps are kept.")
    record.update(status="finished", error=None)
    history.append({"hash": digest, "folder": folder, "job_id": job.id, "ended": record["ended"]})
    del history[:-HISTORY]
    run.chosen[step.name] = (folder, outputs)
    run.save()
    summary = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    on_event("finish", step, {"folder": folder, "job": job.name, "seconds": record["ended"] - t0,
                              "summary": summary[-1] if summary else ""})


def _adopt(run: _Run, name: str) -> None:
    """A step recorded running whose runner died but whose job finished anyway joins the step's history."""
    record = run.state["steps"].get(name)
    if not record or record.get("status") != "running" or not record.get("hash"):
        return
    folder = record.get("folder")
    if folder is None and record.get("pid"):
        job = _find_job(open_project(run.root), record["pid"], record.get("started", 0.0))
        folder = job.folder if job is not None else None
    if folder is not None and _intact(run.root, folder) is not None:
        record["history"] = [*record.get("history", []), {"hash": record["hash"], "folder": folder,
                                                          "job_id": record.get("job_id"), "ended": time.time()}]
        record.update(status="finished", folder=folder, error=None)
        run.save()


def run_workflow(wf: Workflow, *, until: str | None = None, force: Sequence[str] = (),
                 on_event: Event | None = None) -> dict[str, str]:
    """Run the workflow's steps in order (see the module docstring); returns ``{step: "ran"|"skipped"}``.

    ``on_event(kind, step, info)`` hears ``skip`` (reason, folder), ``start`` (command), ``job`` (folder),
    ``finish`` (folder, seconds, summary) and ``fail`` (error, log). A failing step raises InputError.
    """
    on_event = on_event or (lambda kind, step, info: None)
    if find_project(wf.project) is None:
        init_project(wf.project)
        on_event("project", wf.steps[0], {"project": str(wf.project)})
    run = _Run(wf, until=until, force=force)
    done: dict[str, str] = {}
    with _locked(run.state_file):
        run.state = _load_state(run.state_file)  # re-read under the lock
        for i, step in enumerate(wf.steps[:run.last + 1]):
            record = run.state["steps"].get(step.name, {})
            if record.get("status") == "running" and record.get("pid") and \
                    _process_alive(record["pid"], record.get("started")):
                raise InputError(f"{wf.path}: step {step.name} is still running as process {record['pid']} "
                                 f"({record.get('folder') or 'no job yet'}); wait for it or kill it, then rerun.")
            _adopt(run, step.name)
            argv = run.argv(step)
            digest, reason, found = run.decide(step, argv)
            if found is not None:
                run.chosen[step.name] = (found[0]["folder"], found[1])
                if record.get("status") != "finished" or record.get("folder") != found[0]["folder"]:
                    record.update(status="finished", folder=found[0]["folder"], job_id=found[0]["job_id"], error=None)
                    run.save()
                done[step.name] = "skipped"
                on_event("skip", step, {"reason": reason, "folder": found[0]["folder"]})
                continue
            on_event("run", step, {"reason": reason})
            _execute(run, step, argv, digest, on_event)
            done[step.name] = "ran"
    return done
