"""``cryolens simulate ...``: synthetic data with ground truth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.declare import declare
from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, job_target,
                                 progress_bar, run_guarded)

app = typer.Typer(help="Simulate cryo-EM data with ground truth.", no_args_is_help=True)


_PARAM_KEYS = {"n_particles", "snr", "dose", "defocus_min", "defocus_max", "astigmatism", "max_shift", "voltage",
               "cs", "amplitude_contrast", "bfactor", "phase_shift", "pose_distribution", "preferred_direction",
               "concentration", "uniform_fraction"}


@app.command("particles")
@declare(outputs=("particles", "stack", r"truth_map(_class\d+|_morph[01])?"))
def particles(
    preset: Annotated[Optional[str], typer.Option(help="Option set: tutorial (1 500 phantom particles, box 96, 1.75 Å/px, SNR 0.05) or benchmark (EMPIAR-10291-like: box 180, 1.232 Å/px, 300 kV, 10 000 particles). Explicit options override it.")] = None,
    structure: Annotated[Optional[list[str]], typer.Option("--structure", help="Structure spec, repeatable (discrete heterogeneity): phantom[:seed=S], MAP.mrc[:population=P,apix=A,mass_kda=M], MODEL.pdb|cif[:bfactor=B,keep_coordinates,population=P]. Default: the phantom.")] = None,
    map: Annotated[Optional[Path], typer.Option("--map", help="An MRC map (same as --structure MAP).")] = None,
    morph: Annotated[Optional[tuple[str, str]], typer.Option("--morph", help="Continuous heterogeneity: two structure specs A B; each particle is (1-t)·A + t·B with t uniform in [0,1], written to rlnCryolensMorph.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Number of particles [2000].")] = None,
    snr: Annotated[Optional[float], typer.Option(help="Signal-to-noise variance ratio per image; 'inf' for no noise [0.1].")] = None,
    dose: Annotated[Optional[float], typer.Option(help="Instead of --snr: electron dose (e⁻/Å²), Poisson counting noise of a weak-phase object in vacuum; needs a model, the phantom, or a map with mass_kda.")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(help="Stack pixel size (Å); maps are Fourier-resampled. Default: the first structure's (phantom 2, model 1).")] = None,
    box: Annotated[Optional[int], typer.Option(help="Stack box (px); maps are padded/cropped. Default: the first structure's (phantom 64).")] = None,
    map_pixel_size: Annotated[Optional[float], typer.Option(help="Override the maps' header voxel size (Å).")] = None,
    defocus: Annotated[Optional[tuple[float, float]], typer.Option(help="Mean defocus range MIN MAX (Å, underfocus positive) [10000 25000].")] = None,
    astigmatism: Annotated[Optional[float], typer.Option(help="Maximum |defocusU - defocusV| (Å) [1000].")] = None,
    max_shift: Annotated[Optional[float], typer.Option(help="Origins uniform within ±this (Å) per axis [4].")] = None,
    voltage: Annotated[Optional[float], typer.Option(help="Acceleration voltage (kV) [300].")] = None,
    cs: Annotated[Optional[float], typer.Option(help="Spherical aberration (mm) [2.7].")] = None,
    amplitude_contrast: Annotated[Optional[float], typer.Option(help="Amplitude contrast fraction [0.1].")] = None,
    bfactor: Annotated[Optional[float], typer.Option(help="CTF envelope B-factor (Å²) [0].")] = None,
    phase_shift: Annotated[Optional[float], typer.Option(help="Phase-plate phase shift (degrees) [0].")] = None,
    pose_distribution: Annotated[Optional[str], typer.Option(help="uniform, or preferred (von Mises-Fisher viewing directions); preferred is implied by --concentration/--preferred-direction [uniform].")] = None,
    preferred_direction: Annotated[Optional[tuple[float, float, float]], typer.Option(help="Preferred viewing direction X Y Z in the map's frame [0 0 1].")] = None,
    concentration: Annotated[Optional[float], typer.Option(help="von Mises-Fisher concentration κ of the viewing direction (0 uniform; 10 ≈ 25° spread).")] = None,
    uniform_fraction: Annotated[Optional[float], typer.Option(help="Fraction of particles with uniform viewing directions [0].")] = None,
    no_ctf: Annotated[bool, typer.Option("--no-ctf", help="Pure projections plus noise.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed (poses, classes, CTFs, noise).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch (bounds memory).")] = 256,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Project maps, atomic models or the phantom at chosen poses with origins, per-particle CTF and noise.

    Writes particles.mrcs + particles.star (RELION 3.1; its poses, origins, CTF, class
    numbers and morph values are the ground truth), truth_map.mrc (and
    truth_map_classN.mrc / truth_map_morph0|1.mrc) at the stack's pixel size, plots
    and report.html.

    Examples:

      cryolens simulate particles --preset tutorial --out sim

      cryolens simulate particles --map emd_3488.mrc --pixel-size 2.1 --box 64 --out sim

      cryolens simulate particles --structure 5me2.pdb:bfactor=40 --pixel-size 1.5 --dose 40 --out sim

      cryolens simulate particles --structure phantom:population=0.7 --structure phantom:seed=3,population=0.3 --out sim

      cryolens simulate particles --morph a.mrc b.mrc --concentration 8 --uniform-fraction 0.2 --out sim
    """
    from cryolens.errors import InputError
    from cryolens.jobs.simulate_particles import run_simulate_particles
    from cryolens.simulate.particles import resolve_preset

    def body():
        if snr is not None and dose is not None:
            raise InputError("simulate particles: give either --snr or --dose, not both.")
        explicit = {"n_particles": n, "snr": snr, "dose": dose, "astigmatism": astigmatism, "max_shift": max_shift,
                    "voltage": voltage, "cs": cs, "amplitude_contrast": amplitude_contrast, "bfactor": bfactor,
                    "phase_shift": phase_shift, "pose_distribution": pose_distribution,
                    "preferred_direction": preferred_direction, "concentration": concentration,
                    "uniform_fraction": uniform_fraction, "pixel_size": pixel_size, "box": box,
                    "defocus_min": defocus[0] if defocus else None, "defocus_max": defocus[1] if defocus else None}
        if structure or map or morph:
            explicit["structures"] = [str(map)] * bool(map) + list(structure or [])
        try:
            opts = resolve_preset(preset, explicit)
        except ValueError as e:
            raise InputError(f"simulate particles: {e}.") from None
        if dose is not None:
            opts["snr"] = None  # recorded as null in job.json: the noise comes from the dose
        elif snr is not None:
            opts.pop("dose", None)
        if "pose_distribution" not in opts and (concentration or preferred_direction):
            opts["pose_distribution"] = "preferred"
        if opts.get("snr") is not None and not math.isfinite(opts["snr"]):
            opts["snr"] = math.inf
        from cryolens.simulate.particles import ParticleSimParams
        params = ParticleSimParams(**{k: v for k, v in opts.items() if k in _PARAM_KEYS},
                                   ctf=not no_ctf, seed=seed, batch_size=batch_size)
        dev = device_option(device)
        with job_target("simulate_particles", out, project) as target, \
                progress_bar("simulating", quiet=quiet) as cb:
            job = run_simulate_particles(target.out, params, structures=None if morph else opts.get("structures"),
                                         morph=morph, pixel_size=opts.get("pixel_size"), box=opts.get("box"),
                                         map_pixel_size=map_pixel_size, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"{r['n_particles']} particles, box {r['box']} px at {r['pixel_size_A']:.3f} Å/px -> "
                      f"{target.out / 'particles.star'}")

    run_guarded(body)


from cryolens.cli.simulate_micrographs import micrographs  # noqa: E402
app.command("micrographs")(micrographs)
from cryolens.cli.simulate_movies import movies  # noqa: E402
app.command("movies")(movies)
