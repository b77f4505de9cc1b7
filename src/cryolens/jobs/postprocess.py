"""``cryolens postprocess``: mask, corrected FSC, resolution and sharpened map from two half maps.

Outputs in the job folder: ``fsc.star`` (RELION ``relion_postprocess`` blocks ``data_general``,
``data_fsc`` with every curve, ``data_guinier``), ``map_sharp.mrc`` (sharpened, FSC-weighted,
low-passed average of the half maps), ``map_sharp_masked.mrc`` and ``mask.mrc`` (when masked),
``fsc.png`` (all curves, 0.143 line), ``guinier.png``, ``map_slices.png``, ``report.html``, ``job.json``.
With ``flip_hand`` the sharpened maps are mirrored; ``mask.mrc`` stays on the half maps' hand
(it is the mask the FSC used).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.core.fsc import FSCResult
from cryolens.errors import InputError
from cryolens.io import read_star, write_mrc, write_star
from cryolens.jobs.fsc_maps import load_cubic_map, load_map_pair
from cryolens.jobs.report import new_figure, plot_central_slices, plot_fsc, save_figure, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.postprocess import (PostprocessParams, PostprocessResult, check_mask, flip_hand, particle_fraction_fsc,
                                  postprocess)

__all__ = ["run_postprocess", "postprocess_star_blocks", "plot_guinier", "read_mtf"]


def read_mtf(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """RELION MTF STAR file -> ``(rlnResolutionInversePixel, rlnMtfValue)`` arrays, checked."""
    for block in read_star(path).values():
        if isinstance(block, pd.DataFrame) and {"rlnResolutionInversePixel", "rlnMtfValue"} <= set(block.columns):
            freq = block["rlnResolutionInversePixel"].to_numpy(float)
            val = block["rlnMtfValue"].to_numpy(float)
            if len(freq) < 2 or np.any(np.diff(freq) <= 0) or np.any(val <= 1e-10):
                raise InputError(f"{path}: the MTF needs increasing rlnResolutionInversePixel and positive "
                                 "rlnMtfValue in at least two rows; use the detector's MTF STAR file.")
            return freq, val
    raise InputError(f"{path}: no table with rlnResolutionInversePixel and rlnMtfValue; give a RELION MTF STAR file.")


def _finite(x: np.ndarray, fill: float = -99.0) -> np.ndarray:
    return np.where(np.isfinite(x), x, fill)


def postprocess_star_blocks(res: PostprocessResult, params: PostprocessParams, *, half1: str, half2: str,
                            mask_name: str | None, have_mtf: bool) -> dict[str, object]:
    """``fsc.star`` as ``relion_postprocess`` 3.1 writes ``postprocess.star`` (block and column names)."""
    c = res.curves
    general: dict[str, object] = {
        "rlnFinalResolution": round(res.final_resolution, 6),
        "rlnBfactorUsedForSharpening": round(res.bfactor, 5),
        "rlnUnfilteredMapHalf1": str(half1),
        "rlnUnfilteredMapHalf2": str(half2),
    }
    if res.mask is not None:
        general["rlnParticleBoxFractionSolventMask"] = round(res.solvent_factor, 6)
        general["rlnMaskName"] = mask_name or "mask.mrc"
        general["rlnRandomiseFrom"] = round(c.randomize_angstrom, 6)
    if res.guinier_fit is not None and params.bfactor is None and not params.flatten:
        general["rlnFittedSlopeGuinierPlot"] = round(res.guinier_fit.slope, 5)
        general["rlnFittedInterceptGuinierPlot"] = round(res.guinier_fit.intercept, 5)
        general["rlnCorrelationFitGuinierPlot"] = round(res.guinier_fit.correlation, 6)
    u = c.unmasked
    res_a = np.where(u.shell > 0, u.n * u.pixel_size / np.maximum(u.shell, 1), 999.0)
    fsc_cols: dict[str, np.ndarray] = {
        "rlnSpectralIndex": u.shell.astype(int),
        "rlnResolution": 1.0 / res_a,
        "rlnAngstromResolution": res_a,
        "rlnFourierShellCorrelationCorrected": res.final_fsc,
    }
    if res.mask is not None:
        fsc_cols["rlnFourierShellCorrelationParticleMaskFraction"] = particle_fraction_fsc(u.fsc, res.solvent_factor)
        fsc_cols["rlnFourierShellCorrelationUnmaskedMaps"] = u.fsc
        fsc_cols["rlnFourierShellCorrelationMaskedMaps"] = c.masked.fsc
        fsc_cols["rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"] = c.random_masked.fsc
    else:
        fsc_cols["rlnFourierShellCorrelationUnmaskedMaps"] = u.fsc
    g = res.guinier
    gcols: dict[str, np.ndarray] = {"rlnResolutionSquared": g["s2"], "rlnLogAmplitudesOriginal": _finite(g["original"])}
    if have_mtf:
        gcols["rlnLogAmplitudesMTFCorrected"] = _finite(g["mtf_corrected"])
    if params.fsc_weighting:
        gcols["rlnLogAmplitudesWeighted"] = _finite(g["weighted"])
    if params.flatten or res.bfactor != 0:
        gcols["rlnLogAmplitudesSharpened"] = _finite(g["sharpened"])
    if res.guinier_fit is not None:
        gcols["rlnLogAmplitudesIntercept"] = np.full(len(g["s2"]), res.guinier_fit.intercept)
    return {"general": general, "fsc": pd.DataFrame(fsc_cols), "guinier": pd.DataFrame(gcols)}


def plot_guinier(res: PostprocessResult, path: str | os.PathLike) -> Path:
    """ln amplitude against 1/d² for the original, weighted and sharpened map, with the fitted line."""
    g = res.guinier
    fig, ax = new_figure(figsize=(6.4, 4.2))
    s2 = g["s2"][1:]
    ax.plot(s2, g["original"][1:], lw=1.4, label="original")
    if not np.allclose(g["mtf_corrected"], g["original"], equal_nan=True):
        ax.plot(s2, g["mtf_corrected"][1:], lw=1.2, label="MTF-corrected")
    ax.plot(s2, g["weighted"][1:], lw=1.2, label="FSC-weighted")
    ax.plot(s2, g["sharpened"][1:], lw=1.2, label=f"sharpened (B = {res.bfactor:.1f} Å²)")
    fit = res.guinier_fit
    if fit is not None:
        x = np.array([1 / fit.low_res ** 2, 1 / fit.high_res ** 2])
        ax.plot(x, fit.intercept + fit.slope * x, "k--", lw=1.0,
                label=f"fit {fit.low_res:g}–{fit.high_res:.2f} Å: B = {fit.bfactor:.1f} Å², r² = {fit.correlation:.3f}")
    ax.set_xlabel("1/d² (Å⁻²)")
    ax.set_ylabel("ln |F|")
    ax.set_title("Guinier plot")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, Path(path))


def _user_mask(path: str | os.PathLike, shape: tuple[int, ...], pixel_size: float) -> torch.Tensor:
    mask, apix = load_cubic_map(path)
    if tuple(mask.shape) == tuple(shape) and apix and abs(apix - pixel_size) > 1e-3 * pixel_size:
        raise InputError(f"{path}: voxel size {apix:g} Å differs from the half maps' {pixel_size:g} Å; "
                         "make the mask on the half maps' grid.")
    why = check_mask(mask, shape)
    if why:
        raise InputError(f"{path}: {why}; give a mask in [0, 1] on the half maps' grid, or use --mask tight.")
    return mask


def run_postprocess(half1: str | os.PathLike, half2: str | os.PathLike, out_dir: str | os.PathLike,
                    params: PostprocessParams, *, mask_file: str | os.PathLike | None = None,
                    mtf_file: str | os.PathLike | None = None, pixel_size: float | None = None, seed: int = 0,
                    device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None,
                    observer: JobObserver | None = None) -> Job:
    """Postprocess two half maps into ``out_dir``; returns the finished :class:`Job`."""
    out = Path(out_dir)
    check_params("postprocess", params)
    h1, h2, apix = load_map_pair(half1, half2, pixel_size=pixel_size)
    user_mask = _user_mask(mask_file, tuple(h1.shape), apix) if mask_file else None
    mtf = read_mtf(mtf_file) if mtf_file else None
    inputs = {"half1": half1, "half2": half2, **({"mask": mask_file} if mask_file else {}),
              **({"mtf": mtf_file} if mtf_file else {})}
    with Job("postprocess", out, params=params, inputs=inputs, seed=seed, device=str(device),
             observer=observer) as job:
        dev = torch.device(device)
        with job.timed("postprocess"):
            try:
                res = postprocess(h1.to(dev), h2.to(dev), pixel_size=apix, params=params,
                                  mask=None if user_mask is None else user_mask.to(dev), mtf=mtf, seed=seed,
                                  progress=progress)
            except ValueError as e:
                fix = ("give the resolution to randomise from with --randomize-at" if "randomise" in str(e)
                       else "check the half maps and the options")
                raise InputError(f"{half1}: {e}; {fix}.") from None
        for w in res.warnings:
            job.log.warning(w)
        sharp = res.map_sharp.cpu()
        write_mrc(out / "map_sharp.mrc", sharp.numpy(), apix)
        job.add_output("map_sharp", out / "map_sharp.mrc")
        images = ["fsc.png", "guinier.png", "map_slices.png"]
        if res.mask is not None:
            mask = res.mask.cpu()
            write_mrc(out / "mask.mrc", mask.numpy(), apix)
            job.add_output("mask", out / "mask.mrc")
            shown_mask = flip_hand(mask) if params.flip_hand else mask
            write_mrc(out / "map_sharp_masked.mrc", (sharp * shown_mask).numpy(), apix)
            job.add_output("map_sharp_masked", out / "map_sharp_masked.mrc")
        blocks = postprocess_star_blocks(res, params, half1=str(half1), half2=str(half2),
                                         mask_name=str(mask_file) if mask_file else ("mask.mrc" if res.mask is not None else None),
                                         have_mtf=mtf is not None)
        write_star(out / "fsc.star", blocks)
        job.add_output("fsc", out / "fsc.star")
        c = res.curves
        curves: dict[str, FSCResult]
        if res.mask is not None:
            curves = {"corrected": c.corrected, "unmasked": c.unmasked, "masked": c.masked,
                      "phase-randomised masked": c.random_masked}
        else:
            curves = {"unmasked": c.unmasked}
        plot_fsc(curves, out / "fsc.png", thresholds=(0.143,),
                 title=f"FSC: final resolution {res.final_resolution:.2f} Å")
        plot_guinier(res, out / "guinier.png")
        plot_central_slices(sharp.numpy(), out / "map_slices.png", title="map_sharp.mrc")
        fit = res.guinier_fit
        job.results.update(
            resolution_corrected_A=round(res.final_resolution, 3), resolution_unmasked_A=round(res.resolution_unmasked, 3),
            resolution_masked_A=None if res.resolution_masked is None else round(res.resolution_masked, 3),
            used_unmasked_fsc=res.used_unmasked, bfactor_A2=round(res.bfactor, 2),
            guinier_bfactor_A2=None if fit is None else round(fit.bfactor, 2),
            guinier_r2=None if fit is None else round(fit.correlation, 4),
            guinier_range_A=None if fit is None else [fit.low_res, round(fit.high_res, 3)],
            randomise_from_A=None if c.randomize_angstrom is None else round(c.randomize_angstrom, 3),
            low_pass_A=round(res.low_pass, 3), mask="file" if mask_file else params.mask.kind,
            solvent_fraction_factor=None if res.mask is None else round(res.solvent_factor, 4),
            box=int(h1.shape[-1]), pixel_size_A=apix, flip_hand=params.flip_hand, flatten=params.flatten,
            warnings=res.warnings)
        write_report(out / "report.html", title="Postprocessing", summary=job.results, params=job.params, images=images)
        job.log.info("final resolution (corrected FSC = 0.143): %.2f Å; B-factor %.1f Å²", res.final_resolution,
                     res.bfactor)
    return job
