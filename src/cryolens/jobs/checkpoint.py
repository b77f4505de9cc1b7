"""Per-iteration state of iterative jobs (refine, 2D classification, ab initio), for ``--continue``.

An iterative job saves, at the end of each finished iteration ``N``, everything it needs to go on
from there, and RELION-like files a person may look at, all named ``run_itNNN_*`` in the job folder:

- ``run_itNNN_state/``: the machine state, a folder holding ``state.json`` (iteration, scalars,
  the stage's own JSON values, global RNG states) and ``tensors.pt`` (named CPU tensors,
  ``torch.save``; read back with ``weights_only=True``). It is built under a hidden temporary name
  and renamed into place in one step, so it exists complete or not at all: its presence is what
  marks iteration ``N`` as finished (:func:`latest_iteration`).
- the stage's visible files (e.g. ``run_it003_half1.mrc``, ``run_it003_data.star``), written by the
  job through the atomic writers *before* :func:`save_iteration` commits the state
  (:func:`iteration_path` names them).

Disk stays bounded: after each commit only the last ``keep`` finished iterations
(:data:`KEEP_ITERATIONS` by default) keep their files (:func:`prune_iterations`). A job killed at any
moment leaves the last finished iterations intact; :func:`remove_unfinished` clears the temporary
folders and the visible files of an iteration whose state never committed before the job continues.

Randomness: a stage that draws random numbers keeps its own ``torch.Generator`` and puts
``generator.get_state()`` among its tensors; :func:`capture_rng` / :func:`restore_rng` save and
restore the global generators (Python, NumPy, torch) for code that uses them.

Example::

    save_iteration(job_dir, 3, tensors={"rotations": rot}, values={"resolution": 7.2})
    state = load_iteration(job_dir)          # the latest finished iteration, or None
    state.iteration, state.tensors["rotations"], state.values["resolution"]
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryolens.errors import InputError
from cryolens.io.atomic import temporary_path
from cryolens.jobs.runner import SUCCESS_MARKER

__all__ = ["KEEP_ITERATIONS", "IterationState", "ContinuePoint", "continue_point", "iteration_path", "state_path",
           "finished_iterations", "latest_iteration", "save_iteration", "load_iteration", "prune_iterations",
           "remove_unfinished", "clear_iterations", "capture_rng", "restore_rng"]

#: Finished iterations whose files are kept by default (the latest and the one before it).
KEEP_ITERATIONS = 2
STATE_FORMAT = 1
_ITERATION_FILE = re.compile(r"^run_it(\d{3,})_")
_STATE_DIR = re.compile(r"^run_it(\d{3,})_state$")


@dataclass
class IterationState:
    """One finished iteration as saved: its number, named CPU tensors, JSON values, RNG states (or None)."""

    iteration: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] | None = None
    path: Path | None = None


def iteration_path(job_dir: str | os.PathLike, iteration: int, name: str) -> Path:
    """``job_dir/run_itNNN_<name>`` (``NNN`` zero-padded to 3 digits, RELION's style), e.g. ``half1.mrc``."""
    return Path(job_dir) / f"run_it{iteration:03d}_{name}"


def state_path(job_dir: str | os.PathLike, iteration: int) -> Path:
    """The state folder of ``iteration`` (``run_itNNN_state``); it exists only once the iteration is saved."""
    return iteration_path(job_dir, iteration, "state")


def finished_iterations(job_dir: str | os.PathLike) -> list[int]:
    """Iterations with a committed state in ``job_dir``, ascending (empty when none or no folder)."""
    d = Path(job_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STATE_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append(int(m.group(1)))
    return sorted(found)


def latest_iteration(job_dir: str | os.PathLike) -> int | None:
    """The last finished iteration saved in ``job_dir``, or None."""
    its = finished_iterations(job_dir)
    return its[-1] if its else None


def save_iteration(job_dir: str | os.PathLike, iteration: int, *, tensors: dict[str, torch.Tensor] | None = None,
                   values: dict[str, Any] | None = None, rng: dict[str, Any] | None = None,
                   keep: int | None = KEEP_ITERATIONS) -> Path:
    """Commit iteration ``iteration``'s state atomically, then prune older iterations to the last ``keep``.

    Args:
        job_dir: the job folder (exists).
        iteration: the finished iteration, from 1.
        tensors: named tensors (copied to the CPU, views compacted; any dtype, e.g. a generator state).
        values: JSON values (numbers, strings, lists, dicts; tuples come back as lists); floats
            round-trip exactly (``repr``), inf and NaN included.
        rng: global RNG states from :func:`capture_rng`, or None.
        keep: finished iterations to keep (their ``run_itNNN_*`` files); None keeps all.

    Returns:
        the state folder ``run_itNNN_state``.
    """
    if iteration < 1:
        raise ValueError(f"iteration must be >= 1, got {iteration}")
    final = state_path(job_dir, iteration)
    tmp = temporary_path(final)
    tmp.mkdir()
    try:
        torch.save({k: v.detach().cpu().clone() for k, v in (tensors or {}).items()}, tmp / "tensors.pt")
        (tmp / "state.json").write_text(json.dumps({
            "format": STATE_FORMAT, "iteration": iteration, "values": values or {},
            "rng": rng}, indent=1, allow_nan=True) + "\n")
        if final.exists():  # a state of the same number left by an earlier run: the new one replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None:
        prune_iterations(job_dir, keep=keep)
    return final


def load_iteration(job_dir: str | os.PathLike, iteration: int | None = None) -> IterationState | None:
    """The saved state of ``iteration`` (default: the latest finished one); None when there is none.

    Raises:
        InputError: the state folder exists but cannot be read (named, with the fix).
    """
    it = latest_iteration(job_dir) if iteration is None else iteration
    if it is None:
        return None
    folder = state_path(job_dir, it)
    if not (folder / "state.json").is_file():
        return None
    try:
        meta = json.loads((folder / "state.json").read_text())
        tensors = torch.load(folder / "tensors.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state is one user-facing sentence
        raise InputError(f"{folder}: the saved state of iteration {it} cannot be read ({type(e).__name__}); "
                         f"delete that folder to continue from the iteration before it.") from None
    if meta.get("format") != STATE_FORMAT or meta.get("iteration") != it:
        raise InputError(f"{folder}: not a state this cryolens version can continue from; start the job again.")
    return IterationState(it, tensors, meta.get("values") or {}, meta.get("rng"), folder)


def _iteration_files(job_dir: Path) -> dict[int, list[Path]]:
    out: dict[int, list[Path]] = {}
    for p in job_dir.iterdir():
        m = _ITERATION_FILE.match(p.name)
        if m:
            out.setdefault(int(m.group(1)), []).append(p)
    return out


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _remove_iterations(job_dir: Path, files: dict[int, list[Path]], iterations: list[int]) -> list[int]:
    """Remove the files of ``iterations``, each one's state folder first (never finished with files missing)."""
    for it in sorted(iterations):
        state = state_path(job_dir, it)
        for p in sorted(files[it], key=lambda q: q != state):
            _remove(p)
    return sorted(iterations)


def prune_iterations(job_dir: str | os.PathLike, *, keep: int = KEEP_ITERATIONS) -> list[int]:
    """Remove every ``run_itNNN_*`` file of the finished iterations older than the last ``keep``.

    The state folder goes first, so an iteration is never seen as finished with files missing.
    Files of iterations after the latest finished one (being written now) are left alone.

    Returns:
        the iterations removed.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    done = finished_iterations(job_dir)
    if len(done) <= keep:
        return []
    kept_from = done[-keep]
    files = _iteration_files(Path(job_dir))
    return _remove_iterations(Path(job_dir), files, [it for it in files if it < kept_from])


def remove_unfinished(job_dir: str | os.PathLike) -> list[Path]:
    """Before continuing: remove hidden temporary files and the files of iterations after the latest finished one.

    Returns:
        the paths removed.
    """
    d = Path(job_dir)
    last = latest_iteration(d) or 0
    removed = [p for p in d.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    removed += [p for it, ps in _iteration_files(d).items() if it > last for p in ps]
    for p in removed:
        _remove(p)
    return removed


def clear_iterations(job_dir: str | os.PathLike) -> list[int]:
    """Remove every ``run_itNNN_*`` file (a job that starts afresh in a folder an earlier run left them in).

    Returns:
        the iterations removed.
    """
    d = Path(job_dir)
    if not d.is_dir():
        return []
    files = _iteration_files(d)
    return _remove_iterations(d, files, list(files))


def capture_rng() -> dict[str, Any]:
    """The global RNG states (Python ``random``, NumPy's legacy global, torch CPU and CUDA) as JSON values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, g = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, g))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])



@dataclass
class ContinuePoint:
    """A job folder to continue: its ``job.json`` (``record``), whether it already finished, and the last
    finished iteration (None when the job finished and kept no state)."""

    folder: Path
    record: dict[str, Any]
    finished: bool
    iteration: int | None


def continue_point(job_dir: str | os.PathLike, stage: str) -> ContinuePoint:
    """Check that ``job_dir`` holds a ``stage`` job that can continue (or has finished).

    Raises:
        InputError: no such folder or no ``job.json``, an unreadable ``job.json``, a job of another
            stage, or an unfinished job with no finished iteration saved (exit 2, one sentence each).
    """
    d = Path(job_dir)
    record_file = d / "job.json"
    if not record_file.is_file():
        raise InputError(f"{d}: no job.json there, so there is no {stage} job to continue; give the folder of an "
                         f"interrupted {stage} job.")
    try:
        record = json.loads(record_file.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        raise InputError(f"{record_file}: cannot be read as a job record; the folder cannot be continued, start "
                         "the job again in a new folder.") from None
    if record.get("stage") != stage:
        raise InputError(f"{d}: holds a {record.get('stage')} job, not a {stage} job; continue it with "
                         f"`cryolens {record.get('stage')} --continue {d}` or give a {stage} job folder.")
    finished = record.get("status") == "finished" or (d / SUCCESS_MARKER).is_file()
    last = latest_iteration(d)
    if not finished and last is None:
        raise InputError(f"{d}: the job stopped before its first iteration finished, so no state was saved to "
                         f"continue from; run the {stage} job again without --continue.")
    return ContinuePoint(d, record, finished, last)
