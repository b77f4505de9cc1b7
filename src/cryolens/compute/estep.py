"""Distributed expectation steps: particle chunks to workers, sufficient statistics back, summed here.

The particle stages (refine, 3D/2D classification, ab initio) spend their time in the
expectation step: every particle is scored against the current references and its
contribution added to accumulators (Fourier numerators and weights, noise-spectrum sums,
per-particle poses and classes). Those contributions are independent between particles, so
the step splits into chunks of particles, each a work unit of a compute backend
(:mod:`cryolens.compute.backends`); the driver sums what the chunks return and does the
maximisation itself. This module knows chunks, shared data and byte counts, not stages:

    dist = Distributor(get_backend("tcp://head:8786"))
    rows = dist.chunks(n_particles, bytes_per_item=4 * box * box, multiple=batch_size)
    results = dist.map(stage_chunk_fn, shared, items, desc="refine it 3")

``shared`` (the iteration's references, noise model, search settings) goes to every worker
once per iteration where the backend allows (:meth:`Backend.map_shared`); a
:class:`cryolens.core.worker.SharedOnce` subclass builds derived data (e.g. projectors) once per worker and keeps
it. A worker that dies loses only the chunk it was running, which the backend re-runs
(``retries``). :attr:`Distributor.log` records per map the wall time, the workers' own
compute time and the bytes that crossed to and from the workers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryolens.compute.backends import Backend

__all__ = ["Distributor", "MapRecord", "payload_bytes", "DEFAULT_CHUNK_MEMORY_MB"]

#: Default bound on the image memory of one chunk on a worker, in MiB.
DEFAULT_CHUNK_MEMORY_MB = 1024.0


def payload_bytes(obj: Any) -> int:
    """Bytes of the arrays in ``obj`` (tensors, NumPy arrays, pandas tables, nested in dicts, lists,
    tuples and dataclasses): what a backend moves when it ships ``obj``, Python overhead left out."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return 0
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int) and hasattr(obj, "shape"):
        return nbytes
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):  # torch tensors
        return int(obj.element_size() * obj.numel())
    if hasattr(obj, "memory_usage") and hasattr(obj, "columns"):  # pandas DataFrame
        return int(obj.memory_usage(index=True, deep=False).sum())
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(payload_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


@dataclass
class MapRecord:
    """One distributed map: ``seconds`` wall time on the driver, ``worker_seconds`` the chunks' own
    compute time (as they report it under ``"seconds"``), ``chunks``, ``workers``, and bytes: ``shared``
    (one copy), ``shared_copies`` (copies that crossed to workers), ``items`` sent, ``results`` returned."""

    desc: str
    chunks: int
    workers: int
    seconds: float
    worker_seconds: float
    shared: int
    shared_copies: int
    items: int
    results: int

    @property
    def bytes_shipped(self) -> int:
        """Bytes that crossed between driver and workers (0 for in-process and threads)."""
        if self.shared_copies == 0 and self.items == 0 and self.results == 0:
            return 0
        return self.shared * self.shared_copies + self.items + self.results

    @property
    def overhead_seconds(self) -> float:
        """Wall time beyond perfectly shared compute: ``seconds - worker_seconds / workers``."""
        return self.seconds - self.worker_seconds / max(1, self.workers)


@dataclass
class Distributor:  # implements cryolens.core.worker.ChunkMapper
    """Sends an expectation step's particle chunks through a compute backend.

    Attributes:
        backend: the compute backend (:func:`cryolens.compute.backends.get_backend`).
        reader: optional picklable ``reader(rows) -> float32 images (b, y, x)``; when given, chunks carry
            row indices and the workers read their images (shared file system), else the driver sends them.
        memory_mb: bound on one chunk's images in memory on a worker (MiB).
        chunk_size: particles per chunk, overriding the memory bound (rounded to the stage's batch size).
        retries: re-runs of a chunk whose worker died.
        log: one :class:`MapRecord` per :meth:`map`.
    """

    backend: Backend
    reader: Callable[[np.ndarray], np.ndarray] | None = None
    memory_mb: float = DEFAULT_CHUNK_MEMORY_MB
    chunk_size: int | None = None
    retries: int = 2
    log: list[MapRecord] = field(default_factory=list)

    @property
    def n_workers(self) -> int:
        return max(1, int(getattr(self.backend, "n_workers", 1) or 1))

    def chunks(self, n: int, *, bytes_per_item: int, multiple: int = 1) -> list[np.ndarray]:
        """Contiguous row ranges ``0..n-1``: at least one chunk per worker, each within :attr:`memory_mb`
        (``bytes_per_item`` each) or :attr:`chunk_size`, sizes a multiple of ``multiple`` (the stage's batch
        size, so that a chunk's batches are the in-process run's batches)."""
        if n <= 0:
            return []
        if self.chunk_size is not None:
            size = self.chunk_size
        else:
            size = min(math.ceil(n / self.n_workers), max(1, int(self.memory_mb * 2**20 // max(1, bytes_per_item))))
        size = max(multiple, int(math.ceil(size / multiple)) * multiple)
        return [np.arange(a, min(n, a + size), dtype=np.int64) for a in range(0, n, size)]

    def map(self, fn: Callable[[Any, Any], dict], shared: Any, items: Sequence[Any], *, desc: str = "estep",
            progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """``fn(shared, item)`` for every item through the backend; results in item order, logged."""
        items = list(items)
        t0 = time.perf_counter()
        out = self.backend.map_shared(fn, shared, items, desc=desc, progress=progress, retries=self.retries)
        seconds = time.perf_counter() - t0
        copies = {"none": 0, "unit": len(items), "worker": self.n_workers}.get(self.backend.shared_copies, 0)
        moved = self.backend.shared_copies != "none"
        self.log.append(MapRecord(
            desc=desc, chunks=len(items), workers=min(self.n_workers, len(items)), seconds=seconds,
            worker_seconds=float(sum(r.get("seconds", 0.0) for r in out if isinstance(r, dict))),
            shared=payload_bytes(shared), shared_copies=copies,
            items=payload_bytes(items) if moved else 0, results=payload_bytes(out) if moved else 0))
        return out
