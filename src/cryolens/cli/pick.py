"""``cryolens pick`` (pick, re-select, preview) and ``cryolens pick-consensus``.

Consensus is its own command, ``pick-consensus``, rather than a subcommand ``pick consensus``:
a Typer group ``pick`` would have to parse all of ``pick``'s declared options before knowing
whether a subcommand follows, and would turn ``pick`` into a group in ``--help`` and in the
workflow catalogue; two plain commands keep both declarations simple. The pick sets are given
as a repeated ``--in`` (not positional arguments) so that ``cryolens run`` workflows can use the
command as a step (the catalogue takes only commands made of options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import (JobOptions, MicrographJobOptions, console, device_option, job_target, progress_bar,
                                 run_guarded)
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.errors import InputError
from cryolens.picking.params import PickParams

__all__ = ["pick", "pick_consensus"]


def _print_picks(r: dict, out: Path) -> None:
    console.print(f"{r['n_picks']} picks in {r['n_micrographs']} micrographs (mean {r['picks_per_micrograph_mean']:g} "
                  f"per micrograph, {r['n_candidates']} candidates kept down to {r['floor']:g} SD), threshold "
                  f"{r['threshold']:g} -> {out / 'coords.star'}", highlight=False)
    for w in r.get("warnings", []):
        console.print(f"[yellow]warning[/] {literal(w)}", highlight=False)


@declare(params=PickParams, run=MicrographJobOptions, outputs=("coords", "picks_all", "autopick"))
def pick(
    micrographs: Annotated[Optional[Path], typer.Option(
        "--in", help="micrographs_ctf.star (RELION 3.1 optics + micrographs); CTF columns, when present, make the "
                     "picker CTF-aware.")] = None,
    params: PickParams = None,
    templates: Annotated[Optional[Path], typer.Option(
        "--templates", help="Class averages (MRC stack, white on black, pixel size in the header) to pick with "
                            "(--method template).")] = None,
    map_: Annotated[Optional[Path], typer.Option(
        "--map", help="A 3D map whose projections are the templates (--method template), voxel size in the "
                      "header.")] = None,
    rethreshold: Annotated[Optional[Path], typer.Option(
        "--rethreshold", help="A finished pick job folder: re-select its stored picks with --threshold and/or "
                              "--max-per-micrograph into --out, without picking again.")] = None,
    preview: Annotated[Optional[str], typer.Option(
        "--preview", help="Pick only this micrograph (a name in --in, or an MRC file) and write "
                          "preview_<name>.png into --out (default: the current folder); no job.")] = None,
    run: MicrographJobOptions = None,
) -> None:
    """Pick particles: a CTF-aware matched filter (default), Laplacian of Gaussian or templates.

    Writes coords.star (the picks above the threshold: rlnMicrographName, rlnCoordinateX/Y in micrograph pixels,
    rlnAutopickFigureOfMerit), picks_all.star (every candidate with its score, for --rethreshold).

    And RELION's <micrograph>_autopick.star files with autopick.star (relion_preprocess --coord_dir DIR/
    --coord_suffix _autopick.star reads them), overlays, score histogram, report.html and job.json; a rerun
    with the same inputs and options skips finished micrographs.

    Examples:

      cryolens pick --in ctf/micrographs_ctf.star --diameter 150 --out pick

      cryolens pick --in ctf/micrographs_ctf.star --diameter 150 --preview mic_0001.mrc

      cryolens pick --rethreshold pick --threshold 4 --max-per-micrograph 300 --out pick_t4

      cryolens pick --in ctf/micrographs_ctf.star --diameter 150 --templates class2d/classes.mrcs --out pick_tpl

      cryolens pick --in ctf/micrographs_ctf.star --diameter 120 --diameter-max 180 --method log --out pick_log --j 4
    """
    def body():
        if rethreshold is not None:
            extra = [f for f, v in (("--in", micrographs), ("--templates", templates), ("--map", map_),
                                    ("--preview", preview)) if v is not None]
            if extra:
                raise InputError(f"--rethreshold {rethreshold}: re-selects the picks that job stored, so "
                                 f"{', '.join(extra)} cannot apply; drop {extra[0]} (or --rethreshold to pick again).")
            _rethreshold(rethreshold, params, run)
            return
        if params.diameter is None:
            raise InputError("--diameter is needed: the particle diameter in Å.")
        if preview is not None:
            from cryolens.jobs.pick import preview_pick
            png, n = preview_pick(preview, params, micrographs_star=micrographs, out_dir=run.out or Path("."),
                                  templates=templates, map=map_, device=device_option(run.device))
            console.print(f"{n} picks -> {png}", highlight=False)
            return
        if micrographs is None:
            raise InputError("--in micrographs.star is needed (or --rethreshold DIR, or --preview MICROGRAPH).")
        from cryolens.jobs.pick import run_pick
        dev = device_option(run.device)
        with job_target("pick", run) as target, progress_bar("picking", quiet=run.quiet) as cb:
            job = run_pick(micrographs, target.out, params, templates=templates, map=map_, backend=run.backend_spec(),
                           workers=run.j, device=dev, progress=cb, observer=target.observer)
        _print_picks(job.results, target.out)

    run_guarded(body)


def _rethreshold(source: Path, params: PickParams, run: JobOptions) -> None:
    from cryolens.jobs.pick_select import run_rethreshold
    with job_target("pick", run) as target:
        job = run_rethreshold(source, target.out, threshold=params.threshold,
                              max_per_micrograph=params.max_per_micrograph, observer=target.observer)
    _print_picks(job.results, target.out)


@declare(run=JobOptions, omit=("device",), outputs=("coords", "autopick"))
def pick_consensus(
    coords: Annotated[list[Path], typer.Option(
        "--in", help="A pick file (repeat for each set, two or more) of the same micrographs: coords.star of "
                     "`cryolens pick`, autopick.star, particles.star.")],
    radius: Annotated[float, typer.Option(
        "--radius", help="Picks of different sets closer than this are one particle (pixels of the micrograph).")],
    min_agree: Annotated[Optional[int], typer.Option(
        "--min-agree", help="Keep particles found by at least this many sets (default: all of them).")] = None,
    run: JobOptions = None,
) -> None:
    """Consensus of pick sets (Scipion's): the number of sets agreeing on a particle is its rlnAutopickFigureOfMerit.

    Writes coords.star and RELION's <micrograph>_autopick.star files with autopick.star, plots, report.html.

    Examples:

      cryolens pick-consensus --in pick_mf/coords.star --in pick_log/coords.star --radius 20 --out consensus

      cryolens pick-consensus --in a/coords.star --in b/coords.star --in c/coords.star --radius 15 --min-agree 2 --out consensus
    """
    def body():
        from cryolens.jobs.pick_select import run_pick_consensus
        with job_target("pick", run) as target:
            job = run_pick_consensus(coords, target.out, radius=radius, min_agree=min_agree, observer=target.observer)
        r = job.results
        console.print(f"{r['n_picks']} picks found by at least {r['min_agree']} of {r['n_sets']} sets in "
                      f"{r['n_micrographs']} micrographs -> {target.out / 'coords.star'}", highlight=False)

    run_guarded(body)
