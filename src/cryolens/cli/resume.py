"""``--continue JOBDIR`` for the iterative commands (refine, class2d, abinitio).

A continued job runs with the inputs and options recorded in its ``job.json``, in its own folder,
from its last finished iteration (:mod:`cryolens.jobs.checkpoint`). The user need not repeat
anything; an option or input repeated with the same value is accepted, one with another value is
refused with one sentence (exit 2), since the result would be neither the old job nor a new one.
A finished job is not run again (:attr:`Continued.finished`); a folder with no saved iteration is
an error (exit 2).

A command uses it in three steps::

    c = continued_job("refine", folder, params=params, given=given, run=run,
                      inputs={"particles": ("--in", star), "reference": ("--ref", ref)})
    if c.finished: print(c.message); return
    with continue_target("refine", c.folder, run.project) as target:
        run_refine(c.inputs["particles"], ..., target.out, c.params, resume=True, observer=target.observer)
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryolens.cli.common import JobOptions, JobTarget, device_option
from cryolens.errors import InputError
from cryolens.jobs.checkpoint import ContinuePoint, continue_point
from cryolens.params import Params

__all__ = ["CONTINUE_HELP", "Continued", "continued_job", "continue_target", "saved_params"]

CONTINUE_HELP = ("Continue the interrupted job in this folder from its last finished iteration, with the inputs and "
                 "options it was started with (repeat none of them); it finishes in the same folder with the result "
                 "of an uninterrupted run.")


@dataclass
class Continued:
    """What a continued job runs with: its folder, params, inputs (paths by input name), device name.

    ``finished`` jobs are not run again; ``message`` is the sentence to print then.
    """

    point: ContinuePoint
    params: Params
    inputs: dict[str, Path]
    device: str

    @property
    def folder(self) -> Path:
        return self.point.folder

    @property
    def finished(self) -> bool:
        return self.point.finished

    def torch_device(self, run: JobOptions):
        """The job's recorded device; when that one is not on this machine, what ``--device`` (auto) picks."""
        try:
            return device_option(self.device)
        except InputError:
            return device_option(run.device)

    @property
    def message(self) -> str:
        return (f"{self.folder}: the {self.point.record.get('stage')} job there has already finished; there is "
                "nothing to continue (its outputs are in that folder).")


def saved_params(cls: type[Params], record: dict[str, Any], folder: Path) -> Params:
    """The params dataclass from a ``job.json`` record (lists back to tuples), validated.

    Raises:
        InputError: the record's params do not fit ``cls`` (another cryolens version).
    """
    saved = dict(record.get("params") or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        if set(saved) - names:
            raise TypeError(f"unknown options {', '.join(sorted(set(saved) - names))}")
        for k, v in saved.items():
            if isinstance(v, list) and typing.get_origin(hints[k]) is tuple:
                saved[k] = tuple(v)
        params = cls(**saved)
        params.validate()
    except (TypeError, ValueError) as e:
        raise InputError(f"{folder}/job.json: its options do not fit this cryolens version ({e}); start the job "
                         "again in a new folder.") from None
    return params


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _shown(value: Any) -> str:
    return "on" if value is True else "off" if value is False else str(value)


def continued_job(stage: str, folder: Path, *, params: Params, given: dict[str, set[str]], run: JobOptions,
                  inputs: dict[str, tuple[str, Path | None]]) -> Continued:
    """Check ``--continue folder`` against what the user typed and return what the job runs with.

    Args:
        stage: the command's stage name (as in ``job.json``).
        folder: the job folder to continue.
        params: the command's params as parsed; given: the fields typed, per declared class
            (``{"params": {...}, "run": {...}}``, see :func:`cryolens.cli.declare.declare`).
        run: the command's job options (``--out`` must be absent or the folder itself).
        inputs: per input name in ``job.json``: ``(flag, path typed or None)``.

    Raises:
        InputError: not a job of this stage, nothing saved to continue from, or an option or input
            typed with a value other than the job's (one sentence naming the flag).
    """
    point = continue_point(folder, stage)
    cls = type(params)
    saved = saved_params(cls, point.record, folder)
    device = point.record.get("device") or run.device
    if "device" in given.get("run", set()):
        device = run.device
    if point.finished:
        return Continued(point, saved, {}, device)
    if run.out is not None and not _same_file(run.out, folder):
        raise InputError(f"--out {run.out}: a continued job finishes in its own folder {folder}; drop --out.")
    for name in sorted(given.get("params", set())):
        mine, theirs = getattr(params, name), getattr(saved, name)
        if mine != theirs:
            flag = cls.flag(name)
            raise InputError(f"{flag} {_shown(mine)}: the job in {folder} was started with {_shown(theirs)}; drop "
                             f"{flag} to continue it, or start a new job with the new value.")
    recorded = point.record.get("inputs") or {}
    paths: dict[str, Path] = {}
    for name, (flag, typed) in inputs.items():
        theirs = recorded.get(name)
        if theirs is None:
            if typed is not None:
                raise InputError(f"{flag} {typed}: the job in {folder} was started without {flag}; drop it to "
                                 "continue the job.")
            continue
        theirs = Path(theirs)
        if typed is not None and theirs.exists() and not _same_file(typed, theirs):
            raise InputError(f"{flag} {typed}: the job in {folder} was started with {theirs}; drop {flag} to "
                             "continue it, or start a new job.")
        path = typed if typed is not None else theirs
        if not path.exists():
            raise InputError(f"{path}: the {name} file of the job in {folder} is not found from {Path.cwd()}; "
                             f"continue from the folder the job was started in, or give {flag} with that file.")
        paths[name] = path
    return Continued(point, saved, paths, device)


@contextmanager
def continue_target(stage: str, folder: Path, project: Path | None) -> Iterator[JobTarget]:
    """The continued job's folder and, when it is a job of a project, the observer recording it there.

    The project is ``project`` (``--project``), else the current folder or the folder two levels
    above the job (``<project>/<Stage>/jobNNN``) when it holds ``cryolens.db``; the job keeps its
    record (number, lineage) in that project. Without one, the job runs standalone.
    """
    from cryolens.project.db import find_project, open_project
    from cryolens.project.recording import ProjectObserver

    root = project
    if root is None:
        root = next((p for p in (Path.cwd(), folder.resolve().parent.parent) if find_project(p) is not None), None)
    if root is None:
        yield JobTarget(folder=folder)
        return
    proj = open_project(root)
    try:
        rec = proj.job(folder)
    except InputError:
        if project is not None:
            raise
        yield JobTarget(folder=folder)
        return
    yield JobTarget(folder=proj.abs(rec.folder), project=proj, observer=ProjectObserver(proj, rec.id))
