"""``cryolens simulate micrographs``: micrographs of particles in ice with ground truth."""

from __future__ import annotations

from cryolens.cli.common import (JobOptions, console, device_option,
                                 job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.simulate.micrograph_params import MicrographParams

__all__ = ["micrographs"]


@declare(run=JobOptions, params=MicrographParams, outputs=("micrographs", "coords", "particles_truth", r"truth_map(_class\d+)?"))
def micrographs(
    params: MicrographParams = None,
    run: JobOptions = None,
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
    from cryolens.jobs.simulate_micrographs import run_simulate_micrographs

    def body():
        dev = device_option(run.device)
        with job_target("simulate_micrographs", run) as target, \
                progress_bar("simulating micrographs", quiet=run.quiet) as cb:
            job = run_simulate_micrographs(target.out, params, device=dev, progress=cb, observer=target.observer)
        r = job.results
        console.print(f"{r['n_micrographs']} micrographs of {r['width']}x{r['height']} px at {r['pixel_size_A']:.3f} Å/px, "
                      f"{r['n_particles']} particles -> {target.out / 'micrographs.star'}")

    run_guarded(body)
