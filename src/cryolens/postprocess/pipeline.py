"""The ``relion_postprocess`` chain of two half maps: mask, corrected FSC, resolution, FSC
weighting, B-factor sharpening (or cisTEM-style flattening) and low-pass.

:func:`postprocess` chains the pieces of :mod:`cryolens.postprocess.masking`,
:mod:`cryolens.postprocess.fsc_correction` and :mod:`cryolens.postprocess.sharpen`.
Units: Å (pixel size, resolutions), Å² (B-factors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from cryolens.core.fourier import ft3, ift3
from cryolens.postprocess.fsc_correction import FSCCurves, corrected_fsc
from cryolens.postprocess.masking import MaskParams, check_mask, make_mask, solvent_fraction_factor
from cryolens.postprocess.sharpen import (GuinierFit, apply_bfactor, apply_shell_weights, divide_by_mtf, fit_guinier,
                                          flatten_spectrum, flip_hand, fom_weights, fsc_weights, guinier_curve,
                                          lowpass)

__all__ = ["PostprocessParams", "PostprocessResult", "postprocess"]

Progress = Callable[[int, int], None]


@dataclass
class PostprocessParams:
    """Options of :func:`postprocess` (RELION ``relion_postprocess`` names in brackets).

    Attributes:
        mask: how to build the mask when none is given (default: automatic tight mask).
        bfactor: B-factor (Å²) to apply; ``None`` = fit it from the Guinier plot [--auto_bfac];
            negative sharpens [--adhoc_bfac]; 0 = none.
        autob_low_res: lowest resolution (Å) of the Guinier fit [--autob_lowres].
        autob_high_res: highest resolution (Å) of the fit; ``None``: the final resolution; 0: as
            far as the FSC-weighted amplitudes are non-zero (RELION's default) [--autob_highres].
            RELION's default range reaches into shells where the weights are tiny, which makes
            its B swing by ~±15% between phase randomisations of the same half maps; ending
            at the final resolution gave the same B to ~5% as ``relion_postprocess
            --autob_highres`` at that resolution, stable across seeds.
        fsc_weighting: weight shells by ``sqrt(2FSC/(1+FSC))`` [not --skip_fsc_weighting].
        low_pass: low-pass (Å) of the final map; ``None``: the final resolution [--low_pass].
        filter_edge_shells: width of the low-pass raised cosine in shells [--filter_edge_width].
        randomize_at_fsc: randomise phases where the unmasked FSC drops below this [--randomize_at_fsc].
        randomize_at_angstrom: randomise from this resolution (Å) instead [--randomize_at_A].
        force_mask: keep the masked result even when the unmasked FSC reaches further [--force_mask].
        flatten: cisTEM-style: flatten the spectrum beyond ``flatten_from`` Å and weight by the
            FOM ``SSNR/(1+SSNR)`` instead of FSC weighting + B-factor.
        flatten_from: resolution (Å) beyond which the spectrum is flattened.
        flip_hand: mirror the sharpened map (invert its hand).
        mtf_pixel_size: detector pixel size (Å) of an MTF curve given to :func:`postprocess` [--mtf_angpix].
    """

    mask: MaskParams = field(default_factory=MaskParams)
    bfactor: float | None = None
    autob_low_res: float = 10.0
    autob_high_res: float | None = None
    fsc_weighting: bool = True
    low_pass: float | None = None
    filter_edge_shells: float = 2.0
    randomize_at_fsc: float = 0.8
    randomize_at_angstrom: float | None = None
    force_mask: bool = False
    flatten: bool = False
    flatten_from: float = 8.0
    flip_hand: bool = False
    mtf_pixel_size: float | None = None

    def validate(self) -> None:
        self.mask.validate()
        if self.autob_low_res <= 0:
            raise ValueError("autob_low_res must be positive (Å)")
        if self.autob_high_res is not None and (self.autob_high_res < 0 or self.autob_high_res >= self.autob_low_res):
            raise ValueError("autob_high_res must be 0 or finer (smaller, in Å) than autob_low_res")
        if self.low_pass is not None and self.low_pass <= 0:
            raise ValueError("low_pass must be positive (Å)")
        if self.filter_edge_shells < 0:
            raise ValueError("filter_edge_shells must not be negative")
        if not 0.0 < self.randomize_at_fsc < 1.0:
            raise ValueError("randomize_at_fsc must lie between 0 and 1")
        if self.randomize_at_angstrom is not None and self.randomize_at_angstrom <= 0:
            raise ValueError("randomize_at_angstrom must be positive (Å)")
        if self.flatten_from <= 0:
            raise ValueError("flatten_from must be positive (Å)")
        if self.mtf_pixel_size is not None and self.mtf_pixel_size <= 0:
            raise ValueError("mtf_pixel_size must be positive (Å)")


@dataclass
class PostprocessResult:
    """What :func:`postprocess` computed.

    Attributes:
        mask: the FSC mask (``None`` without one).
        curves: every FSC curve (see :class:`FSCCurves`).
        final_resolution: Å where the corrected FSC (or the unmasked one, after a fallback)
            crosses 0.143, interpolated between shells.
        resolution_unmasked, resolution_masked: the same for the unmasked and masked FSC (Å).
        used_unmasked: the unmasked FSC reached further than the corrected one, so it was
            used (RELION does this unless ``force_mask``).
        bfactor: B-factor applied (Å²; 0 when none or when flattening).
        guinier_fit: the Guinier fit (``None`` when it could not be made).
        guinier: ``{"s2", "original", "mtf_corrected", "weighted", "sharpened"}`` per shell
            (ln amplitudes; NaN where 0).
        map_sharp: the sharpened, filtered average of the half maps ``(n, n, n)``.
        low_pass: the low-pass resolution applied (Å).
        solvent_factor: RELION's ``f`` from the mask (NaN without a mask).
        warnings: sentences for the log.
    """

    mask: torch.Tensor | None
    curves: FSCCurves
    final_resolution: float
    resolution_unmasked: float
    resolution_masked: float | None
    used_unmasked: bool
    bfactor: float
    guinier_fit: GuinierFit | None
    guinier: dict[str, np.ndarray]
    map_sharp: torch.Tensor
    low_pass: float
    solvent_factor: float
    warnings: list[str]

    @property
    def final_fsc(self) -> np.ndarray:
        """The curve the final resolution comes from."""
        return self.curves.unmasked.fsc if self.used_unmasked else self.curves.corrected.fsc


def postprocess(half1: torch.Tensor, half2: torch.Tensor, *, pixel_size: float, params: PostprocessParams,
                mask: torch.Tensor | None = None, mtf: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
                progress: Progress | None = None) -> PostprocessResult:
    """Mask, corrected FSC, resolution and sharpened map from two half maps (``relion_postprocess``'s recipe).

    Args:
        half1, half2: ``(n, n, n)`` unfiltered half maps on any device.
        pixel_size: Å per voxel.
        params: options (see :class:`PostprocessParams`).
        mask: a user mask ``(n, n, n)`` in ``[0, 1]``; overrides ``params.mask``.
        mtf: ``(frequency in cycles per detector pixel, MTF value)`` to divide by, or ``None``.
        seed: seed of the phase randomisation.
        progress: ``callback(done, total)`` over the steps.

    Raises:
        ValueError: impossible params, a mask that does not fit, or an FSC that never drops
            below ``randomize_at_fsc``.
    """
    params.validate()
    report = progress or (lambda done, total: None)
    total = 4
    warnings: list[str] = []
    h1, h2 = half1.float(), half2.float()
    average = 0.5 * (h1 + h2)
    if mask is None:
        mask = make_mask(average, pixel_size=pixel_size, params=params.mask)
    else:
        why = check_mask(mask, tuple(h1.shape))
        if why:
            raise ValueError(f"the mask cannot be used: {why}")
        mask = mask.float().clamp(0, 1).to(h1.device)
    report(1, total)

    curves = corrected_fsc(h1, h2, mask, pixel_size=pixel_size, randomize_at_fsc=params.randomize_at_fsc,
                           randomize_at_angstrom=params.randomize_at_angstrom, seed=seed)
    final, used_unmasked = _final_resolution(curves, box=h1.shape[-1], pixel_size=pixel_size,
                                             force_mask=params.force_mask, warnings=warnings)
    report(2, total)

    final_curve = curves.unmasked.fsc if used_unmasked else curves.corrected.fsc
    sharp, bfactor, fit, guinier = _sharpen(ft3(average), final_curve, final, mtf=mtf, pixel_size=pixel_size,
                                            params=params, warnings=warnings)
    report(3, total)

    lp = float(params.low_pass) if params.low_pass else float(final)
    sharp = lowpass(sharp, lp, pixel_size=pixel_size, edge_shells=params.filter_edge_shells)
    out = ift3(sharp, h1.shape[-1])
    if params.flip_hand:
        out = flip_hand(out)
    report(4, total)
    res_masked = curves.masked.resolution_at(0.143) if curves.masked is not None else None
    return PostprocessResult(
        mask=mask, curves=curves, final_resolution=float(final),
        resolution_unmasked=float(curves.unmasked.resolution_at(0.143)),
        resolution_masked=None if res_masked is None else float(res_masked), used_unmasked=used_unmasked,
        bfactor=float(bfactor), guinier_fit=fit, guinier=guinier, map_sharp=out, low_pass=lp,
        solvent_factor=solvent_fraction_factor(mask) if mask is not None else float("nan"), warnings=warnings)


def _final_resolution(curves: FSCCurves, *, box: int, pixel_size: float, force_mask: bool,
                      warnings: list[str]) -> tuple[float, bool]:
    """The final resolution [Å] at FSC 0.143 of the mask-corrected curve (or of the unmasked one
    when it reaches further, unless ``force_mask``) and whether the unmasked curve was used;
    sentences about either choice are appended to ``warnings``."""
    res_unmasked = curves.unmasked.resolution_at(0.143)
    final = curves.corrected.resolution_at(0.143)
    used_unmasked = False
    if res_unmasked < final:
        if force_mask:
            warnings.append("the unmasked FSC extends beyond the mask-corrected FSC (mask kept: force_mask)")
        else:
            warnings.append("the unmasked FSC extends beyond the mask-corrected FSC, so the unmasked FSC is used; "
                            "check the mask")
            used_unmasked, final = True, res_unmasked
    if curves.random_masked is not None and not used_unmasked:
        shell = int(min(len(curves.random_masked.fsc) - 1, np.floor(box * pixel_size / final)))
        if curves.random_masked.fsc[shell] > 0.1:
            warnings.append(f"the phase-randomised masked FSC is {curves.random_masked.fsc[shell]:.2f} (> 0.10) at "
                            "the final resolution; a softer mask would give a more reliable estimate")
    return final, used_unmasked


def _sharpen(f: torch.Tensor, final_curve: np.ndarray, final: float, *, mtf, pixel_size: float,
             params: PostprocessParams, warnings: list[str]) -> tuple[torch.Tensor, float, GuinierFit | None, dict]:
    """Sharpened transform of the average map ``f``: MTF correction, FSC weighting and B-factor
    (or flattening and FOM weighting); returns it with the B-factor [Å²], the Guinier fit and
    the Guinier curves ``{s2, original, mtf_corrected, weighted, sharpened}``."""
    s2, g_in = guinier_curve(f, pixel_size=pixel_size)
    if mtf is not None:
        f = divide_by_mtf(f, mtf[0], mtf[1], pixel_size=pixel_size, mtf_pixel_size=params.mtf_pixel_size)
    _, g_mtf = guinier_curve(f, pixel_size=pixel_size)
    weighted = apply_shell_weights(f, fsc_weights(final_curve)) if params.fsc_weighting else f
    _, g_weighted = guinier_curve(weighted, pixel_size=pixel_size)
    fit = None
    high = final if params.autob_high_res is None else (params.autob_high_res or None)
    try:
        fit = fit_guinier(s2, g_weighted, low_res=params.autob_low_res, high_res=high)
    except ValueError as e:
        warnings.append(f"no Guinier fit, so no B-factor sharpening: {e}")
    if params.flatten:
        sharp = apply_shell_weights(flatten_spectrum(f, pixel_size=pixel_size, from_angstrom=params.flatten_from),
                                    fom_weights(final_curve))
        bfactor = 0.0
    else:
        if params.bfactor is not None:
            bfactor = float(params.bfactor)
        else:
            bfactor = fit.bfactor if fit is not None else 0.0
        sharp = apply_bfactor(weighted, bfactor, pixel_size=pixel_size) if bfactor else weighted
    _, g_sharp = guinier_curve(sharp, pixel_size=pixel_size)
    guinier = {"s2": s2, "original": g_in, "mtf_corrected": g_mtf, "weighted": g_weighted, "sharpened": g_sharp}
    return sharp, bfactor, fit, guinier
