"""``cryolens pick`` (pick, re-select, preview) and ``cryolens pick consensus`` (alias ``pick-consensus``).

Consensus is declared as its own command, ``pick-consensus``, rather than as a subcommand of a
Typer group ``pick``: a group would have to parse all of ``pick``'s declared options before
knowing whether a subcommand follows, and would turn ``pick`` into a group in ``--help`` and in
the workflow catalogue. :class:`PickCommand` (the click class of ``pick``) hands
``cryolens pick consensus ...`` over to that command instead, and :class:`ConsensusCommand`
turns its positional pick sets (``A/coords.star B/coords.star``) into the repeated ``--in`` it
declares, so that ``cryolens run`` workflows can use it as a step (the catalogue takes only
commands made of options). ``--diameter MIN MAX`` (two numbers; click options have a fixed
number of values) becomes ``--diameter MIN --diameter-max MAX`` the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from cryolens.cli.common import (JobOptions, MicrographJobOptions, console, device_option, job_target, progress_bar,
                                 run_guarded)
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.errors import InputError
from cryolens.picking.params import PickParams

__all__ = ["pick", "pick_consensus", "PickCommand", "ConsensusCommand", "diameter_range_args",
           "positional_pick_sets"]


def _number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return not token.startswith("-")


def diameter_range_args(args: list[str]) -> list[str]:
    """``--diameter MIN MAX`` (two numbers) in ``args`` rewritten as ``--diameter MIN --diameter-max MAX``;
    everything else as given (also ``--diameter=MIN MAX``)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return out + args[i:]
        if a == "--diameter" and i + 2 < len(args) and _number(args[i + 1]) and _number(args[i + 2]):
            out += [a, args[i + 1], "--diameter-max", args[i + 2]]
            i += 3
        elif a.startswith("--diameter=") and i + 1 < len(args) and _number(args[i + 1]):
            out += [a, "--diameter-max", args[i + 1]]
            i += 2
        else:
            out.append(a)
            i += 1
    return out


def positional_pick_sets(cmd, args: list[str]) -> list[str]:
    """Bare arguments of ``pick consensus`` (the pick sets) turned into ``--in PATH``; ``cmd`` is the click
    command whose options say which flags take a value."""
    valued = {o for p in cmd.params if getattr(p, "param_type_name", "") == "option" and not p.is_flag
              for o in (*p.opts, *p.secondary_opts)}
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out += [x for b in args[i + 1:] for x in ("--in", b)]
            break
        if a.startswith("-"):
            take = a in valued and i + 1 < len(args)
            out += args[i:i + 2] if take else [a]
            i += 2 if take else 1
        else:
            out += ["--in", a]
            i += 1
    return out


class ConsensusCommand(TyperCommand):
    """Click class of ``pick-consensus``: the pick sets may be given as positional arguments too."""

    def make_context(self, info_name, args, parent=None, **extra):
        return super().make_context(info_name, positional_pick_sets(self, list(args)), parent=parent, **extra)


class PickCommand(TyperCommand):
    """Click class of ``pick``: ``pick consensus ...`` runs the sibling command ``pick-consensus`` (named so in
    its usage line), and ``--diameter MIN MAX`` is read as ``--diameter MIN --diameter-max MAX``."""

    def make_context(self, info_name, args, parent=None, **extra):
        args = list(args)
        if args and args[0] == "consensus" and parent is not None:
            sibling = parent.command.get_command(parent, "pick-consensus")
            if sibling is not None:
                return sibling.make_context(f"{info_name} consensus", args[1:], parent=parent, **extra)
        return super().make_context(info_name, diameter_range_args(args), parent=parent, **extra)


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

      cryolens pick --in ctf/micrographs_ctf.star --diameter 120 180 --method log --out pick_log --j 4

      cryolens pick consensus pick/coords.star pick_log/coords.star --radius 20 --out agreed  (see pick consensus --help)
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
        "--in", help="A pick file (repeat for each set, two or more; or give them as arguments) of the same "
                     "micrographs: coords.star of `cryolens pick`, autopick.star, particles.star.")],
    radius: Annotated[float, typer.Option(
        "--radius", help="Picks of different sets closer than this are one particle (pixels of the micrograph).")],
    min_agree: Annotated[Optional[int], typer.Option(
        "--min-agree", help="Keep particles found by at least this many sets (default: all of them).")] = None,
    run: JobOptions = None,
) -> None:
    """Consensus of pick sets (Scipion's): the number of sets agreeing on a particle is its rlnAutopickFigureOfMerit.

    Writes coords.star and RELION's <micrograph>_autopick.star files with autopick.star, plots, report.html.
    Also spelled `cryolens pick-consensus`.

    Examples:

      cryolens pick consensus pick_mf/coords.star pick_log/coords.star --radius 20 --out consensus

      cryolens pick consensus --in a/coords.star --in b/coords.star --in c/coords.star --radius 15 --min-agree 2 --out consensus
    """
    def body():
        from cryolens.jobs.pick_select import run_pick_consensus
        with job_target("pick", run) as target:
            job = run_pick_consensus(coords, target.out, radius=radius, min_agree=min_agree, observer=target.observer)
        r = job.results
        console.print(f"{r['n_picks']} picks found by at least {r['min_agree']} of {r['n_sets']} sets in "
                      f"{r['n_micrographs']} micrographs -> {target.out / 'coords.star'}", highlight=False)

    run_guarded(body)
