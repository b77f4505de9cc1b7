"""MRC / MRCS / MAP reading and writing (mrcfile), with clear errors and atomic writes.

Arrays are C-order ``(z, y, x)`` for volumes, ``(n, y, x)`` for stacks and ``(y, x)``
for single images; voxel sizes are in Å; header origins are in Å as ``(x, y, z)``.
Compressed files (``.gz`` / ``.bz2``) are recognised by their content.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from cryolens.errors import InputError
from cryolens.io.atomic import atomic_output

__all__ = ["MrcInfo", "read_mrc", "read_mrc_header", "open_stack", "read_sections", "write_mrc",
           "clear_stack_cache"]

PathLike = str | os.PathLike

# MRC mode -> dtype name, for messages about files whose data cannot be read.
_MODE_NAMES = {0: "int8", 1: "int16", 2: "float32", 3: "complex int16", 4: "complex64",
               6: "uint16", 12: "float16", 101: "4-bit"}


@dataclass(frozen=True)
class MrcInfo:
    """What an MRC header says, read without the data.

    Attributes:
        shape: ``(nz, ny, nx)`` in voxels (``nz`` = number of images for a stack).
        voxel_size: x voxel size in Å (0 when the header says 0).
        voxel_size_xyz: ``(x, y, z)`` voxel sizes in Å.
        dtype: numpy dtype of the stored data (e.g. ``float16``, ``uint16``).
        origin: header origin in Å as ``(x, y, z)``.
        start: ``(nxstart, nystart, nzstart)`` in voxels.
        is_stack: True when the header marks images, not a volume: ``ispg == 0`` with a
            sampling ``mz`` other than ``nz`` (MRC2014 image stacks have ``mz = 1``; some
            older volumes carry ``ispg == 0`` with ``mz == nz`` and count as volumes).
        data_offset: byte offset of the data in the (uncompressed) file: 1024 plus the
            extended header.
    """

    shape: tuple[int, int, int]
    voxel_size: float
    voxel_size_xyz: tuple[float, float, float]
    dtype: np.dtype
    origin: tuple[float, float, float]
    start: tuple[int, int, int]
    is_stack: bool
    data_offset: int = 1024


def _header_summary(path: PathLike) -> str | None:
    """'100x100x100 float32' from a permissive header read, or None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as m:
                h = m.header
                mode = int(h.mode)
                nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    except Exception:
        return None
    if mode not in _MODE_NAMES or min(nx, ny, nz) < 1:
        return None
    return f"{nx}x{ny}x{nz} {_MODE_NAMES[mode]}"


def _bad_file_error(path: PathLike, detail: str) -> InputError:
    """One-sentence InputError for a truncated or corrupt MRC file."""
    summary = _header_summary(path)
    if summary is not None and ("bytes" in detail or "mmap length" in detail):
        why = f"header says {summary} but the data is shorter"
    else:
        why = detail.rstrip(".")
    return InputError(
        f"{path}: the file is truncated or not an MRC file ({why}); re-copy or re-export it."
    )


def _check_exists(path: PathLike) -> None:
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found; check the path.")


def _open(path: PathLike, *, header_only: bool = False) -> Any:
    """Open strictly; fall back to permissive mode only if the data is complete."""
    _check_exists(path)
    try:
        m = mrcfile.open(path, mode="r", permissive=False, header_only=header_only)
    except Exception as strict_error:  # noqa: BLE001 - mrcfile/numpy raise many types on corrupt headers
        detail = str(strict_error) or type(strict_error).__name__
    else:
        h = m.header
        if int(h.mode) in _MODE_NAMES and min(int(h.nx), int(h.ny), int(h.nz)) >= 1:
            return m
        m.close()  # a strict header-only open does not check the mode or the sizes
        raise _bad_file_error(path, f"header gives mode {int(h.mode)} and size {int(h.nx)}x{int(h.ny)}x{int(h.nz)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = mrcfile.open(path, mode="r", permissive=True, header_only=header_only)
    except Exception:
        raise _bad_file_error(path, detail) from None
    h = m.header
    ok = int(h.mode) in _MODE_NAMES and min(int(h.nx), int(h.ny), int(h.nz)) >= 1
    if ok and not header_only:
        ok = m.data is not None and m.data.size == int(h.nx) * int(h.ny) * int(h.nz)
    if not ok:
        m.close()
        raise _bad_file_error(path, detail)
    return m


def _f32(value: Any) -> float:
    """Shortest decimal of a float32 header value: 1.05, not 1.0499999523."""
    return float(str(np.float32(value)))


def _info_from(m: Any) -> MrcInfo:
    h = m.header
    vs = m.voxel_size
    return MrcInfo(
        shape=(int(h.nz), int(h.ny), int(h.nx)),
        voxel_size=_f32(vs.x),
        voxel_size_xyz=(_f32(vs.x), _f32(vs.y), _f32(vs.z)),
        dtype=np.dtype(mrcfile.utils.data_dtype_from_header(h)),
        origin=(_f32(h.origin.x), _f32(h.origin.y), _f32(h.origin.z)),
        start=(int(h.nxstart), int(h.nystart), int(h.nzstart)),
        is_stack=int(h.ispg) == 0 and (int(h.nz) == 1 or int(h.mz) != int(h.nz)),
        data_offset=1024 + int(h.nsymbt),
    )


def read_mrc_header(path: PathLike) -> MrcInfo:
    """Read an MRC header without its data.

    Returns:
        :class:`MrcInfo` with shape ``(nz, ny, nx)``, voxel size in Å, dtype and
        origin in Å ``(x, y, z)``.

    Raises:
        InputError: missing, truncated (the file is shorter than its header's data, checked from the
            file size alone) or corrupt file.
    """
    with _open(path, header_only=True) as m:
        info = _info_from(m)
        extended, mode = int(m.header.nsymbt), int(m.header.mode)
    if Path(path).suffix.lower() not in (".gz", ".bz2") and mode != 101:  # a file size is cheap
        nz, ny, nx = info.shape
        expected = 1024 + extended + nx * ny * nz * info.dtype.itemsize
        if Path(path).stat().st_size < expected:
            raise _bad_file_error(path, f"header says {nx}x{ny}x{nz} {info.dtype} but the data is shorter")
    return info


def read_mrc(path: PathLike) -> tuple[np.ndarray, float]:
    """Read a map, stack or image as float32.

    Returns:
        ``(data, voxel_size)``: data shaped ``(z, y, x)`` / ``(n, y, x)``, or ``(y, x)``
        for a single image (a leading z of 1 is squeezed); voxel size is the x voxel
        size in Å (0 when the header says 0).

    Raises:
        InputError: missing, truncated or corrupt file.
    """
    with _open(path) as m:
        data = np.asarray(m.data)
        voxel_size = _f32(m.voxel_size.x)
    if np.iscomplexobj(data):
        raise InputError(f"{path}: holds complex (Fourier) data, not a real-space map; export a real-space map.")
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    return np.ascontiguousarray(data, dtype=np.float32), voxel_size


# ---------------------------------------------------------------- memory-mapped stacks

_STACK_CACHE_SIZE = 64
_stack_cache: OrderedDict[tuple[str, int, int, int], np.ndarray] = OrderedDict()
_stack_lock = threading.Lock()


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        magic = f.read(3)
    return magic[:2] == b"\x1f\x8b" or magic == b"BZh"


def _load_stack(path: Path) -> np.ndarray:
    data: np.ndarray
    if _is_compressed(path):
        with _open(path) as m:
            data = np.array(m.data)
    else:
        try:
            with mrcfile.mmap(path, mode="r", permissive=False) as m:
                data = m.data  # numpy memmap; stays valid after the file is closed
        except Exception:  # noqa: BLE001 - any strict failure (e.g. OverflowError from a negative nx)
            with _open(path) as m:  # raises InputError unless a permissive read is complete
                data = np.array(m.data)
    if np.iscomplexobj(data):
        raise InputError(f"{path}: holds complex (Fourier) data, not images; export real-space images.")
    if data.ndim == 2:
        data = data.reshape(1, *data.shape)
    return data


def open_stack(path: PathLike) -> np.ndarray:
    """Memory-map a stack read-only, shaped ``(n, y, x)`` (a 2D image gives ``(1, y, x)``).

    The array keeps the file's dtype (e.g. float16); convert slices with
    ``.astype(np.float32)``. Open maps are kept in a small LRU cache keyed by absolute
    path (and inode / mtime / size, so a replaced file is reopened). Compressed files are read
    into memory instead.

    Raises:
        InputError: missing, truncated or corrupt file.
    """
    p = Path(path).absolute()
    _check_exists(p)
    st = p.stat()
    key = (str(p), st.st_ino, st.st_mtime_ns, st.st_size)
    with _stack_lock:
        if key in _stack_cache:
            _stack_cache.move_to_end(key)
            return _stack_cache[key]
    data = _load_stack(p)
    with _stack_lock:
        _stack_cache[key] = data
        while len(_stack_cache) > _STACK_CACHE_SIZE:
            _stack_cache.popitem(last=False)
    return data


def read_sections(path: PathLike, sections: np.ndarray, *, info: MrcInfo | None = None) -> np.ndarray:
    """Images at ``sections`` (ascending 0-based indices) of a stack, as float32 ``(k, y, x)``.

    An uncompressed file is read directly: one seek and ``fromfile`` per run of consecutive
    sections. Nothing is memory-mapped or cached, so the process holds only these images, in
    resident memory and in address space alike: a stack larger than RAM (or than a
    ``ulimit -v``) streams in batches. Compressed and 4-bit files go through
    :func:`open_stack` (read whole, cached).

    Args:
        path: the stack; sections: ascending indices into it.
        info: its header (:func:`read_mrc_header`), when the caller has it already.

    Raises:
        InputError: missing file, or a file shorter than its header says.
    """
    sections = np.asarray(sections, dtype=np.int64)
    p = Path(path)
    info = info if info is not None else read_mrc_header(p)
    shape = info.shape[1:]
    per_image = int(np.prod(shape))
    _check_exists(p)
    packed = p.stat().st_size < info.data_offset + info.shape[0] * per_image * info.dtype.itemsize  # e.g. 4-bit
    if packed or _is_compressed(p):
        return np.asarray(open_stack(p)[sections], dtype=np.float32)
    out = np.empty((sections.size, *shape), dtype=np.float32)
    breaks = np.flatnonzero(np.diff(sections) != 1) + 1
    with open(p, "rb") as fh:
        for run in np.split(np.arange(sections.size), breaks):
            if not run.size:
                continue
            fh.seek(info.data_offset + int(sections[run[0]]) * per_image * info.dtype.itemsize)
            dest = out[run[0]:run[-1] + 1]  # runs are consecutive positions of out
            if info.dtype == out.dtype:  # read straight into the result (no second copy)
                complete = fh.readinto(memoryview(dest).cast("B")) == dest.nbytes
            else:
                block = np.fromfile(fh, dtype=info.dtype, count=run.size * per_image)
                complete = block.size == run.size * per_image
                if complete:
                    dest[...] = block.reshape(run.size, *shape)
            if not complete:
                raise _bad_file_error(p, f"header says {info.shape[2]}x{info.shape[1]}x{info.shape[0]} "
                                         f"{info.dtype} but the data is shorter")
    return out


def clear_stack_cache() -> None:
    """Forget all cached memory maps (the maps close when no array uses them)."""
    with _stack_lock:
        _stack_cache.clear()


# ---------------------------------------------------------------- writing


def write_mrc(
    path: PathLike,
    data: np.ndarray,
    voxel_size: float,
    *,
    is_stack: bool | None = None,
    origin: tuple[float, float, float] | None = None,
) -> None:
    """Write float32 data to an MRC file atomically (temporary file + ``os.replace``).

    Args:
        path: output file; ``.mrcs`` means an image stack unless ``is_stack`` says otherwise.
            A ``.gz`` / ``.bz2`` suffix writes a compressed file.
        data: real array ``(y, x)``, ``(z, y, x)`` or ``(n, y, x)``; stored as float32.
        voxel_size: voxel size in Å, written to the header (x, y and z).
        is_stack: mark the file as an image stack (``ispg = 0``) so RELION reads it as N
            images; ``None`` = True for ``.mrcs`` files.
        origin: header origin in Å ``(x, y, z)``; default 0.

    Header statistics (min, max, mean, rms) are computed from the data (by ``set_data``, once).
    """
    path = Path(path)
    arr = np.asarray(data)
    if np.iscomplexobj(arr):
        raise ValueError("write_mrc: complex data cannot be written; take the real part or inverse FFT first")
    if arr.ndim not in (2, 3):
        raise ValueError(f"write_mrc: expected a 2D or 3D array, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    suffixes = [s.lower() for s in path.suffixes]
    compression = "gzip" if suffixes[-1:] == [".gz"] else "bzip2" if suffixes[-1:] == [".bz2"] else None
    if is_stack is None:
        is_stack = ".mrcs" in suffixes
    if is_stack and arr.ndim == 2:
        arr = arr[None]
    with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True, compression=compression) as m:
        m.set_data(arr)
        if arr.ndim == 3:
            if is_stack:
                m.set_image_stack()
            else:
                m.set_volume()
        m.voxel_size = float(voxel_size)
        if origin is not None:
            m.header.origin.x, m.header.origin.y, m.header.origin.z = (float(v) for v in origin)
