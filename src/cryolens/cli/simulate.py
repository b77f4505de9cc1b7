"""``cryolens simulate ...``: synthetic data with ground truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (JobOptions, console, device_option,
                                 job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.simulate.particle_params import ParticleSimParams, StackGeometry

app = typer.Typer(help="Simulate cryo-EM data with ground truth.", no_args_is_help=True)


@app.command("particles")
@declare(run=JobOptions, grid=StackGeometry, params=ParticleSimParams, outputs=("particles", "stack", r"truth_map(_class\d+|_morph[01])?"))
def particles(
    structure: Annotated[Optional[list[str]], typer.Option("--structure", help="Structure spec, repeatable (discrete heterogeneity): phantom[:seed=S], MAP.mrc[:population=P,apix=A,mass_kda=M], MODEL.pdb|cif[:bfactor=B,keep_coordinates,population=P]. Default: the phantom.")] = None,
    map: Annotated[Optional[Path], typer.Option("--map", help="An MRC map (same as --structure MAP).")] = None,
    morph: Annotated[Optional[tuple[str, str]], typer.Option("--morph", help="Continuous heterogeneity: two structure specs A B; each particle is (1-t)·A + t·B with t uniform in [0,1], written to rlnCryolensMorph.")] = None,
    grid: StackGeometry = None,
    params: ParticleSimParams = None,
    preset: Optional[str] = None,
    run: JobOptions = None,
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
    from cryolens.jobs.simulate_particles import run_simulate_particles

    def body():
        extra = ParticleSimParams.PRESETS.get(preset, {}) if preset else {}
        structures = [str(map)] * bool(map) + list(structure or []) or extra.get("structures")
        sim = params
        if sim.dose is not None:
            sim = dataclasses.replace(sim, snr=None)  # recorded as null in job.json: the noise comes from the dose
        if sim.concentration > 0 and sim.pose_distribution == "uniform":
            sim = dataclasses.replace(sim, pose_distribution="preferred")
        dev = device_option(run.device)
        with job_target("simulate_particles", run) as target, \
                progress_bar("simulating", quiet=run.quiet) as cb:
            job = run_simulate_particles(target.out, sim, structures=None if morph else structures, morph=morph,
                                         pixel_size=grid.pixel_size if grid.pixel_size is not None else
                                         extra.get("pixel_size"),
                                         box=grid.box if grid.box is not None else extra.get("box"),
                                         map_pixel_size=grid.map_pixel_size, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"{r['n_particles']} particles, box {r['box']} px at {r['pixel_size_A']:.3f} Å/px -> "
                      f"{target.out / 'particles.star'}")

    run_guarded(body)


from cryolens.cli.simulate_micrographs import micrographs  # noqa: E402
app.command("micrographs")(micrographs)
from cryolens.cli.simulate_movies import movies  # noqa: E402
app.command("movies")(movies)
