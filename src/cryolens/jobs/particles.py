"""The particle-job toolkit: what every job on a particle STAR file shares.

``cryolens reconstruct`` and ``cryolens refine`` use it today; 2D classification,
3D classification and ab initio are to use it too, so that every particle job
refuses the same bad inputs with the same sentences and writes the same outputs:

- :func:`open_particles` reads a particle STAR file into a :class:`ParticleSet`
  (optics, particles, a lazy :class:`~cryolens.io.ImageSource`, one pixel size in Å,
  the box in pixels), checking the required columns, defocus U and V together,
  one pixel size over the optics groups and a minimum particle count;
- :func:`checked_batches` (or :meth:`ParticleSet.batches`) streams the images in
  batches and refuses a NaN/inf image, naming the particle;
- :func:`read_reference` reads a starting reference or mask onto the particles' grid;
- :func:`write_half_maps` writes ``half1.mrc``, ``half2.mrc``, ``map.mrc``,
  ``fsc.star`` (:func:`fsc_table`), ``fsc.png`` and ``map_slices.png`` and records
  them as the job's outputs.

Every user-fixable problem raises :class:`~cryolens.errors.InputError` with one
sentence naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.core.fourier import pad_or_crop, resample
from cryolens.core.fsc import FSCResult
from cryolens.errors import InputError
from cryolens.io import (ImageSource, merge_optics, read_mrc, read_mrc_header, read_particles, require_columns,
                         require_finite, write_mrc, write_star)
from cryolens.jobs.report import plot_central_slices, plot_fsc
from cryolens.jobs.runner import Job
from cryolens.jobs.units import check_pixel_size
from cryolens.particles import CTF_COLUMNS, POSE_COLUMNS, assign_half_sets

__all__ = ["ParticleSet", "open_particles", "require_particle_columns", "single_pixel_size", "checked_batches",
           "read_reference", "read_mask", "fsc_table", "write_half_maps", "NUMERIC_COLUMNS"]


@dataclasses.dataclass(frozen=True)
class ParticleSet:
    """A checked particle STAR file and its images, ready for a particle job.

    Attributes:
        star: the STAR file as given (error messages name it this way).
        optics: the ``data_optics`` table (RELION 3.1 columns).
        particles: the ``data_particles`` table (RELION 3.1 columns, origins in Å).
        source: lazy view of the images named by ``rlnImageName``.
        pixel_size: the one pixel size of all optics groups, in Å.
        box: image size in pixels.
    """

    star: str | os.PathLike
    optics: pd.DataFrame
    particles: pd.DataFrame
    source: ImageSource
    pixel_size: float
    box: int

    def __len__(self) -> int:
        return len(self.particles)

    def with_half_sets(self, *, seed: int) -> "ParticleSet":
        """A copy whose particles carry ``rlnRandomSubset`` (1/2), see :func:`cryolens.particles.assign_half_sets`."""
        return dataclasses.replace(self, particles=assign_half_sets(self.particles, seed=seed))

    def table(self) -> pd.DataFrame:
        """The per-particle table with the optics columns merged in (what stages take)."""
        return merge_optics(self.optics, self.particles)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(row indices, float32 images (b, y, x))`` of at most ``batch_size``; see :func:`checked_batches`."""
        return checked_batches(self.source, self.particles["rlnImageName"], batch_size, self.star)


#: Per-particle columns a job computes with: where present, each value must be a finite number.
NUMERIC_COLUMNS = [*POSE_COLUMNS, "rlnOriginXAngst", "rlnOriginYAngst", *CTF_COLUMNS, "rlnPhaseShift",
                   "rlnCtfBfactor", "rlnCtfScalefactor"]


def require_particle_columns(particles: pd.DataFrame, star: str | os.PathLike, pose: bool) -> None:
    """Image names (and poses when ``pose``) must be present, and defocus U and V together or not at all.

    A table with only one of the two would otherwise be read as "no CTF" without a word. The numbers a
    job computes with (:data:`NUMERIC_COLUMNS`; the angles only when ``pose``) must be finite.
    """
    require_columns(particles, ["rlnImageName", *(POSE_COLUMNS if pose else [])], star, "particles")
    if any(c in particles.columns for c in CTF_COLUMNS[:2]):
        require_columns(particles, CTF_COLUMNS[:2], star, "particles")
    require_finite(particles, NUMERIC_COLUMNS if pose else NUMERIC_COLUMNS[len(POSE_COLUMNS):], star, "particles")


def single_pixel_size(optics: pd.DataFrame, star: str | os.PathLike) -> float:
    """The one ``rlnImagePixelSize`` (Å) of all optics groups; InputError naming ``star`` when they differ."""
    sizes = optics["rlnImagePixelSize"].astype(float).unique()
    if len(sizes) != 1:
        raise InputError(f"{star}: optics groups have different pixel sizes ({', '.join(f'{s:g}' for s in sizes)} Å); "
                         "rescale the particles to one pixel size before reconstructing.")
    return float(sizes[0])


def open_particles(star: str | os.PathLike, *, pose: bool, min_particles: int = 0, purpose: str = "this job",
                   why: str = "") -> ParticleSet:
    """Read and check a particle STAR file (images located, not read).

    Args:
        star: RELION particle STAR file (any version :func:`cryolens.io.read_particles` reads).
        pose: require ``rlnAngleRot/Tilt/Psi`` (jobs that use the poses as given).
        min_particles: refuse fewer particles than this (0: no minimum).
        purpose: what needs them, for the too-few message (e.g. ``"refinement"``).
        why: the reason for the minimum, put in brackets after it (e.g. ``"two half sets"``).

    Raises:
        InputError: a missing column (``rlnImageName``, the angles when ``pose``, defocus V
            without U or the reverse), a value that is not a finite number, a missing or short
            stack, stacks of different box sizes, optics groups of different pixel sizes, a pixel
            size or box (``rlnImageSize``) that disagrees with the images, no particles or too few.
    """
    optics, particles = read_particles(star)
    if not len(particles):
        raise InputError(f"{star}: holds no particles; give a particle STAR with at least one row.")
    require_particle_columns(particles, star, pose=pose)
    source = ImageSource(particles, star)
    pixel_size = single_pixel_size(optics, star)
    first = source.stack_paths[0]
    check_pixel_size(first, read_mrc_header(first).voxel_size, pixel_size, "rlnImagePixelSize")
    if "rlnImageSize" in optics.columns:
        require_finite(optics, ["rlnImageSize"], star, "optics")
        sizes = sorted(set(int(v) for v in optics["rlnImageSize"]) - {source.image_size})
        if sizes:
            raise InputError(f"{star}: data_optics gives rlnImageSize {sizes[0]} but the images in {first} are "
                             f"{source.image_size} px; correct rlnImageSize (or re-extract the particles).")
    if len(particles) < min_particles:
        reason = f" ({why})" if why else ""
        raise InputError(f"{star}: only {len(particles)} particles; {purpose} needs at least {min_particles}{reason}.")
    return ParticleSet(star=star, optics=optics, particles=particles, source=source, pixel_size=pixel_size,
                       box=source.image_size)


def checked_batches(source: ImageSource, names: pd.Series, batch_size: int,
                    star: str | os.PathLike) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of ``source`` as ``(row indices, float32 images (b, y, x))``, refusing NaN/inf images.

    Args:
        source: the images; read lazily, one batch at a time.
        names: ``rlnImageName`` per row of ``source`` (the error names the bad particle by it).
        batch_size: images per batch (the last may be smaller).
        star: the STAR file, for the error message.

    Raises:
        InputError: when a batch holds an image with NaN or infinite values.
    """
    for idx, images in source.iter_batches(batch_size):
        finite = np.isfinite(images).all(axis=(1, 2))
        if not finite.all():
            bad = names.iloc[int(idx[~finite][0])]
            raise InputError(f"{star}: image {bad} contains NaN or infinite values; "
                             "re-extract or remove that particle.")
        yield idx, images


def read_reference(path: str | os.PathLike, *, box: int, pixel_size: float, what: str = "reference") -> torch.Tensor:
    """A cubic map on the particles' grid: resampled (Fourier) to ``pixel_size`` (Å) and padded/cropped to ``box``.

    For starting references and masks (refinement, 3D classification). A header voxel
    size of 0 is taken to be the particles' pixel size. ``what`` names the map in errors.

    Returns:
        ``(box, box, box)`` float32 tensor.

    Raises:
        InputError: a missing or corrupt file, a non-cubic map, NaN/inf values, or a voxel
            size that cannot be resampled to ``pixel_size``.
    """
    data, apix = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: the {what} must be a cubic 3D map, got shape {data.shape}; give a cubic map.")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the {what} contains NaN or infinite values; fix or regenerate the map.")
    vol = torch.as_tensor(np.array(data, dtype=np.float32))
    if apix > 0 and abs(apix - pixel_size) > 0.005 * pixel_size:
        vol = resample(vol, apix, pixel_size, ndim=3)
        if abs(data.shape[0] * apix / vol.shape[0] - pixel_size) > 0.01 * pixel_size:
            raise InputError(f"{path}: its voxel size {apix:g} Å cannot be resampled to the particles' "
                             f"{pixel_size:g} Å; resample the {what} (e.g. relion_image_handler --rescale_angpix).")
    return pad_or_crop(vol, box) if vol.shape[0] != box else vol


def read_mask(path: str | os.PathLike, *, box: int, pixel_size: float) -> torch.Tensor:
    """A soft mask on the particles' grid (:func:`read_reference`), values clamped to 0..1.

    Raises:
        InputError: as :func:`read_reference`, or values outside 0..1 (beyond a 0.001 tolerance) or no
            value above 0.
    """
    vol = read_reference(path, box=box, pixel_size=pixel_size, what="mask")
    if float(vol.min()) < -1e-3 or float(vol.max()) > 1 + 1e-3 or float(vol.max()) <= 0:
        raise InputError(f"{path}: a mask must hold values between 0 and 1 with some 1s; make a soft mask "
                         "(e.g. relion_mask_create) and pass it again.")
    return vol.clamp(0, 1)


def fsc_table(curve: FSCResult) -> pd.DataFrame:
    """FSC curve as RELION's ``data_fsc`` loop (spectral index, 1/Å, Å, FSC)."""
    return pd.DataFrame({
        "rlnSpectralIndex": curve.shell.astype(int),
        "rlnResolution": curve.frequency,
        "rlnAngstromResolution": np.where(np.isfinite(curve.resolution), curve.resolution, 999.0),
        "rlnFourierShellCorrelation": curve.fsc,
    })


def _as_numpy(vol: torch.Tensor | np.ndarray) -> np.ndarray:
    return vol.detach().cpu().numpy() if isinstance(vol, torch.Tensor) else np.asarray(vol)


def write_half_maps(out: str | os.PathLike, job: Job, half1: torch.Tensor | np.ndarray,
                    half2: torch.Tensor | np.ndarray, full: torch.Tensor | np.ndarray, fsc: FSCResult, *,
                    pixel_size: float) -> dict[str, Path]:
    """Write a gold-standard result into the job folder ``out`` and record the outputs on ``job``.

    Writes ``half1.mrc``, ``half2.mrc``, ``map.mrc`` (voxel size ``pixel_size`` in Å),
    ``fsc.star`` (:func:`fsc_table` of the half-map ``fsc``), ``fsc.png`` and
    ``map_slices.png`` (central slices of ``full``); outputs ``half1``, ``half2``,
    ``map`` and ``fsc`` are added to ``job`` in that order.

    Returns:
        the output names mapped to their paths.
    """
    out = Path(out)
    for name, vol in (("half1", half1), ("half2", half2), ("map", full)):
        write_mrc(out / f"{name}.mrc", _as_numpy(vol), pixel_size)
        job.add_output(name, out / f"{name}.mrc")
    write_star(out / "fsc.star", {"fsc": fsc_table(fsc)})
    job.add_output("fsc", out / "fsc.star")
    plot_fsc({"half maps": fsc}, out / "fsc.png")
    plot_central_slices(_as_numpy(full), out / "map_slices.png", title="map.mrc")
    return {name: Path(job.outputs[name]) for name in ("half1", "half2", "map", "fsc")}
