"""Running a workflow: plan, skip unchanged steps, run the others as recorded jobs, resume.

Workflow files and their checks: :mod:`cryolens.project.workflow`.

Execution: the state lives in ``<project>/.cryolens/workflows/<name>.json`` (written
atomically), with each step's log next to it in ``<name>/<step>.log``. A step's *hash*
covers its stage, its resolved options and the content (sha256; size and mtime above
64 MiB) of every file they name, not the step's ``profile`` (where it runs). A step is
skipped when an earlier run of it with the same hash finished and its folder still holds
the success marker, ``job.json`` and every output; otherwise it runs (a failed or killed run is simply run again). A step
that re-runs gets a new job folder, so the steps that use its outputs see new inputs
and re-run too. ``until`` stops after a step, ``force`` re-runs steps regardless.
Only one runner per workflow at a time (a lock file); the lock dies with its process.
Everything is found relative to the project folder, so a project moved to another place
(``mv``) keeps its finished steps.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryolens.errors import InputError
from cryolens.io.atomic import write_json_atomic
from cryolens.jobs.runner import SUCCESS_MARKER
from cryolens.project.db import HASH_LIMIT, Project, find_project, init_project, open_project
from cryolens.jobs.processes import process_alive
from cryolens.project.workflow import Step, Workflow, build_argv, substitute_refs

__all__ = ["PlanRow", "plan_workflow", "run_workflow", "state_path", "STATE_DIR"]

STATE_DIR = ".cryolens/workflows"
HISTORY = 20  # finished runs remembered per step (an old one is reused when its hash comes back)


@dataclass
class PlanRow:
    step: str
    stage: str
    action: str  # run | skip | stop
    reason: str
    job: str = ""



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
        full = _output_path(root, folder, p)
        if not full.exists():
            return None
        outputs[name] = _rel(root, full)
    return outputs


def _output_path(root: Path, folder: str, name: str) -> Path:
    """Where an output that ``job.json`` names lies now: a relative name is relative to the project; an absolute
    one inside the job's folder (``.../<folder>/x``) is taken inside ``root/<folder>``, so a project that was
    moved or copied to another place finds its own outputs there; any other absolute name is used as is."""
    p = Path(name)
    if not p.is_absolute():
        return root / p
    parts, inner = p.parts, Path(folder).parts
    for i in range(len(parts) - len(inner), 0, -1):  # the rightmost match
        if parts[i:i + len(inner)] == inner:
            return root.joinpath(*inner, *parts[i + len(inner):])
    return p


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
    if status == "running" and record.get("pid") and process_alive(record["pid"], record.get("started")):
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
        return build_argv(step.stage, substitute_refs(ordered, lookup))

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
    where = ["--profile", step.profile] if step.profile else []  # not hashed: it does not change results
    command = [sys.executable, "-m", "cryolens.cli.main", *step.stage.words, *argv, *where, "--project", str(run.root),
               *quiet]
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
        try:
            init_project(wf.project)
        except OSError as e:
            raise InputError(f"{wf.project}: cannot create the project folder here ({e.strerror}); "
                             "choose a writable folder with --project (cryolens demo: --out).") from None
        on_event("project", wf.steps[0], {"project": str(wf.project)})
    run = _Run(wf, until=until, force=force)
    done: dict[str, str] = {}
    with _locked(run.state_file):
        run.state = _load_state(run.state_file)  # re-read under the lock
        for i, step in enumerate(wf.steps[:run.last + 1]):
            record = run.state["steps"].get(step.name, {})
            if record.get("status") == "running" and record.get("pid") and \
                    process_alive(record["pid"], record.get("started")):
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
