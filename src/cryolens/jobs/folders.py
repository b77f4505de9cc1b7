"""Job folders as transactions: what a folder holds, overwrite by staging and swap, killed jobs reconciled.

A job folder's state is read from its exit markers and ``job.json`` (:func:`folder_state`):

* ``empty``: missing, or holds no job (no ``job.json``, no marker);
* ``finished``: ``CRYOLENS_JOB_EXIT_SUCCESS`` (or ``job.json`` status ``finished``);
* ``failed``: ``CRYOLENS_JOB_EXIT_FAILURE``;
* ``killed``: ``CRYOLENS_JOB_EXIT_ABORTED``, or ``job.json`` says running and its process is gone;
* ``running``: ``job.json`` says running and its process is alive (another host: the folder changed in
  the last :data:`STALE_S` seconds).

``CRYOLENS_JOB_EXIT_ABORTED`` is our analogue of RELION's ``RELION_JOB_EXIT_ABORTED``: the job's process
ended without writing an exit (SIGKILL, power loss, wall-time limit); whoever notices it first (the
project database when read, or the next job started in the folder) writes it with ``status: killed`` in
``job.json`` and removes the job's temporary files (the :func:`cryolens.io.atomic.temporary_path` names
``.<name>.<12 hex>.tmp[.<suffix>]``).

Overwrite (``--overwrite`` on a folder that holds a job): the new job is written into a sibling staging
folder ``.<name>.overwrite.<12 hex>.tmp`` (:func:`staged`); only when it finishes and its outputs pass
their checks does :func:`commit` swap it in (rename the old folder aside to ``.<name>.replaced.<12
hex>.tmp``, rename the staging folder onto the name, delete the old one). A failure removes the staging
folder and leaves the old job byte for byte; a kill leaves the old job in place and the staging folder
under its temporary name (removed when the kill is reconciled or the next overwrite of the folder starts).

Paths written into outputs (STAR files name stacks and micrographs relative to the project root or the
current folder, e.g. ``sim/particles.mrcs``) must name the final folder, not the staging one: a staging
folder is registered as an alias of its final folder (:func:`cryolens.io.paths.alias_folder`), so
:func:`cryolens.io.paths.star_name` and :func:`cryolens.io.paths.final_path` map a path inside it to the
same path in its final folder. Names are computed in the job's own process (the
staging registry is per process; worker processes receive names, not staging folders).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryolens.errors import InputError
from cryolens.io.atomic import write_json_atomic
from cryolens.io.paths import alias_folder
from cryolens.jobs.processes import process_alive

__all__ = ["SUCCESS_MARKER", "FAILURE_MARKER", "ABORTED_MARKER", "MARKERS", "folder_state", "read_job_json",
           "Staging", "staged", "commit", "remove_temporaries",
           "remove_stale_staging", "reconcile_killed", "TMP_PATTERN", "check_target", "mark_unstarted", "staging_of"]

SUCCESS_MARKER = "CRYOLENS_JOB_EXIT_SUCCESS"
FAILURE_MARKER = "CRYOLENS_JOB_EXIT_FAILURE"
ABORTED_MARKER = "CRYOLENS_JOB_EXIT_ABORTED"
MARKERS = (SUCCESS_MARKER, FAILURE_MARKER, ABORTED_MARKER)

#: A temporary name of :func:`cryolens.io.atomic.temporary_path` (optionally followed by the target's suffix).
TMP_PATTERN = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[^.]+)?$")
KILLED_ERROR = "the process ended without recording an exit (killed)"
STALE_S = 300.0  # a job of another host whose folder has not changed for this long is taken as killed


def read_job_json(folder: str | os.PathLike) -> dict | None:
    """``folder/job.json`` as a dict, or None when missing or unreadable."""
    try:
        data = json.loads((Path(folder) / "job.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_state(folder: str | os.PathLike) -> str:
    """``empty``, ``finished``, ``failed``, ``killed`` or ``running`` (see the module docstring)."""
    d = Path(folder)
    if not d.is_dir():
        return "empty"
    if (d / SUCCESS_MARKER).exists():
        return "finished"
    if (d / FAILURE_MARKER).exists():
        return "failed"
    if (d / ABORTED_MARKER).exists():
        return "killed"
    rec = read_job_json(d)
    if rec is None:
        return "empty" if not (d / "job.json").exists() else "failed"
    status = rec.get("status")
    if status == "finished":
        return "finished"
    if status in ("failed", "killed"):
        return str(status)
    return "running" if _alive(d, rec) else "killed"


def check_target(folder: str | os.PathLike, *, overwrite: bool) -> str:
    """The folder's state when a new job may be written there; else InputError (one sentence).

    Refused: a folder where a job is running, and one holding a finished job unless ``overwrite``.
    """
    state = folder_state(folder)
    if state == "running":
        pid = (read_job_json(folder) or {}).get("pid")
        raise InputError(f"{folder}: a job is running in this folder (pid {pid}); wait for it to end, or choose "
                         "another --out.")
    if state == "finished" and not overwrite:
        raise InputError(f"{folder}: holds a finished job; pass --overwrite to replace it (the old job stays until "
                         "the new one succeeds) or choose another --out.")
    return state


def mark_unstarted(folder: str | os.PathLike) -> None:
    """After a command failed before its job started: remove the folder if empty, else make sure it carries
    a marker (FAILURE), never touching a folder that holds a finished or running job."""
    d = Path(folder)
    if not d.is_dir():
        return
    if not any(d.iterdir()):
        d.rmdir()
        return
    if folder_state(d) in ("finished", "running") or any((d / m).exists() for m in MARKERS):
        return
    (d / FAILURE_MARKER).touch()


def _alive(d: Path, rec: dict) -> bool:
    """Whether the job recorded in ``rec`` (job.json says running) still runs: on this host its process
    lives; on another host (a shared file system) its folder changed within :data:`STALE_S` seconds."""
    if rec.get("host") not in (None, socket.gethostname()):
        stamps = [p.stat().st_mtime for p in (d, d / "job.json", d / "run.log") if p.exists()]
        return time.time() - max(stamps, default=0.0) < STALE_S
    pid = rec.get("pid")
    return isinstance(pid, int) and process_alive(pid, rec.get("started") or None)


# -- staging ----------------------------------------------------------------------------------------------------------
@dataclass
class Staging:
    """A staging folder ``path`` that stands for ``final`` until :func:`commit` (then ``committed``); both
    as the caller gave ``final`` (relative to the current folder, or absolute)."""

    final: Path
    path: Path
    committed: bool = False


_ACTIVE: dict[str, Staging] = {}  # absolute staging path -> Staging (this process)


def _staging_name(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def staged(final: str | os.PathLike) -> Iterator[Staging]:
    """Register a new staging folder for ``final`` (not created: the job creates it).

    On exit an uncommitted staging folder (the job failed, or never started) is removed; ``final`` is
    untouched unless :func:`commit` ran. Stale staging folders of ``final`` left by killed runs are removed
    first.
    """
    final = Path(final)  # kept as given (relative stays relative: job.json names outputs the same way)
    remove_stale_staging(final)
    stage = Staging(final=final, path=_staging_name(final, "overwrite"))
    _ACTIVE[os.path.abspath(stage.path)] = stage
    alias_folder(stage.path, stage.final)
    try:
        yield stage
    finally:
        _ACTIVE.pop(os.path.abspath(stage.path), None)
        alias_folder(stage.path, None)
        if not stage.committed:
            shutil.rmtree(stage.path, ignore_errors=True)


def staging_of(folder: str | os.PathLike) -> Staging | None:
    """The active :class:`Staging` whose staging folder is ``folder``, else None."""
    return _ACTIVE.get(os.path.abspath(folder))


def commit(stage: Staging) -> Path:
    """Swap the finished staging folder in: old folder aside, staging onto the name, old deleted.

    Returns the final folder. Between the two renames (microseconds) a kill would leave the old job at
    ``.<name>.replaced.<hex>.tmp`` and the new one at the staging name.
    """
    final = stage.final
    aside = None
    if final.exists():
        aside = _staging_name(final, "replaced")
        os.replace(final, aside)
    os.replace(stage.path, final)
    stage.committed = True
    _ACTIVE.pop(os.path.abspath(stage.path), None)
    alias_folder(stage.path, None)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


# -- cleaning ----------------------------------------------------------------------------------------------------
def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (:data:`TMP_PATTERN`) anywhere below ``folder``; returns those removed."""
    d = Path(folder)
    gone: list[Path] = []
    if not d.is_dir():
        return gone
    for root, _dirs, files in os.walk(d):
        for name in files:
            if TMP_PATTERN.match(name):
                p = Path(root) / name
                try:
                    p.unlink()
                    gone.append(p)
                except OSError:
                    pass
    return gone


def remove_stale_staging(final: str | os.PathLike) -> list[Path]:
    """Remove ``final``'s sibling staging folders whose job is not running (left by killed overwrites)."""
    final = Path(os.path.abspath(final))
    gone: list[Path] = []
    if not final.parent.is_dir():
        return gone
    for kind in ("overwrite", "replaced"):
        for p in final.parent.glob(f".{glob_escape(final.name)}.{kind}.*.tmp"):
            if os.path.abspath(p) in _ACTIVE or not p.is_dir() or folder_state(p) == "running":
                continue
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters ``*?[`` escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def reconcile_killed(folder: str | os.PathLike, *, ended: float | None = None) -> str:
    """Tidy the folder of a job whose process ended without an exit; returns the folder's state after.

    If the folder still holds a finished job (the kill hit an ``--overwrite`` staging folder) only the
    staging folders go and ``finished`` is returned; a folder where another job runs now is left alone
    (``running``). Otherwise the temporary files are removed, ``job.json``
    (if any) says ``status: killed`` with the error, and :data:`ABORTED_MARKER` is written (the folder is
    created if the job never made it): ``killed``.
    """
    d = Path(folder)
    remove_stale_staging(d)
    state = folder_state(d)
    if state in ("finished", "running"):  # running: another live job writes there now; leave it alone
        return state
    remove_temporaries(d)
    rec = read_job_json(d)
    if rec is not None and rec.get("status") not in ("killed", "failed"):
        rec.update(status="killed", error=rec.get("error") or KILLED_ERROR,
                   ended=rec.get("ended") or ended)
        write_json_atomic(d / "job.json", rec)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / FAILURE_MARKER).exists():
        (d / ABORTED_MARKER).touch()
    return "killed"
