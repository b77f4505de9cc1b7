"""Lazy particle images: RELION image names, path resolution and batched stack reads.

A RELION image name is ``"000012@Particles/stack.mrcs"`` (1-based index ``@`` stack file);
inside cryolens indices are 0-based. Images come back as float32 ``(n, y, x)`` arrays.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io.mrc import read_mrc_header, read_sections, write_mrc
from cryolens.io.paths import resolve_path

__all__ = ["parse_image_name", "format_image_name", "ImageSource", "write_stack_and_names"]

PathLike = str | os.PathLike

# "[index@]path[:type]": RELION allows a trailing file-type hint such as ":mrc" / ":mrcs".
_NAME_RE = re.compile(r"^\s*(?:(?P<index>[+-]?\d+)@)?(?P<path>.*?)(?::(?P<type>mrcs?|spi|tif|tiff|eer))?\s*$")


def _split_name(name: str) -> tuple[int | None, str]:
    """``"12@a.mrcs"`` -> ``(11, "a.mrcs")``; a name without ``@`` gives ``(None, path)``."""
    m = _NAME_RE.match(str(name))
    if m is None or not m.group("path"):
        raise ValueError(f"not a RELION image name: {name!r}")
    if m.group("index") is None:
        return None, m.group("path")
    index = int(m.group("index"))
    if index < 1:
        raise ValueError(f"image index must be 1 or more in {name!r}")
    return index - 1, m.group("path")


def parse_image_name(name: str) -> tuple[int, str]:
    """Split a RELION image name into ``(0-based index, path)``.

    ``"000012@Particles/stack.mrcs"`` -> ``(11, "Particles/stack.mrcs")``. A name without
    ``@`` names a single image (or a whole 3D stack) and gives index 0. A trailing type
    hint (``":mrcs"``) is dropped.

    Raises:
        ValueError: empty name or an index below 1.
    """
    index, path = _split_name(name)
    return (0 if index is None else index), path


def format_image_name(index: int, path: PathLike) -> str:
    """``(11, "a.mrcs")`` -> ``"000012@a.mrcs"`` (RELION's 6-digit, 1-based form)."""
    return f"{int(index) + 1:06d}@{path}"


class ImageSource:
    """Lazy, indexable view of the particle images named by a table's ``rlnImageName``.

    Images are read from the stack files on demand, never whole and never memory-mapped
    (:func:`cryolens.io.mrc.read_sections`): a batch read groups the requested rows by stack
    and reads each stack front to back, one ``fromfile`` per run of consecutive images, so a
    dataset larger than RAM streams with memory bounded by the batch. At construction every stack is located (:func:`cryolens.io.paths.resolve_path`:
    the project root, the current folder, then the STAR folder and above), its header
    read, the indices checked against its length and the box sizes checked to agree.

    Args:
        particles: table with an ``rlnImageName`` column (row order defines indices).
        star_path: the STAR file the table came from (for path resolution and messages).
    """

    def __init__(self, particles: pd.DataFrame, star_path: PathLike) -> None:
        self.star_path = Path(star_path)
        star = self.star_path.name
        if "rlnImageName" not in particles.columns:
            raise InputError(f"{star}: column rlnImageName is missing; add it or re-run extraction.")
        names = particles["rlnImageName"].astype(str)
        parts = names.str.extract(_NAME_RE)
        bad = parts["path"].isna() | (parts["path"] == "")
        index = pd.to_numeric(parts["index"], errors="coerce")
        bad |= index.notna() & (index < 1)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{star}: row {row + 1} has an invalid image name {names.iloc[row]!r}; "
                             "use the RELION form 000001@stack.mrcs.")
        has_index = index.notna().to_numpy()
        codes, uniques = pd.factorize(parts["path"], sort=False)
        first_row = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
        self._paths: list[Path] = []
        self._infos = []
        shapes: list[tuple[int, int, int]] = []
        for k, name in enumerate(uniques):
            path = resolve_path(name, self.star_path, row=int(first_row[k]) + 1)
            info = read_mrc_header(path)
            self._paths.append(path)
            self._infos.append(info)
            shapes.append(info.shape)
        self._stack = codes.astype(np.int64)
        self._section = np.where(has_index, index.fillna(1).to_numpy() - 1, 0).astype(np.int64)
        lengths = np.array([s[0] for s in shapes], dtype=np.int64)
        over = self._section >= lengths[self._stack] if len(self._stack) else np.zeros(0, bool)
        if over.any():
            row = int(np.flatnonzero(over)[0])
            k = self._stack[row]
            raise InputError(f"{star}: row {row + 1} asks for image {self._section[row] + 1} of {uniques[k]}, "
                             f"which holds {lengths[k]} images; re-run extraction or fix rlnImageName.")
        whole = ~has_index & (lengths[self._stack] > 1) if len(self._stack) else np.zeros(0, bool)
        if whole.any():
            row = int(np.flatnonzero(whole)[0])
            raise InputError(f"{star}: row {row + 1} names the whole stack {uniques[self._stack[row]]} "
                             "without an index; use index@stack names, one image per row.")
        boxes = sorted({(s[1], s[2]) for s in shapes})
        if len(boxes) > 1:
            sizes = ", ".join(f"{y}x{x}" for y, x in boxes)
            raise InputError(f"{star}: the stacks have different box sizes ({sizes}); "
                             "re-extract all particles with one box size.")
        self._shape: tuple[int, int] = boxes[0] if boxes else (0, 0)

    def __len__(self) -> int:
        return len(self._stack)

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` in pixels."""
        return self._shape

    @property
    def image_size(self) -> int:
        """Box size in pixels (``ny``; RELION boxes are square)."""
        return self._shape[0]

    @property
    def stack_paths(self) -> list[Path]:
        """Resolved stack files, in order of first use."""
        return list(self._paths)

    def _normalise(self, indices: np.ndarray | slice | list[int] | int) -> np.ndarray:
        n = len(self)
        if isinstance(indices, slice):
            return np.arange(*indices.indices(n), dtype=np.int64)
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask of shape {idx.shape} does not match {n} images")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).ravel()
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        return np.where(idx < 0, idx + n, idx)

    def __getitem__(self, indices: np.ndarray | slice | list[int] | int) -> np.ndarray:
        """Images for the given rows as float32: ``(n, y, x)``, or ``(y, x)`` for an int."""
        if isinstance(indices, (int, np.integer)):
            return self[np.array([indices])][0]
        idx = self._normalise(indices)
        if idx.size == 0:
            return np.empty((0, *self._shape), dtype=np.float32)
        stacks = self._stack[idx]
        sections = self._section[idx]
        if (stacks == stacks[0]).all() and (np.diff(sections) > 0).all():  # one stack, in file order: no re-sort
            return read_sections(self._paths[stacks[0]], sections, info=self._infos[stacks[0]])
        out = np.empty((idx.size, *self._shape), dtype=np.float32)
        order = np.argsort(stacks, kind="stable")
        sorted_stacks = stacks[order]
        starts = np.flatnonzero(np.r_[True, sorted_stacks[1:] != sorted_stacks[:-1]])
        ends = np.r_[starts[1:], idx.size]
        for a, b in zip(starts, ends):
            positions = order[a:b]
            sections = self._section[idx[positions]]
            by_section = np.argsort(sections, kind="stable")  # read each file front to back
            k = sorted_stacks[a]
            out[positions[by_section]] = read_sections(self._paths[k], sections[by_section], info=self._infos[k])
        return out

    def iter_batches(self, batch_size: int,
                     indices: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(row indices, float32 images (b, y, x))`` in batches of at most ``batch_size``."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        idx = np.arange(len(self), dtype=np.int64) if indices is None else self._normalise(indices)
        for start in range(0, idx.size, batch_size):
            chunk = idx[start:start + batch_size]
            yield chunk, self[chunk]


def write_stack_and_names(stack_path: PathLike, images: np.ndarray, voxel_size: float) -> list[str]:
    """Write ``images`` (n, y, x) as an MRC stack (voxel size in Å) and return their RELION names.

    Names are ``"000001@<stack_path>"`` ... with ``stack_path`` exactly as given (give
    it relative to the project folder for RELION-style projects).
    """
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    write_mrc(stack_path, arr, voxel_size, is_stack=True)
    return [format_image_name(i, stack_path) for i in range(arr.shape[0])]
