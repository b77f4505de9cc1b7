"""``cryolens extract``: particle boxes cut from micrographs into stacks and a RELION 3.1 particles.star."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cryolens.cli.common import (MicrographJobOptions, console, device_option, job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.extract.params import ExtractParams

__all__ = ["extract"]


@declare(run=MicrographJobOptions, params=ExtractParams, outputs=("particles",))
def extract(
    positions: Annotated[Path, typer.Option(
        "--in", help="Particle positions: coords.star (rlnMicrographName + rlnMicrographCoordinates files, as "
                     "picking and `cryolens import coords` write it), one pick table (rlnMicrographName, "
                     "rlnCoordinateX/Y in micrograph pixels) or a particles.star to re-extract.")],
    micrographs: Annotated[Path, typer.Option(
        "--micrographs", help="micrographs_ctf.star (RELION 3.1 optics + micrographs; CTF columns give each "
                              "particle its defocus, including the patch-CTF defocus plane).")],
    params: ExtractParams = None,
    recentre: Annotated[bool, typer.Option(
        "--recentre", help="Re-extraction from a particles.star: move each box by the whole pixels of its "
                           "rlnOriginXAngst/YAngst and keep the remainder as its origin (RELION's "
                           "--recenter).")] = False,
    run: MicrographJobOptions = None,
) -> None:
    """Extract particles: a box around each position, binned, normalised and inverted as RELION 3.1 does.

    Writes Particles/<micrograph>.mrcs (one stack per micrograph), particles.star (RELION 3.1, per-particle CTF).

    And gallery.png, report.html and job.json; a rerun with the same inputs and options skips finished micrographs.

    Boxes that leave the micrograph are skipped and counted (--edge replicate keeps them, edge-filled as RELION).

    Examples:

      cryolens extract --in sim_mics/coords.star --micrographs ctf/micrographs_ctf.star --box 256 --bin-to 64 --out extract

      cryolens extract --in pick/coords.star --micrographs ctf/micrographs_ctf.star --box 200 --phase-flip --out extract --j 4

      cryolens extract --in refine/particles.star --micrographs ctf/micrographs_ctf.star --recentre --box 320 --bin-to 160 --out reextract
    """
    from cryolens.jobs.extract import run_extract

    def body():
        dev = device_option(run.device)
        with job_target("extract", run) as target, progress_bar("extracting", quiet=run.quiet) as cb:
            job = run_extract(positions, micrographs, target.out, params, recentre=recentre, backend=run.backend_spec(),
                              workers=run.j, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"{r['n_particles']} particles from {r['n_micrographs']} micrographs ({r['n_reused']} reused), "
                      f"{r['image_size']} px at {r['pixel_size_A']:.4g} Å/px, {r['n_skipped']} skipped at the edges "
                      f"-> {target.out / 'particles.star'}", highlight=False)
        for w in r["warnings"]:
            console.print(f"[yellow]warning[/] {literal(w)}", highlight=False)

    run_guarded(body)
