"""``cryolens fsc``: Fourier shell correlation between two maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import console, run_guarded


def fsc_command(
    map1: Annotated[Path, typer.Argument(help="First map (MRC).")],
    map2: Annotated[Path, typer.Argument(help="Second map, same box and pixel size (e.g. the ground truth).")],
    mask: Annotated[Optional[Path], typer.Option(help="Multiply both maps by this mask first.")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(help="Pixel size (Å) when the headers lack it.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the curve as a RELION data_fsc STAR file.")] = None,
) -> None:
    """Print the resolutions where the FSC of two maps crosses 0.143 and 0.5.

    Use 0.143 for independent half maps and 0.5 against a reference or ground truth.

    Example:

      cryolens fsc rec/map.mrc sim/truth_map.mrc
    """
    from cryolens.jobs.fsc_maps import fsc_between_files

    def body():
        r = fsc_between_files(map1, map2, mask=mask, pixel_size=pixel_size, out_star=out)
        console.print(f"FSC {map1} vs {map2}: 0.5 at [bold]{r.resolution_at(0.5):.2f} Å[/], "
                      f"0.143 at [bold]{r.resolution_at(0.143):.2f} Å[/]")

    run_guarded(body)
