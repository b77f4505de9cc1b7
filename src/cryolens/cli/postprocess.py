"""``cryolens postprocess``: masks, corrected FSC, resolution and B-factor sharpening of two half maps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (JobOptions, console, device_option,
                                 job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.postprocess import MASK_KINDS, MaskParams, PostprocessParams


@declare(run=JobOptions, params=PostprocessParams, mask_params=MaskParams, outputs=("map_sharp", "mask", "map_sharp_masked", "fsc"))
def postprocess(
    half1: Annotated[Path, typer.Option("--half1", help="First unfiltered half map (MRC).")],
    half2: Annotated[Path, typer.Option("--half2", help="Second half map, same box and pixel size.")],
    mask: Annotated[str, typer.Option(help=f"FSC mask: {', '.join(MASK_KINDS)} (automatic, from the half maps' "
                                           "average), or an MRC file with values in [0, 1].")] = "tight",
    mask_params: MaskParams = None,
    params: PostprocessParams = None,
    mtf: Annotated[Optional[Path], typer.Option(help="Detector MTF (RELION STAR) to divide the map by.")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(help="Pixel size (Å) when the headers lack it.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the phase randomisation.")] = 0,
    run: JobOptions = None,
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
        full = dataclasses.replace(params, mask=dataclasses.replace(mask_params, kind=kind if mask_file is None
                                                                    else "tight"))
        dev = device_option(run.device)
        with job_target("postprocess", run) as target, progress_bar("postprocessing", quiet=run.quiet) as cb:
            job = run_postprocess(half1, half2, target.out, full, mask_file=mask_file, mtf_file=mtf,
                                  pixel_size=pixel_size, seed=seed, device=dev, progress=cb, observer=target.observer)
        r = job.results
        masked = "" if r["resolution_masked_A"] is None else f", masked {r['resolution_masked_A']:.2f} Å"
        console.print(f"final resolution (corrected FSC = 0.143): [bold]{r['resolution_corrected_A']:.2f} Å[/] "
                      f"(unmasked {r['resolution_unmasked_A']:.2f} Å{masked}); B-factor {r['bfactor_A2']:.1f} Å² "
                      f"-> {target.out / 'map_sharp.mrc'}")
        for w in r["warnings"]:
            console.print(f"[yellow]warning:[/] {literal(w)}")

    run_guarded(body)
