"""``cryolens align-maps`` and ``cryolens flip-hand``: map alignment and hand flipping on files.

``align-maps`` outputs in the job folder: ``aligned.mrc`` (the moving map on the fixed map's grid,
rotated, shifted and mirrored when that fits better), ``fsc.star`` and ``fsc.png`` (FSC of the
fixed map and the aligned map), ``slices.png`` (central slices of both), ``report.html``,
``job.json`` (results: the rotation as a matrix and RELION Euler angles, the shift in Å, the hand,
the correlations of both hands and the FSC 0.5 / 0.143 resolutions).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cryolens.core.fsc import fsc
from cryolens.errors import InputError
from cryolens.io import read_mrc_header, write_mrc, write_star
from cryolens.jobs.fsc_maps import load_cubic_map
from cryolens.jobs.particles import fsc_table, read_reference
from cryolens.jobs.report import new_figure, plot_fsc, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.mapalign import AlignMapsParams, align_maps, flip_hand

__all__ = ["run_align_maps", "flip_hand_file", "plot_map_pair"]


def plot_map_pair(fixed: np.ndarray, moving: np.ndarray, path: str | os.PathLike, *,
                  labels: tuple[str, str] = ("fixed", "aligned")) -> Path:
    """Central z, y and x slices of two maps, one row each (same grey scale per row)."""
    fig, axes = new_figure(nrows=2, ncols=3, figsize=(8, 5.6), squeeze=False)
    for row, (vol, label) in enumerate(zip((fixed, moving), labels)):
        c = vol.shape[0] // 2
        for ax, img, name in zip(axes[row], (vol[c], vol[:, c], vol[:, :, c]), ("xy", "xz", "yz")):
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_title(f"{label}: central {name}", fontsize=9)
            ax.axis("off")
    return save_figure(fig, path)


def _pixel_size(a: float, b_path: str | os.PathLike, given: float | None, a_path) -> float:
    if given:
        return float(given)
    if a > 0:
        return a
    b = read_mrc_header(b_path).voxel_size
    if b > 0:
        return b
    raise InputError(f"{a_path}: neither map's header gives a voxel size; pass it with --pixel-size.")


def run_align_maps(fixed_path: str | os.PathLike, moving_path: str | os.PathLike, out_dir: str | os.PathLike,
                   params: AlignMapsParams, *, pixel_size: float | None = None, device: torch.device | str = "cpu",
                   progress: Callable[[str], None] | None = None, observer: JobObserver | None = None) -> Job:
    """Align the map ``moving_path`` onto ``fixed_path`` into ``out_dir``; returns the finished :class:`Job`.

    The moving map is Fourier-resampled to the fixed map's voxel size and padded or cropped to
    its box first; ``pixel_size`` (Å) overrides the headers.
    """
    out = Path(out_dir)
    check_params("align-maps", params)
    fixed, apix = load_cubic_map(fixed_path)
    apix = _pixel_size(apix, moving_path, pixel_size, fixed_path)
    n = fixed.shape[-1]
    moving = read_reference(moving_path, box=n, pixel_size=apix, what="map")
    with Job("align-maps", out, params=params, inputs={"fixed": fixed_path, "moving": moving_path},
             device=str(device), observer=observer) as job:
        with job.timed("align"):
            res = align_maps(fixed, moving, pixel_size=apix, params=params, device=device, progress=progress)
        aligned = res.aligned.numpy()
        write_mrc(out / "aligned.mrc", aligned, apix)
        job.add_output("aligned", out / "aligned.mrc")
        curve = fsc(fixed, res.aligned, pixel_size=apix)
        write_star(out / "fsc.star", {"fsc": fsc_table(curve)})
        job.add_output("fsc", out / "fsc.star")
        plot_fsc({"fixed vs aligned": curve}, out / "fsc.png", title="FSC after alignment")
        plot_map_pair(fixed.numpy(), aligned, out / "slices.png")
        rot, tilt, psi = res.euler()
        job.results.update(
            resolution_05_A=round(curve.resolution_at(0.5), 3), resolution_0143_A=round(curve.resolution_at(0.143), 3),
            flipped=res.flipped, correlation=round(res.correlation, 5),
            correlation_other_hand=None if res.other_hand is None else round(res.other_hand, 5),
            rotation_matrix=[[round(float(v), 6) for v in row] for row in res.rotation],
            euler_rot_tilt_psi_deg=[round(rot, 3), round(tilt, 3), round(psi, 3)],
            shift_xyz_A=[round(float(v) * apix, 3) for v in res.shift], box=n, pixel_size_A=apix)
        write_report(out / "report.html", title="Map alignment", summary=job.results, params=job.params,
                     images=["fsc.png", "slices.png"])
        job.log.info("aligned %s onto %s: FSC 0.5 at %.2f Å (%s hand)", moving_path, fixed_path,
                     curve.resolution_at(0.5), "mirrored" if res.flipped else "given")
    return job


def flip_hand_file(in_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Mirror a map along z (:func:`cryolens.mapalign.flip_hand`) into ``out_path``, keeping voxel size and origin."""
    vol, _ = load_cubic_map(in_path)
    info = read_mrc_header(in_path)
    write_mrc(out_path, flip_hand(vol).numpy(), info.voxel_size, origin=info.origin)
    return Path(out_path)
