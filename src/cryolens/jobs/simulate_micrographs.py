"""``cryolens simulate micrographs``: micrographs with ground truth (positions, poses, CTF).

Outputs in the job folder (paths inside the STAR files are relative to the current
folder, RELION's rule):

* ``micrographs/mic_NNNN.mrc``: float32 detector counts as recorded (protein dark).
* ``micrographs.star``: RELION 3.1 ``data_optics`` + ``data_micrographs`` with
  rlnMicrographName, rlnOpticsGroup, rlnDefocusU/V/Angle (at the micrograph centre),
  rlnCtfAstigmatism, rlnCtfBfactor and cryolens columns (RELION keeps unknown
  labels): ``cryolensTiltAngle``, ``cryolensTiltAxisAngle`` (degrees; the specimen
  plane), ``cryolensDefocusGradientX/Y`` (Å of defocus per pixel along x/y, so that
  the defocus at pixel (x, y) is ``rlnDefocusU/V + gx (x - W/2) + gy (y - H/2)``),
  ``cryolensDose`` (e⁻/Å²), ``cryolensIceThickness`` (Å), ``cryolensNumberOfParticles``.
* ``micrographs/mic_NNNN_truth.star``: RELION coordinate file per micrograph
  (rlnCoordinateX/Y in pixels, rlnClassNumber); RELION 3.1 extraction finds them with
  ``--coord_suffix _truth.star`` next to the micrographs. ``coords.star`` lists them
  (rlnMicrographName, rlnMicrographCoordinates).
* ``particles_truth.star``: every particle over all micrographs: rlnMicrographName,
  rlnCoordinateX/Y, rlnAngleRot/Tilt/Psi, local rlnDefocusU/V/Angle (specimen tilt
  included), rlnClassNumber, rlnOpticsGroup.
* ``truth_map.mrc`` (class 1; ``truth_map_classN.mrc`` for others): the structures at
  the micrographs' pixel size, ``report.html`` (a micrograph with the picks circled,
  its power spectrum), ``job.json``, ``run.log``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.io import write_mrc, write_star
from cryolens.jobs.folders import recorded_name
from cryolens.jobs.report import new_figure, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.structures import load_structures, structure_inputs
from cryolens.simulate.micrographs import MicrographParams, centred_spectrum, power_spectrum, simulate_micrograph

__all__ = ["run_simulate_micrographs", "micrograph_optics"]


def micrograph_optics(params: MicrographParams, *, pixel_size: float, box: int | None = None) -> pd.DataFrame:
    """One RELION 3.1 optics group for the micrographs (and, with ``box``, their particles)."""
    d = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [params.voltage],
         "rlnSphericalAberration": [params.cs], "rlnAmplitudeContrast": [params.amplitude_contrast],
         "rlnMicrographPixelSize": [pixel_size]}
    if box is not None:
        d.update(rlnImagePixelSize=[pixel_size], rlnImageSize=[box], rlnImageDimensionality=[2])
    return pd.DataFrame(d)


def _load(params: MicrographParams):
    """The structures of ``params`` (volume, pixel_size, name, population, units) on one grid; phantom by default."""
    return load_structures(list(params.structures or []), pixel_size=params.pixel_size, box=params.box,
                           seed=params.seed, map_pixel_size=params.map_pixel_size)


def _plot_micrograph(counts: np.ndarray, particles: pd.DataFrame, pixel_size: float, radius_px: float,
                     path: Path) -> Path:
    """Thumbnail (low-passed, binned) with the true picks circled, next to its power spectrum."""
    from matplotlib.patches import Circle

    h, w = counts.shape
    f = max(1, int(np.ceil(max(h, w) / 768)))
    small = counts[: h // f * f, : w // f * f].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    k = np.fft.rfftfreq(small.shape[1])[None, :] ** 2 + np.fft.fftfreq(small.shape[0])[:, None] ** 2
    sigma = min(0.25, f * pixel_size / 30.0)  # Gaussian low-pass to ~30 Å, in cycles per binned pixel
    small = np.fft.irfft2(np.fft.rfft2(small) * np.exp(-k / (2 * sigma ** 2)), s=small.shape)
    lo, hi = np.percentile(small, [1, 99])
    fig, axes = new_figure(ncols=2, figsize=(13, 6.2), gridspec_kw=dict(width_ratios=[w / h, 1]))
    axes[0].imshow(small, cmap="gray", vmin=lo, vmax=hi, origin="upper")
    for x, y in zip(particles["rlnCoordinateX"], particles["rlnCoordinateY"]):
        axes[0].add_patch(Circle((x / f, y / f), radius_px / f, fill=False, color="#ffcc00", lw=0.8))
    axes[0].set_title(f"micrograph 1 (binned {f}x, low-passed to 30 Å), {len(particles)} true positions")
    axes[0].axis("off")
    tile = 512 if min(h, w) >= 1024 else 256 if min(h, w) >= 384 else 128
    s, _, p2 = power_spectrum(torch.as_tensor(counts), pixel_size=pixel_size, tile=tile)
    lp = np.log(np.maximum(centred_spectrum(p2), 1e-12))
    lo, hi = np.percentile(lp, [5, 99.5])
    axes[1].imshow(lp, cmap="gray", vmin=lo, vmax=hi, extent=(-s[-1], s[-1], -s[-1], s[-1]))
    axes[1].set_title(f"power spectrum (log, {tile}-px tiles averaged)")
    axes[1].set_xlabel("spatial frequency (1/Å)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def run_simulate_micrographs(out_dir: str | os.PathLike, params: MicrographParams, *,
                             device: torch.device | str = "cpu",
                             progress: Callable[[int, int], None] | None = None,
                             observer: JobObserver | None = None) -> Job:
    """Simulate ``params.n_micrographs`` micrographs of ``params.structures`` (at ``params.pixel_size``
    and ``params.box``) into ``out_dir``; returns the finished :class:`Job`."""
    out = Path(out_dir)
    check_params("simulate micrographs", params)
    inputs = structure_inputs(list(params.structures))
    with Job("simulate_micrographs", out, params=params, inputs=inputs, seed=params.seed, device=str(device),
             observer=observer) as job:
        structs = _load(params)
        apix = float(structs[0].pixel_size)
        n_box = int(structs[0].volume.shape[-1])
        job.params.update(pixel_size=apix, box=n_box, structures=[s.name for s in structs])
        for i, s in enumerate(structs):
            name = "truth_map.mrc" if i == 0 else f"truth_map_class{i + 1}.mrc"
            write_mrc(out / name, s.volume.numpy(), apix)
            job.add_output(name[:-4], out / name)
        (out / "micrographs").mkdir(exist_ok=True)
        pops = [float(s.population) for s in structs]
        mic_rows, coord_rows, truth = [], [], []
        first = None
        with job.timed("simulate"):
            for i in range(params.n_micrographs):
                counts, t = simulate_micrograph(structs, pops, pixel_size=apix, params=params, index=i, device=device)
                counts = counts.cpu().numpy()
                path = out / "micrographs" / f"mic_{i + 1:04d}.mrc"
                write_mrc(path, counts, apix)
                rel = recorded_name(path)
                parts = t.particles.copy()
                write_star(path.with_name(path.stem + "_truth.star"),
                           {"": parts[["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber"]]})
                c = t.ctf
                mic_rows.append({
                    "rlnMicrographName": rel, "rlnOpticsGroup": 1, "rlnDefocusU": c["defocus_u"],
                    "rlnDefocusV": c["defocus_v"], "rlnDefocusAngle": c["defocus_angle"],
                    "rlnCtfAstigmatism": abs(c["defocus_u"] - c["defocus_v"]), "rlnCtfBfactor": c["bfactor"],
                    "cryolensTiltAngle": c["tilt_angle"], "cryolensTiltAxisAngle": c["tilt_axis"],
                    "cryolensDefocusGradientX": c["gradient_x"], "cryolensDefocusGradientY": c["gradient_y"],
                    "cryolensDose": params.dose, "cryolensIceThickness": params.ice_thickness,
                    "cryolensNumberOfParticles": len(parts)})
                coord_file = recorded_name(path.with_name(path.stem + "_truth.star"))
                coord_rows.append({"rlnMicrographName": rel, "rlnMicrographCoordinates": coord_file})
                parts.insert(0, "rlnMicrographName", rel)
                parts["rlnOpticsGroup"] = 1
                truth.append(parts)
                if first is None:
                    first = (counts, t.particles)
                if progress is not None:
                    progress(i + 1, params.n_micrographs)
        optics = micrograph_optics(params, pixel_size=apix)
        write_star(out / "micrographs.star", {"optics": optics, "micrographs": pd.DataFrame(mic_rows)})
        job.add_output("micrographs", out / "micrographs.star")
        write_star(out / "coords.star", {"coordinate_files": pd.DataFrame(coord_rows)})
        job.add_output("coords", out / "coords.star")
        all_truth = pd.concat(truth, ignore_index=True)
        write_star(out / "particles_truth.star", {"optics": micrograph_optics(params, pixel_size=apix, box=n_box),
                                                  "particles": all_truth})
        job.add_output("particles_truth", out / "particles_truth.star")
        diam = max(0.5 * n_box, 8.0)
        _plot_micrograph(first[0], first[1], apix, diam / 2 * 1.2, out / "micrograph.png")
        requested = params.particles_per_micrograph * params.n_micrographs
        if len(all_truth) < requested:
            job.log.warning("placed %d of %d requested particles: the rest did not fit at the minimum distance",
                            len(all_truth), requested)
        job.results.update(n_micrographs=params.n_micrographs, n_particles=int(len(all_truth)),
                           n_particles_requested=requested,
                           width=params.width, height=params.height, pixel_size_A=apix, box=n_box,
                           seconds_per_micrograph=round(job.timings["simulate"] / params.n_micrographs, 3),
                           defocus_range_A=[round(float(min(r["rlnDefocusV"] for r in mic_rows))),
                                            round(float(max(r["rlnDefocusU"] for r in mic_rows)))])
        write_report(out / "report.html", title="Simulated micrographs", summary=job.results,
                     params={k: v for k, v in job.params.items()}, images=["micrograph.png"])
        job.log.info("wrote %d micrographs with %d particles at %.3f Å/px", params.n_micrographs,
                     len(all_truth), apix)
    return job

