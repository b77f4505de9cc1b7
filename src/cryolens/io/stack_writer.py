"""Streaming writer for large MRC stacks: batches go straight to a memory-mapped file.

The stack is created under a temporary name next to the target and renamed into
place only when every image has been written, so a killed job never leaves a
half-written stack under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np

from cryolens.io.atomic import temporary_path

__all__ = ["StackWriter"]


class StackWriter:
    """Write ``n`` images of ``box × box`` pixels in any batch order, then commit atomically.

    Use as a context manager::

        with StackWriter("particles.mrcs", n=1000, box=128, voxel_size=1.5) as w:
            w.write(0, first_batch)      # images (b, box, box), rows 0..b-1
            ...
    """

    def __init__(self, path: str | os.PathLike, *, n: int, box: int, voxel_size: float) -> None:
        self.path = Path(path)
        self.n, self.box, self.voxel_size = n, box, float(voxel_size)
        self._tmp = temporary_path(self.path)
        self._mrc = None

    def __enter__(self) -> "StackWriter":
        self._mrc = mrcfile.new_mmap(self._tmp, shape=(self.n, self.box, self.box), mrc_mode=2, overwrite=True)
        self._mrc.set_image_stack()
        self._mrc.voxel_size = self.voxel_size
        return self

    def write(self, start: int, images: np.ndarray) -> None:
        """Store ``images`` ``(b, box, box)`` at rows ``start .. start + b - 1``."""
        self._mrc.data[start:start + images.shape[0]] = images.astype(np.float32, copy=False)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._mrc.update_header_stats()
            self._mrc.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
