"""Atomic writes: a temporary file next to the target, then ``os.replace``.

A reader (or a job killed at any moment) sees the old file or the new one, never half
of one. Writers go through :func:`atomic_output`; the streaming writers whose commit is
split between ``__enter__`` and ``__exit__`` (:class:`cryolens.io.stack_writer.StackWriter`,
:class:`cryolens.io.movie_writer.MovieWriter`) use :func:`temporary_path` and ``os.replace``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["temporary_path", "atomic_output", "write_text_atomic", "write_json_atomic"]


def temporary_path(path: str | os.PathLike) -> Path:
    """A unique hidden name next to ``path`` for an atomic write (then ``os.replace``).

    ``dir/name`` gives ``dir/.name.<12 hex>.tmp``; the caller removes it if the write fails.
    """
    p = Path(path)
    return p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps ``path``'s suffix (``.fsc.png.<hex>.tmp.png``), so writers
    that choose a format by suffix (matplotlib, tifffile) write the right one. If the
    body raises, the temporary file is removed and ``path`` is left as it was::

        with atomic_output(out / "fsc.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    tmp = temporary_path(path)
    if path.suffix:
        tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-JSON values via ``str``)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
