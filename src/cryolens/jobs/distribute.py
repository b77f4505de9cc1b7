"""Particle jobs on a compute backend: ``--backend``/``--profile`` of refine (and the other particle stages).

:func:`particle_distributor` opens the backend a job names (inside the job, so that an unreachable
scheduler or a rejected profile ends the job FAILURE with one sentence, and the job can be run or
continued again) and gives the stage a :class:`~cryolens.compute.estep.Distributor` whose workers
read their particles' images themselves (:class:`ParticleReader`, a shared file system), so that
only row indices, the iteration's references and the sums travel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryolens.compute.backends import get_backend
from cryolens.compute.estep import Distributor
from cryolens.errors import InputError
from cryolens.io import ImageSource

__all__ = ["ParticleReader", "particle_distributor", "log_distribution"]


@dataclass(frozen=True)
class ParticleReader:
    """Picklable ``reader(rows) -> float32 images (b, y, x)`` over a particle set's stacks (for workers).

    Like :func:`cryolens.jobs.particles.checked_batches`, a NaN or infinite image is an InputError naming
    the STAR file and the row.
    """

    source: ImageSource
    star: str

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        images = self.source[np.asarray(rows)]
        finite = np.isfinite(images).all(axis=(1, 2))
        if not finite.all():
            row = int(np.asarray(rows)[~finite][0])
            raise InputError(f"{self.star}: the image of particle row {row + 1} contains NaN or infinite values; "
                             "re-extract or remove that particle.")
        return images


@contextmanager
def particle_distributor(spec: str | None, source: ImageSource, star: str | os.PathLike, *,
                         project_dir: str | Path | None = None) -> Iterator[Distributor | None]:
    """The :class:`Distributor` of backend ``spec`` (:func:`cryolens.compute.backends.get_backend`; profiles
    also from ``project_dir``/profiles.toml), closed afterwards; None (compute in this process) when ``spec``
    is None."""
    if spec is None:
        yield None
        return
    with get_backend(spec, project_dir=project_dir) as backend:
        dist = Distributor(backend, reader=ParticleReader(source, str(star)))
        yield dist


def log_distribution(job, dist: Distributor | None) -> None:
    """Log each distributed map of ``dist`` in the job's run.log and record the backend in its results."""
    if dist is None:
        return
    for rec in dist.log:
        job.log.info("%s: %d chunks on %d workers, %.1f s (workers %.1f s), %.1f MB shipped", rec.desc, rec.chunks,
                     rec.workers, rec.seconds, rec.worker_seconds, rec.bytes_shipped / 1e6)
    job.results["backend"] = dist.backend.name
