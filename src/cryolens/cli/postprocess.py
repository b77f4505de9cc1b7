"""``cryolens postprocess``: masks, corrected FSC, resolution and B-factor sharpening of two half maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, job_target,
                                 progress_bar, run_guarded)
from cryolens.errors import InputError
from cryolens.postprocess import MASK_KINDS, MaskParams, PostprocessParams


def _bfactor(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--bfactor {text!r} is neither 'auto' nor a number; give e.g. --bfactor auto or "
                         "--bfactor -80.") from None


def postprocess(
    half1: Annotated[Path, typer.Option("--half1", help="First unfiltered half map (MRC).")],
    half2: Annotated[Path, typer.Option("--half2", help="Second half map, same box and pixel size.")],
    mask: Annotated[str, typer.Option(help=f"FSC mask: {', '.join(MASK_KINDS)} (automatic, from the half maps' "
                                           "average), or an MRC file with values in [0, 1].")] = "tight",
    mask_threshold: Annotated[Optional[float], typer.Option(help="Absolute density threshold for loose/tight masks "
                                                                 "(default: --mask-threshold-fraction of the max).")] = None,
    mask_threshold_fraction: Annotated[float, typer.Option(help="Threshold as a fraction of the low-passed map's "
                                                                "maximum.")] = 0.2,
    mask_lowpass: Annotated[float, typer.Option(help="Low-pass (Å) before thresholding; 0 = none.")] = 15.0,
    mask_dilate: Annotated[Optional[float], typer.Option(help="Dilation (Å) of the thresholded region "
                                                              "(default 6 tight, 25 loose).")] = None,
    mask_edge: Annotated[Optional[float], typer.Option(help="Soft cosine edge (Å) (default 6 tight, 15 loose).")] = None,
    bfactor: Annotated[str, typer.Option(help="'auto' (Guinier fit) or a B-factor in Å² (negative sharpens; 0: none).")] = "auto",
    autob_lowres: Annotated[float, typer.Option(help="Lowest resolution (Å) of the Guinier fit.")] = 10.0,
    autob_highres: Annotated[Optional[float], typer.Option(help="Highest resolution (Å) of the Guinier fit "
                                                                "(default: the final resolution; 0: as far as the "
                                                                "FSC-weighted amplitudes reach, as RELION).")] = None,
    skip_fsc_weighting: Annotated[bool, typer.Option("--skip-fsc-weighting", help="No sqrt(2FSC/(1+FSC)) weighting.")] = False,
    low_pass: Annotated[Optional[float], typer.Option(help="Low-pass the map at this resolution (Å) "
                                                           "(default: the final resolution).")] = None,
    randomize_at_fsc: Annotated[float, typer.Option(help="Randomise phases where the unmasked FSC drops below this.")] = 0.8,
    randomize_at: Annotated[Optional[float], typer.Option(help="Randomise phases from this resolution (Å) instead.")] = None,
    force_mask: Annotated[bool, typer.Option("--force-mask", help="Keep the masked FSC even when the unmasked one "
                                                                 "reaches further.")] = False,
    flatten: Annotated[bool, typer.Option("--flatten", help="cisTEM-style: flatten the spectrum beyond --flatten-from "
                                                            "and weight by the FOM instead of B-factor sharpening.")] = False,
    flatten_from: Annotated[float, typer.Option(help="Resolution (Å) beyond which --flatten flattens.")] = 8.0,
    flip_hand: Annotated[bool, typer.Option("--flip-hand", help="Mirror the sharpened map (invert its hand).")] = False,
    mtf: Annotated[Optional[Path], typer.Option(help="Detector MTF (RELION STAR) to divide the map by.")] = None,
    mtf_pixel_size: Annotated[Optional[float], typer.Option(help="Detector pixel size (Å) of the MTF "
                                                                 "(default: the maps').")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(help="Pixel size (Å) when the headers lack it.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the phase randomisation.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Mask-corrected FSC (Chen et al. 2013), resolution, B-factor and sharpened map from two half maps.

    Writes fsc.star (RELION postprocess blocks), fsc.png, guinier.png, map_sharp.mrc,
    map_sharp_masked.mrc, mask.mrc, report.html, job.json.

    Examples:

      cryolens postprocess --half1 rec/half1.mrc --half2 rec/half2.mrc --out post

      cryolens postprocess --half1 h1.mrc --half2 h2.mrc --mask mask.mrc --bfactor -80 --out post
    """
    from cryolens.jobs.postprocess import run_postprocess

    def body():
        kind = mask.lower()
        mask_file = None if kind in MASK_KINDS else Path(mask)
        params = PostprocessParams(
            mask=MaskParams(kind=kind if mask_file is None else "tight", threshold=mask_threshold,
                            threshold_fraction=mask_threshold_fraction, lowpass_angstrom=mask_lowpass or None,
                            dilate_angstrom=mask_dilate, soft_edge_angstrom=mask_edge),
            bfactor=_bfactor(bfactor), autob_low_res=autob_lowres, autob_high_res=autob_highres,
            fsc_weighting=not skip_fsc_weighting, low_pass=low_pass, randomize_at_fsc=randomize_at_fsc,
            randomize_at_angstrom=randomize_at, force_mask=force_mask, flatten=flatten, flatten_from=flatten_from,
            flip_hand=flip_hand, mtf_pixel_size=mtf_pixel_size)
        dev = device_option(device)
        with job_target("postprocess", out, project) as target, progress_bar("postprocessing", quiet=quiet) as cb:
            job = run_postprocess(half1, half2, target.out, params, mask_file=mask_file, mtf_file=mtf,
                                  pixel_size=pixel_size, seed=seed, device=dev, progress=cb, observer=target.observer)
        r = job.results
        masked = "" if r["resolution_masked_A"] is None else f", masked {r['resolution_masked_A']:.2f} Å"
        console.print(f"final resolution (corrected FSC = 0.143): [bold]{r['resolution_corrected_A']:.2f} Å[/] "
                      f"(unmasked {r['resolution_unmasked_A']:.2f} Å{masked}); B-factor {r['bfactor_A2']:.1f} Å² "
                      f"-> {target.out / 'map_sharp.mrc'}")
        for w in r["warnings"]:
            console.print(f"[yellow]warning:[/] {w}")

    run_guarded(body)
