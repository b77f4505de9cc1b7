"""``cryolens simulate ...``: synthetic data with ground truth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import DEVICE_HELP, QUIET_HELP, console, device_option, progress_bar, run_guarded
from cryolens.simulate.particles import ParticleSimParams

app = typer.Typer(help="Simulate cryo-EM data with ground truth.", no_args_is_help=True)


@app.command("particles")
def particles(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created).")],
    map: Annotated[Optional[Path], typer.Option("--map", help="Structure (MRC); default: the built-in asymmetric phantom.")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of particles.")] = 2000,
    snr: Annotated[float, typer.Option(help="Signal-to-noise variance ratio per image; 'inf' for no noise.")] = 0.1,
    pixel_size: Annotated[Optional[float], typer.Option(help="Stack pixel size (Å); the map is Fourier-resampled. Phantom default 2.")] = None,
    box: Annotated[Optional[int], typer.Option(help="Stack box (px); the map is padded/cropped. Phantom default 64.")] = None,
    map_pixel_size: Annotated[Optional[float], typer.Option(help="Override the map header's voxel size (Å).")] = None,
    defocus: Annotated[tuple[float, float], typer.Option(help="Mean defocus range MIN MAX (Å, underfocus positive).")] = (10000.0, 25000.0),
    astigmatism: Annotated[float, typer.Option(help="Maximum |defocusU - defocusV| (Å).")] = 1000.0,
    max_shift: Annotated[float, typer.Option(help="Origins uniform within ±this (Å) per axis.")] = 4.0,
    voltage: Annotated[float, typer.Option(help="Acceleration voltage (kV).")] = 300.0,
    cs: Annotated[float, typer.Option(help="Spherical aberration (mm).")] = 2.7,
    amplitude_contrast: Annotated[float, typer.Option(help="Amplitude contrast fraction.")] = 0.1,
    bfactor: Annotated[float, typer.Option(help="CTF envelope B-factor (Å²).")] = 0.0,
    phase_shift: Annotated[float, typer.Option(help="Phase-plate phase shift (degrees).")] = 0.0,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Pure projections plus noise.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed (poses, CTFs, noise).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch (bounds memory).")] = 256,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Project a map at uniform random poses with random origins, per-particle CTF and Gaussian noise.

    Writes particles.mrcs + particles.star (RELION 3.1; its poses, origins and CTF are
    the ground truth), truth_map.mrc at the stack's pixel size, plots and report.html.

    Examples:

      cryolens simulate particles --out sim --n 5000 --snr 0.05

      cryolens simulate particles --map emd_3488.mrc --pixel-size 2.1 --box 64 --out sim
    """
    from cryolens.jobs.simulate_particles import run_simulate_particles

    params = ParticleSimParams(n_particles=n, snr=snr if math.isfinite(snr) else math.inf,
                               defocus_min=defocus[0], defocus_max=defocus[1], astigmatism=astigmatism,
                               max_shift=max_shift, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                               bfactor=bfactor, phase_shift=phase_shift, ctf=not no_ctf, seed=seed,
                               batch_size=batch_size)

    def body():
        dev = device_option(device)
        with progress_bar("simulating", quiet=quiet) as cb:
            job = run_simulate_particles(out, params, map_path=str(map) if map else None, pixel_size=pixel_size,
                                         box=box, map_pixel_size=map_pixel_size, device=dev, progress=cb)
        r = job.results
        console.print(f"{r['n_particles']} particles, box {r['box']} px at {r['pixel_size_A']:.3f} Å/px -> "
                      f"{out / 'particles.star'}")

    run_guarded(body)
