"""``cryolens simulate micrographs``: micrographs of particles in ice with ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.declare import declare
from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, job_target,
                                 progress_bar, run_guarded)
from cryolens.errors import InputError

__all__ = ["micrographs"]


@declare(outputs=("micrographs", "coords", "particles_truth", r"truth_map(_class\d+)?"))
def micrographs(
    preset: Annotated[str, typer.Option(help="Starting values: tutorial (20 x 1024², 1.75 Å/px) or benchmark "
                                             "(3710x3838, 1.232 Å/px); the options below override them.")] = "tutorial",
    n_micrographs: Annotated[Optional[int], typer.Option(help="Number of micrographs.")] = None,
    size: Annotated[Optional[tuple[int, int]], typer.Option(help="Micrograph size W H (pixels).")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(help="Pixel size (Å); structures are Fourier-resampled.")] = None,
    box: Annotated[Optional[int], typer.Option(help="Structure box (px) at that pixel size.")] = None,
    particles_per_micrograph: Annotated[Optional[int], typer.Option(help="Particles per micrograph (fewer if they do not fit).")] = None,
    structure: Annotated[Optional[list[str]], typer.Option(
        "--structure", help="Structure spec (repeatable): phantom, map.mrc[:population=P], model.pdb, ...")] = None,
    map_pixel_size: Annotated[Optional[float], typer.Option(help="Voxel size (Å) of maps whose header says 0.")] = None,
    min_distance: Annotated[Optional[float], typer.Option(help="Minimum distance between particle centres (Å); default the particle diameter.")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Minimum distance of centres from the edges (Å); default half the box.")] = None,
    defocus: Annotated[Optional[tuple[float, float]], typer.Option(help="Defocus range MIN MAX (Å, underfocus positive).")] = None,
    astigmatism: Annotated[Optional[float], typer.Option(help="Maximum |defocusU - defocusV| (Å).")] = None,
    tilt_max: Annotated[Optional[float], typer.Option(help="Maximum specimen tilt (degrees): a defocus gradient across the micrograph.")] = None,
    dose: Annotated[Optional[float], typer.Option(help="Total exposure (e⁻/Å²).")] = None,
    ice_thickness: Annotated[Optional[float], typer.Option(help="Mean ice thickness (Å).")] = None,
    carbon: Annotated[Optional[bool], typer.Option("--carbon/--no-carbon", help="Draw a carbon film edge.")] = None,
    contaminants: Annotated[Optional[int], typer.Option(help="Contaminant blobs per micrograph.")] = None,
    aggregates: Annotated[Optional[int], typer.Option(help="Particle aggregates per micrograph (not in the truth).")] = None,
    voltage: Annotated[Optional[float], typer.Option(help="Acceleration voltage (kV).")] = None,
    cs: Annotated[Optional[float], typer.Option(help="Spherical aberration (mm).")] = None,
    amplitude_contrast: Annotated[Optional[float], typer.Option(help="Amplitude contrast fraction.")] = None,
    bfactor: Annotated[Optional[float], typer.Option(help="CTF envelope B-factor (Å²).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; micrograph i uses seed + i.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Simulate micrographs: particles at random non-overlapping positions and poses in vitreous ice,
    per-micrograph CTF (optional specimen tilt), carbon edge, contaminants, counting detector.

    Writes micrographs/mic_NNNN.mrc (counts, protein dark), micrographs.star (RELION 3.1,
    true CTF), per-micrograph coordinate files, particles_truth.star, truth_map.mrc and
    report.html.

    Examples:

      cryolens simulate micrographs --preset tutorial --out sim_mics

      cryolens simulate micrographs --preset benchmark --n-micrographs 5 --tilt-max 10 --carbon --out bench

      cryolens simulate micrographs --structure emd_3488.mrc:mass_kda=64 --pixel-size 1.05 --size 2048 2048 --out hb
    """
    from cryolens.jobs.simulate_micrographs import params_from_preset, run_simulate_micrographs
    from cryolens.simulate.micrographs import MICROGRAPH_PRESETS

    def body():
        if preset not in MICROGRAPH_PRESETS:
            raise InputError(f"--preset {preset}: unknown preset; use one of {', '.join(MICROGRAPH_PRESETS)}.")
        if size is not None and min(size) < 64:
            raise InputError(f"--size {size[0]} {size[1]}: micrographs must be at least 64 x 64 pixels.")
        overrides = dict(
            n_micrographs=n_micrographs, width=size[0] if size else None, height=size[1] if size else None,
            particles_per_micrograph=particles_per_micrograph, min_distance=min_distance, margin=margin,
            defocus_min=defocus[0] if defocus else None, defocus_max=defocus[1] if defocus else None,
            astigmatism=astigmatism, tilt_max=tilt_max, dose=dose, ice_thickness=ice_thickness, carbon=carbon,
            contaminants=contaminants, aggregates=aggregates, voltage=voltage, cs=cs,
            amplitude_contrast=amplitude_contrast, bfactor=bfactor, seed=seed, pixel_size=pixel_size, box=box,
            structures=list(structure) if structure else None)
        params, extras = params_from_preset(MICROGRAPH_PRESETS[preset], overrides)
        dev = device_option(device)
        with job_target("simulate_micrographs", out, project) as target, \
                progress_bar("simulating micrographs", quiet=quiet) as cb:
            job = run_simulate_micrographs(target.out, params, structures=extras.get("structures"),
                                           pixel_size=extras.get("pixel_size"), box=extras.get("box"),
                                           map_pixel_size=map_pixel_size, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"{r['n_micrographs']} micrographs of {r['width']}x{r['height']} px at {r['pixel_size_A']:.3f} Å/px, "
                      f"{r['n_particles']} particles -> {target.out / 'micrographs.star'}")

    run_guarded(body)
