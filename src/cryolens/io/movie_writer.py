"""Streaming writers for movies: MRC stacks and LZW-compressed TIFF, committed atomically.

Frames arrive one at a time as ``(y, x)`` integer counts and go straight to a file
under a temporary name next to the target, renamed into place when the last frame is
written (a killed job never leaves a half movie under the final name).

- MRC (``.mrcs``): an image stack; int8 counts are mode 0 (only used for counts up to
  127, which readers taking mode 0 as signed or as unsigned read alike), uint16 mode 6,
  float32 mode 2. The header carries the pixel size and the statistics.
- TIFF (``.tif``/``.tiff``): one page per frame, LZW-compressed (imagecodecs), uint8 or
  uint16. RELION, MotionCor2 and IMOD flip TIFF images along the slow (y) axis when
  reading them, so frames are stored flipped: every EM program then sees the same image
  as in the MRC (``tifffile.imread(tiff)[:, ::-1]`` equals the MRC frames).
- EER is not written: no maintained library encodes it (imagecodecs' ``eer_encode`` is
  unimplemented, ``eerfile`` only reads and renders).
"""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np

from cryolens.io.atomic import temporary_path

__all__ = ["MovieWriter", "MRC_MODES"]

#: numpy dtype -> MRC mode of the frames.
MRC_MODES = {np.dtype(np.int8): 0, np.dtype(np.int16): 1, np.dtype(np.float32): 2, np.dtype(np.uint16): 6}


class MovieWriter:
    """Write ``n_frames`` frames of ``shape`` (rows, columns) in order, then commit atomically.

    Example::

        with MovieWriter("movie.mrcs", n_frames=40, shape=(3838, 3710), dtype=np.int8, pixel_size=1.232) as w:
            for frame in frames:
                w.write(frame)
    """

    def __init__(self, path: str | os.PathLike, *, n_frames: int, shape: tuple[int, int], dtype,
                 pixel_size: float, fmt: str | None = None, workers: int = 2) -> None:
        self.path = Path(path)
        self.fmt = fmt or ("tiff" if self.path.suffix.lower() in (".tif", ".tiff") else "mrc")
        self.n_frames, self.shape, self.dtype = int(n_frames), tuple(shape), np.dtype(dtype)
        self.pixel_size, self.workers = float(pixel_size), workers
        if self.fmt == "mrc" and self.dtype not in MRC_MODES:
            raise ValueError(f"MRC movies hold int8, int16, uint16 or float32 frames, not {self.dtype}")
        if self.fmt == "tiff" and self.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
            raise ValueError(f"TIFF movies hold uint8 or uint16 frames, not {self.dtype}")
        self._tmp = temporary_path(self.path)
        self._handle = None
        self._i = 0
        self._stats = [np.inf, -np.inf, 0.0, 0.0]  # min, max, sum, sum of squares

    def __enter__(self) -> "MovieWriter":
        if self.fmt == "mrc":
            self._handle = mrcfile.new_mmap(self._tmp, shape=(self.n_frames, *self.shape),
                                            mrc_mode=MRC_MODES[self.dtype], overwrite=True)
            self._handle.set_image_stack()
            self._handle.voxel_size = self.pixel_size
        else:
            import tifffile
            self._handle = tifffile.TiffWriter(self._tmp)
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append the next frame ``(rows, columns)``."""
        if self._i >= self.n_frames:
            raise ValueError(f"{self.path}: more than {self.n_frames} frames written")
        if tuple(frame.shape) != self.shape:
            raise ValueError(f"{self.path}: frame of shape {frame.shape}, expected {self.shape}")
        frame = np.asarray(frame)
        if self.fmt == "mrc":
            self._handle.data[self._i] = frame.astype(self.dtype, copy=False)
            s = self._stats
            s[0], s[1] = min(s[0], float(frame.min())), max(s[1], float(frame.max()))
            s[2] += float(frame.sum(dtype=np.float64))
            s[3] += float(np.square(frame, dtype=np.float64).sum())
        else:
            rps = max(1, (1 << 17) // (self.shape[1] * self.dtype.itemsize))  # ~128 KB strips
            self._handle.write(np.ascontiguousarray(frame.astype(self.dtype, copy=False)[::-1]), compression="lzw",
                               photometric="minisblack", metadata=None, rowsperstrip=rps, maxworkers=self.workers,
                               resolution=(1e8 / self.pixel_size, 1e8 / self.pixel_size), resolutionunit="CENTIMETER")
        self._i += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.fmt == "mrc":
                if exc_type is None:
                    n = float(self.n_frames * self.shape[0] * self.shape[1])
                    mean = self._stats[2] / n
                    h = self._handle.header
                    h.dmin, h.dmax, h.dmean = self._stats[0], self._stats[1], mean
                    h.rms = float(np.sqrt(max(self._stats[3] / n - mean * mean, 0.0)))
                self._handle.close()
            else:
                self._handle.close()
            if exc_type is None:
                if self._i != self.n_frames:
                    raise ValueError(f"{self.path}: {self._i} of {self.n_frames} frames written")
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
