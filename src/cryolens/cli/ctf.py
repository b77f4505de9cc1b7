"""``cryolens ctf``: CTF estimation (defocus, astigmatism, phase shift, fit resolution) per micrograph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (MicrographJobOptions, console, device_option, job_target, progress_bar, run_guarded)
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.ctf.params import CTFFitParams
from cryolens.errors import InputError

__all__ = ["ctf"]


@declare(run=MicrographJobOptions, params=CTFFitParams, outputs=("micrographs", "report"))
def ctf(
    star: Annotated[Optional[Path], typer.Option("--in", help="micrographs.star (RELION 3.0 or 3.1+; optics give "
                                                              "voltage, Cs, amplitude contrast, pixel size).")] = None,
    power_spectrum: Annotated[Optional[Path], typer.Option(
        "--power-spectrum", help="Fit this power spectrum (square MRC, DC centred) instead of micrographs, as "
                                 "RELION's --use_given_ps; give --voltage --cs --amplitude-contrast.")] = None,
    params: CTFFitParams = None,
    from_movies: Annotated[bool, typer.Option(
        "--from-movies", help="Spectra from movie-frame sub-sums of ~4.5 e-/Å² (movies found through "
                              "rlnMicrographMetadata of motion correction).")] = False,
    frame_dose: Annotated[Optional[float], typer.Option(help="Dose per movie frame (e-/Å²) when the metadata lacks "
                                                             "it (--from-movies).")] = None,
    pixel_size: Annotated[Optional[float], typer.Option(help="Pixel size (Å) of --power-spectrum (default: its "
                                                             "header).")] = None,
    voltage: Annotated[Optional[float], typer.Option(help="Voltage (kV) for --power-spectrum.")] = None,
    cs: Annotated[Optional[float], typer.Option(help="Spherical aberration (mm) for --power-spectrum.")] = None,
    amplitude_contrast: Annotated[Optional[float], typer.Option(help="Amplitude contrast for --power-spectrum.")] = None,
    run: MicrographJobOptions = None,
) -> None:
    """Estimate the CTF of every micrograph: defocus U/V/angle, astigmatism, phase shift, fit resolution.

    Writes micrographs_ctf.star (RELION columns), summary.png, report.html and job.json.

    Per micrograph: diagnostics/NAME_ctf.png (spectrum, fit and zeros; CTFFIND's 1-D plot).

    And diagnostics/NAME_ctf.json, which a rerun with the same options reuses.

    Examples:

      cryolens ctf --in sim_mics/micrographs.star --out ctf

      cryolens ctf --in micrographs.star --out ctf --res 30 4 --defocus 5000 30000 --patches 5x5 --j 4

      cryolens ctf --power-spectrum mic_PS.mrc --pixel-size 1.3996 --voltage 200 --cs 1.4 --amplitude-contrast 0.1 --out ps_ctf
    """
    def body():
        if (star is None) == (power_spectrum is None):
            raise InputError("ctf: give exactly one of --in micrographs.star or --power-spectrum PS.mrc.")
        dev = device_option(run.device)
        if power_spectrum is not None:
            from cryolens.jobs.ctf import run_ctf_power_spectrum
            missing = [n for n, v in (("--voltage", voltage), ("--cs", cs), ("--amplitude-contrast",
                                                                               amplitude_contrast)) if v is None]
            if missing:
                raise InputError(f"ctf --power-spectrum {power_spectrum}: give {', '.join(missing)} (the spectrum "
                                 "carries no optics).")
            with job_target("ctf", run) as target:
                job = run_ctf_power_spectrum(power_spectrum, target.out, params, pixel_size=pixel_size,
                                             voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                                             device=dev, observer=target.observer)
            r = job.results
            console.print(f"defocus U {r['rlnDefocusU']:.0f} Å, V {r['rlnDefocusV']:.0f} Å, angle "
                          f"{r['rlnDefocusAngle']:.1f}°, CC {r['rlnCtfFigureOfMerit']:.3f}, fit to "
                          f"{r['rlnCtfMaxResolution']:.1f} Å -> {target.out / 'micrographs_ctf.star'}")
        else:
            from cryolens.jobs.ctf import run_ctf
            with job_target("ctf", run) as target, progress_bar("fitting CTF", quiet=run.quiet) as cb:
                job = run_ctf(star, target.out, params, backend=run.backend_spec(), workers=run.j, device=dev,
                              from_movies=from_movies, frame_dose=frame_dose, progress=cb, observer=target.observer)
            r = job.results
            console.print(f"{r['n_micrographs']} micrographs ({r['n_reused']} reused): median defocus "
                          f"{r['median_defocus_A']:.0f} Å, median CC {r['median_cc']:.3f}, median fit resolution "
                          f"{r['fit_resolution_A']['median']:.1f} Å, {r['n_warnings']} warnings -> "
                          f"{target.out / 'micrographs_ctf.star'}")
        for name, ws in job.results.get("warnings", {}).items():
            for w in ws:
                console.print(f"[yellow]warning[/] {literal(name)}: {literal(w)}", highlight=False)

    run_guarded(body)
