"""What a stage's expectation step needs from whoever runs it in chunks, without knowing the backend.

Stages (refine, class3d) sit below :mod:`cryolens.compute`, so they see a distributor only through
:class:`ChunkMapper` (implemented by :class:`cryolens.compute.estep.Distributor`), and share their
per-iteration data with workers as a :class:`SharedOnce`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["ChunkMapper", "SharedOnce"]


class ChunkMapper(Protocol):
    """Runs ``fn(shared, chunk)`` over chunks of particles somewhere (threads, processes, a cluster)."""

    @property
    def n_workers(self) -> int: ...

    def chunks(self, n: int, *, bytes_per_item: int, multiple: int = 1) -> list[np.ndarray]:
        """Contiguous row ranges of ``0..n-1``, each a multiple of ``multiple`` rows."""

    def map(self, fn: Callable[[Any, Any], dict], shared: Any, items: Sequence[Any], *, desc: str = "estep",
            progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """``fn(shared, item)`` for every item; results in item order."""


class SharedOnce:
    """Base for the data a map shares with every chunk: :meth:`cached` builds derived objects once per
    copy (once per worker on Dask, once in this process for threads) and keeps them; the cache and its
    lock are not pickled."""

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` the first time ``key`` is asked for on this copy, the same object afterwards (thread-safe)."""
        lock = self.__dict__.setdefault("_shared_lock", threading.Lock())
        with lock:
            cache = self.__dict__.setdefault("_shared_cache", {})
            if key not in cache:
                cache[key] = build()
            return cache[key]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_shared_lock", "_shared_cache")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
