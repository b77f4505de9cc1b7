"""Postprocessing of two half maps: masks, corrected FSC, resolution, B-factor sharpening (RELION 3.1 style).

The pure pieces are importable on their own (``refine`` uses them):
:func:`auto_mask` / :func:`make_mask` (masks), :func:`corrected_fsc` (Chen et al. 2013),
:func:`fsc_weights` / :func:`fom_weights` (FSC weighting), :func:`guinier_curve` /
:func:`fit_guinier` / :func:`apply_bfactor` / :func:`lowpass` (sharpening), :func:`flip_hand`.
:func:`postprocess` chains them as ``relion_postprocess`` does.
"""

from cryolens.lazy import lazy_exports

__all__ = [
    "PostprocessParams", "PostprocessResult", "postprocess", "MaskParams", "MASK_KINDS", "auto_mask", "make_mask",
    "spherical_mask", "check_mask", "solvent_fraction_factor", "particle_fraction_fsc", "FSCCurves", "corrected_fsc",
    "noise_substitution", "randomize_from_shell", "randomize_phases_beyond", "with_curve", "GuinierFit",
    "fsc_weights", "fom_weights", "apply_shell_weights", "guinier_curve", "fit_guinier", "apply_bfactor", "lowpass",
    "flatten_spectrum", "divide_by_mtf", "flip_hand",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "cryolens.postprocess.fsc_correction": ["FSCCurves", "corrected_fsc", "noise_substitution",
                                            "randomize_from_shell", "randomize_phases_beyond", "with_curve"],
    "cryolens.postprocess.masking": ["MASK_KINDS", "MaskParams", "auto_mask", "check_mask", "make_mask",
                                     "particle_fraction_fsc", "solvent_fraction_factor", "spherical_mask"],
    "cryolens.postprocess.pipeline": ["PostprocessParams", "PostprocessResult", "postprocess"],
    "cryolens.postprocess.sharpen": ["GuinierFit", "apply_bfactor", "apply_shell_weights", "divide_by_mtf",
                                     "fit_guinier", "flatten_spectrum", "flip_hand", "fom_weights", "fsc_weights",
                                     "guinier_curve", "lowpass"],
})
