"""The ``relion_postprocess`` chain of two half maps: mask, corrected FSC, resolution, FSC
weighting, B-factor sharpening (or cisTEM-style flattening) and low-pass.

:func:`postprocess` chains the pieces of :mod:`cryolens.postprocess.masking`,
:mod:`cryolens.postprocess.fsc_correction` and :mod:`cryolens.postprocess.sharpen`.
Units: Å (pixel size, resolutions), Å² (B-factors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cryolens.core.fourier import ft3, ift3
from cryolens.params import Params, option
from cryolens.postprocess.fsc_correction import FSCCurves, corrected_fsc
from cryolens.postprocess.masking import MaskParams, check_mask, make_mask, solvent_fraction_factor
from cryolens.postprocess.sharpen import (GuinierFit, apply_bfactor, apply_shell_weights, divide_by_mtf, fit_guinier,
                                          flatten_spectrum, flip_hand, fom_weights, fsc_weights, guinier_curve,
                                          lowpass)

__all__ = ["PostprocessParams", "PostprocessResult", "postprocess"]

Progress = Callable[[int, int], None]


def parse_bfactor(text: str) -> float | None:
    """``"auto"`` -> None (Guinier fit); a number -> that B-factor [Å²]."""
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError("give 'auto' or a B-factor in Å², e.g. --bfactor auto or --bfactor -80") from None


@dataclass
class PostprocessParams(Params):
    """Options of :func:`postprocess`, each declared once (RELION ``relion_postprocess`` names in the help).

    ``autob_high_res``: RELION's default range (0: as far as the FSC-weighted amplitudes are
    non-zero) reaches into shells where the weights are tiny, which makes its B swing by ~±15 %
    between phase randomisations of the same half maps; ending at the final resolution (None,
    the default) gave the same B to ~5 % as ``relion_postprocess --autob_highres`` at that
    resolution, stable across seeds. ``flatten``: cisTEM-style, the spectrum is flattened beyond
    ``flatten_from`` and weighted by the FOM ``SSNR/(1+SSNR)`` instead of FSC weighting + B-factor.
    """

    mask: MaskParams = option(default_factory=MaskParams, cli=False, help="How to build the FSC mask")
    bfactor: float | None = option(None, parse=parse_bfactor, text=lambda b: "auto" if b is None else f"{b:g}",
                                   metavar="auto|B", unit="Å²",
                                   help="'auto' (Guinier fit, the default; RELION --auto_bfac) or a B-factor "
                                        "(negative sharpens; 0: none; --adhoc_bfac)")
    autob_low_res: float = option(10.0, flag="--autob-lowres", unit="Å", gt=0,
                                  help="Lowest resolution of the Guinier fit")
    autob_high_res: float | None = option(None, flag="--autob-highres", unit="Å", ge=0,
                                          help="Highest resolution of the Guinier fit (default: the final "
                                               "resolution; 0: as far as the FSC-weighted amplitudes reach, as "
                                               "RELION)")
    fsc_weighting: bool = option(True, flag="--fsc-weighting/--skip-fsc-weighting",
                                 help="Weight shells by sqrt(2FSC/(1+FSC))")
    low_pass: float | None = option(None, unit="Å", gt=0,
                                    help="Low-pass the map at this resolution (default: the final resolution)")
    filter_edge_shells: float = option(2.0, ge=0, help="Width of the low-pass raised cosine in shells")
    randomize_at_fsc: float = option(0.8, gt=0, lt=1,
                                     help="Randomise phases where the unmasked FSC drops below this")
    randomize_at_angstrom: float | None = option(None, flag="--randomize-at", unit="Å", gt=0,
                                                 help="Randomise phases from this resolution instead")
    force_mask: bool = option(False, help="Keep the masked FSC even when the unmasked one reaches further")
    flatten: bool = option(False, help="cisTEM-style: flatten the spectrum beyond --flatten-from and weight by "
                                       "the FOM instead of B-factor sharpening")
    flatten_from: float = option(8.0, unit="Å", gt=0, help="Resolution beyond which --flatten flattens")
    flip_hand: bool = option(False, help="Mirror the sharpened map (invert its hand)")
    mtf_pixel_size: float | None = option(None, unit="Å", gt=0,
                                          help="Detector pixel size of the MTF (default: the maps')")

    def check(self) -> None:
        """The mask's own rules; the Guinier range in the right order."""
        self.mask.validate()
        if self.autob_high_res is not None and self.autob_high_res >= self.autob_low_res:
            raise ValueError(f"--autob-highres {self.autob_high_res:g}: must be 0 or finer (smaller, in Å) than "
                             f"--autob-lowres {self.autob_low_res:g}")


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
