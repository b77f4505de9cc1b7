"""Atomic text/JSON writes: a temporary file next to the target, then ``os.replace``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryolens.io.mrc import temporary_path

__all__ = ["write_text_atomic", "write_json_atomic"]


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (non-JSON values via ``str``)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
