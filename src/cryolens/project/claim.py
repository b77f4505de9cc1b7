"""Which job record a command writes as: inside a project a folder belongs to one job only.

:func:`claim_job` decides, before any job number is taken:

* no ``--out``: a new job, ``<Stage>/jobNNN/``;
* ``--out`` a folder no job of the project owns: a new job recorded with that folder (after the folder
  checks of :func:`cryolens.jobs.folders.check_target`: running or finished jobs are refused);
* ``--out`` the folder of job N of another stage, or of a running job N: refused, naming job N;
* ``--out`` the folder of an unfinished job N (failed, killed) of the same stage: the command runs *as*
  job N again (same number, the per-micrograph stages resume there);
* ``--out`` the folder of a finished job N: refused unless ``--overwrite``; with it the command runs as
  job N, built aside and swapped in on success; a failure restores job N's record as it was, as the
  folder is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryolens.errors import InputError
from cryolens.jobs.folders import check_target, folder_state, mark_unstarted
from cryolens.project.db import Project
from cryolens.project.recording import ProjectObserver

__all__ = ["claim_job"]


@contextmanager
def claim_job(proj: Project, stage: str, out: Path | None, *,
              overwrite: bool = False) -> Iterator[tuple[Project, Path, ProjectObserver]]:
    """Yield ``(project, job folder, observer)`` for a command of ``stage`` aimed at ``out`` (see the module
    docstring). A command that fails before its job starts is recorded as failed and leaves its folder with
    a FAILURE marker, or no folder; one that fails while overwriting a finished job leaves that job's record
    as it was."""
    owner = proj.job_in_folder(out) if out is not None else None
    snapshot = None
    if owner is not None:
        where = f"{out}: is the folder of {owner.name} ({owner.stage}, {owner.status})"
        if owner.stage != stage:
            raise InputError(f"{where}; inside a project a folder belongs to one job: drop --out for a new job "
                             "folder, or choose another --out.")
        if owner.status in ("running", "queued"):
            raise InputError(f"{where}; wait for it to end (or kill it), or drop --out for a new job folder.")
        if owner.status == "finished" and not overwrite:
            raise InputError(f"{where}; pass --overwrite to redo {owner.name} there (the old job stays until the "
                             "new one succeeds), or drop --out for a new job folder.")
        check_target(out, overwrite=overwrite)
        snapshot = proj.reopen_job(owner.id)
        rec = proj.job(owner.id)
    else:
        if out is not None:
            check_target(out, overwrite=overwrite)
        rec = proj.new_job(stage, folder=out)
    folder = out if out is not None else proj.abs(rec.folder)
    observer = ProjectObserver(proj, rec.id)
    try:
        yield proj, folder, observer
    except BaseException as e:
        if (snapshot is not None and snapshot["row"]["status"] == "finished" and folder_state(folder) == "finished"
                and proj.job(rec.id).status != "finished"):
            proj.restore_job(snapshot)  # the new job failed, the old one is intact in its folder: so is its record
        elif not observer.seen_start:
            proj.record_failure(rec.id, f"{type(e).__name__}: {e}")
            mark_unstarted(folder)
        raise
