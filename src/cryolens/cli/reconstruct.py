"""``cryolens reconstruct``: gold-standard half maps and map from particles with poses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, job_target,
                                 progress_bar, run_guarded)


def reconstruct(
    star: Annotated[Path, typer.Option("--in", help="particles.star (RELION 3.0 or 3.1+) with poses.")],
    sym: Annotated[str, typer.Option("--sym", help="Point group: C1, Cn, Dn, T, O, I (RELION orientation).")] = "C1",
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Ignore the CTF even when defocus values are present.")] = False,
    wiener: Annotated[bool, typer.Option("--wiener", help="Wiener-filter the full map with the half maps' FSC (smoother, lower FSC vs truth).")] = False,
    pad: Annotated[int, typer.Option(help="Fourier padding factor (>= 2).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Images per insertion batch (bounds memory).")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for half-set assignment when rlnRandomSubset is absent.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Reconstruct half maps (rlnRandomSubset; assigned at random and written back when absent) and the map.

    Writes half1.mrc, half2.mrc, map.mrc, fsc.star, fsc.png, particles.star, report.html, job.json.

    Example:

      cryolens reconstruct --in sim/particles.star --out rec --sym C1
    """
    from cryolens.jobs.reconstruct import run_reconstruct
    from cryolens.reconstruct import ReconstructParams

    params = ReconstructParams(symmetry=sym, pad=pad, ctf=not no_ctf, wiener=wiener, batch_size=batch_size)

    def body():
        dev = device_option(device)
        with job_target("reconstruct", out, project) as target, \
                progress_bar("inserting", quiet=quiet) as cb:
            job = run_reconstruct(star, target.out, params, seed=seed, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"resolution (half-map FSC = 0.143): [bold]{r['resolution_0143_A']:.2f} Å[/]  "
                      f"({r['n_particles_half1']} + {r['n_particles_half2']} particles) -> {target.out / 'map.mrc'}")

    run_guarded(body)
