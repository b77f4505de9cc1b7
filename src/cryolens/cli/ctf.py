"""``cryolens ctf``: CTF estimation (defocus, astigmatism, phase shift, fit resolution) per micrograph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (DEVICE_HELP, OUT_HELP, PROJECT_HELP, QUIET_HELP, console, device_option, job_target,
                                 progress_bar, run_guarded)
from cryolens.errors import InputError

__all__ = ["ctf"]


def _patches(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
        if nx < 1 or ny < 1:
            raise ValueError
    except ValueError:
        raise InputError(f"--patches {text}: give the patch grid as NXxNY with positive integers, e.g. 5x5.") from None
    return nx, ny


def ctf(
    star: Annotated[Optional[Path], typer.Option("--in", help="micrographs.star (RELION 3.0 or 3.1+; optics give "
                                                              "voltage, Cs, amplitude contrast, pixel size).")] = None,
    power_spectrum: Annotated[Optional[Path], typer.Option(
        "--power-spectrum", help="Fit this power spectrum (square MRC, DC centred) instead of micrographs, as "
                                 "RELION's --use_given_ps; give --voltage --cs --amplitude-contrast.")] = None,
    box: Annotated[int, typer.Option(help="Spectrum box (px): tiles averaged over the micrograph.")] = 512,
    overlap: Annotated[float, typer.Option(help="Tile overlap fraction.")] = 0.5,
    res: Annotated[tuple[float, float], typer.Option(help="Fit range LOW HIGH resolution (Å).")] = (30.0, 5.0),
    defocus: Annotated[tuple[float, float], typer.Option(help="Defocus search range MIN MAX (Å, underfocus "
                                                              "positive).")] = (5000.0, 50000.0),
    defocus_step: Annotated[float, typer.Option(help="Defocus search step (Å).")] = 500.0,
    search: Annotated[str, typer.Option(help="exhaustive (grid over defocus and astigmatism) or fast.")] = "exhaustive",
    phase_shift: Annotated[bool, typer.Option("--phase-shift", help="Also fit a phase shift (phase plate).")] = False,
    phase_range: Annotated[tuple[float, float, float], typer.Option(
        help="Phase shift MIN MAX STEP (degrees) with --phase-shift.")] = (0.0, 180.0, 10.0),
    astigmatism_restraint: Annotated[Optional[float], typer.Option(
        help="Restrain the astigmatism |U - V| to about this (Å); default unrestrained.")] = None,
    patches: Annotated[Optional[str], typer.Option(
        help="Patch CTF on an NXxNY grid (e.g. 5x5): a defocus plane per micrograph "
             "(cryolensDefocusPlaneC0, cryolensDefocusGradientX/Y).")] = None,
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
    backend: Annotated[Optional[str], typer.Option(help="Compute backend: local (default), local:N, inprocess, "
                                                        "tcp://scheduler:port or a run profile name.")] = None,
    j: Annotated[Optional[int], typer.Option("--j", help="Local worker processes (default: one per core; one on "
                                                         "a GPU).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=OUT_HELP)] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help=PROJECT_HELP)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
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
    from cryolens.ctf import CTFFitParams

    def body():
        if (star is None) == (power_spectrum is None):
            raise InputError("ctf: give exactly one of --in micrographs.star or --power-spectrum PS.mrc.")
        if j is not None and j < 1:
            raise InputError(f"--j {j}: the number of worker processes must be at least 1.")
        params = CTFFitParams(box=box, overlap=overlap, res_low_A=res[0], res_high_A=res[1],
                              defocus_min_A=defocus[0], defocus_max_A=defocus[1], defocus_step_A=defocus_step,
                              search=search, phase_shift=phase_shift, phase_min_deg=phase_range[0],
                              phase_max_deg=phase_range[1], phase_step_deg=phase_range[2],
                              astigmatism_restraint_A=astigmatism_restraint, patches=_patches(patches))
        dev = device_option(device)
        if power_spectrum is not None:
            from cryolens.jobs.ctf import run_ctf_power_spectrum
            missing = [n for n, v in (("--voltage", voltage), ("--cs", cs), ("--amplitude-contrast",
                                                                               amplitude_contrast)) if v is None]
            if missing:
                raise InputError(f"ctf --power-spectrum {power_spectrum}: give {', '.join(missing)} (the spectrum "
                                 "carries no optics).")
            with job_target("ctf", out, project) as target:
                job = run_ctf_power_spectrum(power_spectrum, target.out, params, pixel_size=pixel_size,
                                             voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                                             device=dev, observer=target.observer)
            r = job.results
            console.print(f"defocus U {r['rlnDefocusU']:.0f} Å, V {r['rlnDefocusV']:.0f} Å, angle "
                          f"{r['rlnDefocusAngle']:.1f}°, CC {r['rlnCtfFigureOfMerit']:.3f}, fit to "
                          f"{r['rlnCtfMaxResolution']:.1f} Å -> {target.out / 'micrographs_ctf.star'}")
        else:
            from cryolens.jobs.ctf import run_ctf
            with job_target("ctf", out, project) as target, progress_bar("fitting CTF", quiet=quiet) as cb:
                job = run_ctf(star, target.out, params, backend=backend, workers=j, device=dev,
                              from_movies=from_movies, frame_dose=frame_dose, progress=cb, observer=target.observer)
            r = job.results
            console.print(f"{r['n_micrographs']} micrographs ({r['n_reused']} reused): median defocus "
                          f"{r['median_defocus_A']:.0f} Å, median CC {r['median_cc']:.3f}, median fit resolution "
                          f"{r['fit_resolution_A']['median']:.1f} Å, {r['n_warnings']} warnings -> "
                          f"{target.out / 'micrographs_ctf.star'}")
        for name, ws in job.results.get("warnings", {}).items():
            for w in ws:
                console.print(f"[yellow]warning[/] {name}: {w}", highlight=False)

    run_guarded(body)
