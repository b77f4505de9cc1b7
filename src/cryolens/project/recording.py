"""Record a :class:`cryolens.jobs.runner.Job` in the project database (the Job's observer)."""

from __future__ import annotations

import os
import sys

from cryolens.jobs.runner import package_versions
from cryolens.project.db import Project

__all__ = ["ProjectObserver"]


class ProjectObserver:
    """Tells the project about one job: running (with params and inputs), heartbeats, finished or failed.

    Example::

        rec = project.new_job("reconstruct")
        with Job("reconstruct", project.abs(rec.folder), params=p, inputs=i, observer=ProjectObserver(project, rec.id)):
            ...
    """

    def __init__(self, project: Project, job_id: int) -> None:
        self.project, self.job_id = project, job_id
        self.seen_start = False

    def started(self, job) -> None:
        self.project.record_start(self.job_id, stage=job.stage, params=job.params, inputs=job.inputs, seed=job.seed,
                                  versions=package_versions(), command=list(sys.argv), pid=os.getpid())
        self.seen_start = True

    def heartbeat(self, job) -> None:
        self.project.heartbeat(self.job_id)

    def finished(self, job) -> None:
        self.project.record_finish(self.job_id, outputs=job.outputs, results=job.results)

    def failed(self, job, error: str) -> None:
        self.project.record_failure(self.job_id, error, outputs=job.outputs)
