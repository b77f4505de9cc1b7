"""``cryolens align-maps`` and ``cryolens flip-hand``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import JobOptions, console, device_option, err_console, job_target, run_guarded
from cryolens.cli.declare import declare
from cryolens.mapalign.params import AlignMapsParams


@declare(run=JobOptions, params=AlignMapsParams, outputs=("aligned", "fsc"))
def align_maps(
    fixed: Annotated[Path, typer.Argument(help="Fixed map A (MRC).")],
    moving: Annotated[Path, typer.Argument(help="Map B to move onto A (MRC); resampled to A's voxel size and box.")],
    pixel_size: Annotated[Optional[float], typer.Option(help="Voxel size (Å) when the headers lack it.")] = None,
    params: AlignMapsParams = None,
    run: JobOptions = None,
) -> None:
    """Rotate and shift map B onto map A (either hand) and report their FSC after alignment.

    Writes aligned.mrc, fsc.star, fsc.png, slices.png, report.html, job.json (rotation, shift, hand).

    Example:

      cryolens align-maps truth.mrc abinitio/map.mrc --flip-hand auto --out aligned
    """
    from cryolens.jobs.align_maps import run_align_maps

    def body():
        dev = device_option(run.device)
        say = (lambda msg: None) if run.quiet else (lambda msg: err_console.print(msg))
        with job_target("align-maps", run) as target:
            job = run_align_maps(fixed, moving, target.out, params, pixel_size=pixel_size, device=dev, progress=say,
                                 observer=target.observer)
        r = job.results
        rot, tilt, psi = r["euler_rot_tilt_psi_deg"]
        sx, sy, sz = r["shift_xyz_A"]
        console.print(f"FSC after alignment: 0.5 at [bold]{r['resolution_05_A']:.2f} Å[/], 0.143 at "
                      f"{r['resolution_0143_A']:.2f} Å; {'mirrored' if r['flipped'] else 'same'} hand, rotation "
                      f"(rot, tilt, psi) = ({rot:.1f}, {tilt:.1f}, {psi:.1f})°, shift ({sx:.1f}, {sy:.1f}, {sz:.1f}) Å "
                      f"-> {target.out / 'aligned.mrc'}")

    run_guarded(body)


def flip_hand(
    map_in: Annotated[Path, typer.Argument(help="Map to mirror (MRC).")],
    out: Annotated[Path, typer.Option("--out", help="Mirrored map (MRC) to write.")],
) -> None:
    """Mirror a map along z about its centre (the other hand); voxel size and origin are kept.

    Example:

      cryolens flip-hand abinitio/map.mrc --out map_flipped.mrc
    """
    from cryolens.jobs.align_maps import flip_hand_file

    def body():
        path = flip_hand_file(map_in, out)
        console.print(f"mirrored {map_in} along z -> {path}")

    run_guarded(body)
