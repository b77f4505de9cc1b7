"""``cryolens fsc``: FSC between two maps on files (e.g. a reconstruction against the truth)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cryolens.core.fsc import FSCResult, fsc
from cryolens.errors import InputError
from cryolens.io import read_mrc, write_star
from cryolens.postprocess.masking import check_mask

__all__ = ["fsc_between_files", "load_map_pair", "load_cubic_map"]


def _load(path: str | os.PathLike) -> tuple[torch.Tensor, float]:
    data, apix = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: the map is {data.shape}, not a cubic volume; pad it to a cube first.")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the map contains NaN or infinite values; fix or regenerate it.")
    return torch.tensor(data), apix


def load_cubic_map(path: str | os.PathLike) -> tuple[torch.Tensor, float]:
    """A cubic, finite map and its header voxel size (Å); InputError naming the file otherwise."""
    return _load(path)


def load_map_pair(map1: str | os.PathLike, map2: str | os.PathLike, *,
                  pixel_size: float | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Two maps of equal box and voxel size, and that voxel size (Å; ``pixel_size`` overrides the headers).

    Raises:
        InputError: a map that is missing, corrupt, not cubic, not finite or constant (an empty map has no
            FSC); boxes or voxel sizes that differ; ``pixel_size`` not > 0; no voxel size at all.
    """
    if pixel_size is not None and not pixel_size > 0:
        raise InputError(f"--pixel-size {pixel_size:g}: must be > 0 Å.")
    v1, a1 = _load(map1)
    v2, a2 = _load(map2)
    if v1.shape != v2.shape:
        raise InputError(f"{map2}: box {tuple(v2.shape)} differs from {map1} {tuple(v1.shape)}; resample one to the other.")
    apix = pixel_size or a1
    if not apix:
        raise InputError(f"{map1}: the header's voxel size is 0; give it with --pixel-size.")
    if a2 and abs(a2 - apix) > 1e-3 * apix and not pixel_size:
        raise InputError(f"{map2}: voxel size {a2:g} Å differs from {map1}'s {apix:g} Å; resample one to the other.")
    for v, path in ((v1, map1), (v2, map2)):
        if float(v.max()) == float(v.min()):
            raise InputError(f"{path}: the map is constant ({float(v.max()):g} everywhere); give a map with density.")
    return v1, v2, float(apix)


def fsc_between_files(map1: str | os.PathLike, map2: str | os.PathLike, *, mask: str | os.PathLike | None = None,
                      pixel_size: float | None = None, out_star: str | os.PathLike | None = None) -> FSCResult:
    """FSC of two maps of equal box; the pixel size comes from the first header unless given."""
    v1, v2, apix = load_map_pair(map1, map2, pixel_size=pixel_size)
    m = _load(mask)[0] if mask else None
    if m is not None and (why := check_mask(m, tuple(v1.shape))) is not None:
        raise InputError(f"{mask}: {why}; give a mask in [0, 1] on the maps' grid.")
    if out_star and not Path(out_star).parent.is_dir():
        raise InputError(f"{out_star}: its folder {Path(out_star).parent} does not exist; create it or give another "
                         "--out.")
    result = fsc(v1, v2, pixel_size=apix, mask=m)
    if out_star:
        from cryolens.jobs.particles import fsc_table
        write_star(Path(out_star), {"fsc": fsc_table(result)})
    return result
