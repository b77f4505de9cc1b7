"""``cryolens import movies|micrographs|particles|coords|map``: bring data in as RELION 3.1 STAR files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cryolens.cli.common import JobOptions, console, job_target, run_guarded
from cryolens.cli.declare import declare
from cryolens.cli.markup import literal
from cryolens.jobs.coord_options import CoordinateFormat
from cryolens.jobs.import_options import Acquisition, GainOptions, ParticleOptics
from cryolens.errors import InputError

app = typer.Typer(help="Import movies, micrographs, particles (STAR or cryoSPARC .cs), coordinates or a map into a "
                       "job folder (RELION 3.1 STAR with optics groups).", no_args_is_help=True)

GroupOpt = Annotated[Optional[str], typer.Option("--group", help="Add the imported items to this named group of the "
                                                "project (created when new); see `cryolens project groups`.")]
FilesArg = Annotated[Optional[list[Path]], typer.Argument(help="Files (a shell pattern expands to these).",
                                                          show_default=False)]
GlobOpt = Annotated[Optional[list[str]], typer.Option("--glob", help="Quoted file pattern, e.g. 'Movies/*.tiff' "
                                                      "(** for subfolders); repeatable.", show_default=False)]
MoreFilesOpt = Annotated[Optional[list[Path]], typer.Option("--files", help="One more file; repeatable.",
                                                            show_default=False)]
OpticsFromOpt = Annotated[Optional[str], typer.Option(
    "--optics-from", help="Regular expression on file names: one optics group per value of its first group "
                          "(named <optics-group>_<value>), e.g. '_(\\d+)_Data' for EPU hole positions.")]
AppendOpt = Annotated[Optional[Path], typer.Option(
    "--append", help="STAR of an earlier import: write it with this import's files and optics group added.")]


def _group(target, name: Optional[str], *, items: list[str] | None = None, star: Path | None = None,
            key: str | None = None) -> str:
    """Record the imported items as a named group; returns a line for the summary."""
    if name is None:
        return ""
    project, job_id = target.project, target.observer.job_id
    if items is not None:
        g = project.add_to_group(name, items, source=star, job=job_id)
    elif star is not None:
        g = project.group_from_star(name, star, column=key, job=job_id)
    else:
        g = project.group_from_job(name, job_id)
    return f"; group [bold]{literal(g.name)}[/] now has {g.n_members} items"


def _need_project(target, group: Optional[str]) -> None:
    if group is not None and target.project is None:
        raise InputError("--group needs a project; run in a project folder or pass --project DIR.")


def _files(glob: Optional[list[str]], files: Optional[list[Path]], more: Optional[list[Path]], *, what: str,
           suffixes: tuple[str, ...] | None) -> tuple[list[Path], str]:
    from cryolens.jobs.importing import expand_inputs
    given = list(files or []) + list(more or [])
    found = expand_inputs(list(glob or []), given, what=what, suffixes=suffixes)
    source = ", ".join(list(glob or []) + ([f"{len(given)} files"] if given else []))
    return found, source


def _checked(found: list[Path]):
    """Every file's header, checked against its size before a job folder is taken (a bad file: exit 2)."""
    from cryolens.jobs.importing import read_headers
    return read_headers(found)


@app.command("movies")
@declare(run=JobOptions, omit=("device",), acq=Acquisition, gopt=GainOptions, outputs=("movies", "gain", "defects"))
def movies(
    files: FilesArg = None,
    glob: GlobOpt = None,
    more_files: MoreFilesOpt = None,
    acq: Acquisition = None,
    gopt: GainOptions = None,
    defect: Annotated[Optional[Path], typer.Option("--defect", help="Defect file: MotionCor2 'x y w h' list or a "
                                                   "defect map (rlnMicrographDefectFile).")] = None,
    optics_from: OpticsFromOpt = None,
    append: AppendOpt = None,
    check_all: Annotated[bool, typer.Option("--check-all", help="Require every movie to have the first one's size "
                                            "and frame count (every header is read and checked either way).")] = False,
    group: GroupOpt = None,
    run: JobOptions = None,
) -> None:
    """Import movies (MRC, TIFF, EER) with their acquisition settings into movies.star.

    Writes movies.star (data_optics + data_movies), gain.mrc (oriented once: downstream needs no
    flip or rotation), a copy of the defect file, report.html, job.json.

    Example:

      cryolens import movies --glob 'Movies/*.tiff' --pixel-size 0.885 --voltage 300 --cs 2.7
      --amplitude-contrast 0.1 --exposure-per-frame 1.2 --gain Movies/gain.mrc --gain-rot 1 --gain-flip 1
    """
    from cryolens.jobs.importing import MOVIE_SUFFIXES, run_import_movies

    def body():
        found, source = _files(glob, files, more_files, what="movie", suffixes=MOVIE_SUFFIXES)
        headers = _checked(found)
        with job_target("import_movies", run) as target:
            _need_project(target, group)
            job = run_import_movies(found, target.out, acq, gopt, defect=str(defect) if defect else None,
                                    append=str(append) if append else None, optics_from=optics_from,
                                    check_all=check_all, source=source, headers=headers, observer=target.observer)
            from cryolens.io.paths import star_name
            extra = _group(target, group, items=[star_name(f, into=target.out) for f in found],
                           star=target.out / "movies.star")
        r = job.results
        dose = f", {r['total_exposure_e_per_A2']:g} e/Å² total" if r["total_exposure_e_per_A2"] is not None else ""
        console.print(f"{r['n_imported']} movies ({r['width']}x{r['height']}, {r['n_frames']} frames, "
                      f"{r['dtype']} {r['format']}{dose}), {r['n_optics_groups']} optics group(s)"
                      f"{', gain oriented' if r['gain'] else ''} -> {target.out / 'movies.star'}{extra}")

    run_guarded(body)


@app.command("micrographs")
@declare(run=JobOptions, acq=Acquisition, omit=("device", "exposure_per_frame", "pre_exposure"), outputs=("micrographs",))
def micrographs(
    files: FilesArg = None,
    glob: GlobOpt = None,
    more_files: MoreFilesOpt = None,
    acq: Acquisition = None,
    optics_from: OpticsFromOpt = None,
    append: AppendOpt = None,
    group: GroupOpt = None,
    run: JobOptions = None,
) -> None:
    """Import micrographs (MRC or single-page TIFF) into micrographs.star.

    Example:

      cryolens import micrographs --glob 'Micrographs/*.mrc' --pixel-size 1.06 --voltage 300 --cs 2.7
    """
    from cryolens.io.paths import star_name
    from cryolens.jobs.importing import MICROGRAPH_SUFFIXES, run_import_micrographs

    def body():
        found, source = _files(glob, files, more_files, what="micrograph", suffixes=MICROGRAPH_SUFFIXES)
        headers = _checked(found)
        with job_target("import_micrographs", run) as target:
            _need_project(target, group)
            job = run_import_micrographs(found, target.out, acq, append=str(append) if append else None,
                                         optics_from=optics_from, source=source, headers=headers,
                                         observer=target.observer)
            extra = _group(target, group, items=[star_name(f, into=target.out) for f in found],
                           star=target.out / "micrographs.star")
        r = job.results
        console.print(f"{r['n_imported']} micrographs ({r['width']}x{r['height']}, {r['pixel_size_A']:g} Å/px) "
                      f"-> {target.out / 'micrographs.star'}{extra}")

    run_guarded(body)


@app.command("particles")
@declare(run=JobOptions, omit=("device",), acq=ParticleOptics, outputs=("particles",))
def particles(
    star: Annotated[Path, typer.Option("--in", help="Particle STAR file (RELION 3.0 or 3.1+) or cryoSPARC .cs file.")],
    passthrough: Annotated[Optional[list[Path]], typer.Option(
        "--passthrough", help="cryoSPARC passthrough .cs joined to a .cs --in by uid; repeatable. Default: every "
                              "*_passthrough_*.cs beside it that holds all its particles.", show_default=False)] = None,
    cs_project_dir: Annotated[Optional[Path], typer.Option(
        "--cs-project-dir", help="cryoSPARC project folder that blob/path names are relative to (default: look "
                                 "beside the .cs file and in the folder above it).")] = None,
    acq: ParticleOptics = None,
    group: GroupOpt = None,
    run: JobOptions = None,
) -> None:
    """Import a particle STAR or a cryoSPARC .cs: validate it, upgrade RELION 3.0 (or convert cryoSPARC) to
    RELION 3.1, check every image exists.

    Values given must agree with the file; they fill what a RELION 3.0 file lacks. A .cs file's poses
    (alignments3D), shifts, CTF, half sets and classes become RELION columns.

    Example:

      cryolens import particles --in old/particles.star --pixel-size 1.34 --voltage 300 --cs 2.7
      --amplitude-contrast 0.1

      cryolens import particles --in P3/J42/J42_particles.cs --cs-project-dir /data/cryosparc/P3
    """
    from cryolens.jobs.importing import check_particle_import, run_import_particles

    def body():
        is_cs = star.suffix.lower() == ".cs"
        if not is_cs and (passthrough or cs_project_dir is not None):
            raise InputError(f"{star}: --passthrough and --cs-project-dir apply to a cryoSPARC .cs file only; drop "
                             "them for a STAR file.")
        if is_cs:
            from cryolens.jobs.import_cryosparc import check_cryosparc_import, run_import_cryosparc
            checked = check_cryosparc_import(star, acq, passthrough=list(passthrough or []),
                                             project_dir=cs_project_dir)
        else:
            checked = check_particle_import(star, acq)  # before a job folder is taken
        with job_target("import_particles", run) as target:
            _need_project(target, group)
            if is_cs:
                job = run_import_cryosparc(star, target.out, acq, checked=checked, observer=target.observer)
            else:
                job = run_import_particles(star, target.out, acq, checked=checked, observer=target.observer)
            extra = _group(target, group, star=target.out / "particles.star", key="rlnImageName")
        r = job.results
        what = (f"cryoSPARC file, {r['n_passthrough']} passthrough, {'with' if r['poses'] else 'no'} poses"
                if is_cs else f"RELION {r['input_version']} file")
        console.print(f"{r['n_particles']} particles (box {r['box']}, {r['pixel_size_A']:g} Å/px, {what}, "
                      f"{r['n_stacks']} stacks) -> {target.out / 'particles.star'}{extra}")

    run_guarded(body)


@app.command("coords")
@declare(run=JobOptions, cfmt=CoordinateFormat, omit=("device",), outputs=("coords",))
def coords(
    files: FilesArg = None,
    glob: GlobOpt = None,
    more_files: MoreFilesOpt = None,
    micrographs_star: Annotated[Path, typer.Option("--micrographs", help="micrographs.star the picks belong to "
                                                   "(files are matched by micrograph name prefix).")] = ...,
    scale: Annotated[float, typer.Option("--scale", help="Multiply coordinates (2 for picks on 2x-binned "
                                         "micrographs).")] = 1.0,
    cfmt: CoordinateFormat = None,
    group: GroupOpt = None,
    run: JobOptions = None,
) -> None:
    """Import particle coordinates: RELION or crYOLO .star, crYOLO .cbox and EMAN .box (corner + size -> centre),
    'x y' text, a Topaz table (--scale for downsampled picks), cisTEM .plt or cisTEM text (Å; --format cistem).

    Writes one RELION coordinate STAR per micrograph and coords.star (rlnMicrographName,
    rlnMicrographCoordinates).

    Example:

      cryolens import coords --glob 'picks/*.box' --micrographs MotionCorr/job002/micrographs.star

      cryolens import coords topaz_picks.txt --scale 8 --micrographs MotionCorr/job002/micrographs.star
    """
    from cryolens.jobs.import_coords import run_import_coords

    def body():
        found, source = _files(glob, files, more_files, what="coordinate", suffixes=None)
        with job_target("import_coords", run) as target:
            _need_project(target, group)
            job = run_import_coords(found, micrographs_star, target.out, scale=scale, fmt=cfmt.format,
                                    source=source, observer=target.observer)
            extra = _group(target, group, star=target.out / "coords.star", key="rlnMicrographName")
        r = job.results
        outside = f", {r['n_outside']} outside their micrograph" if r["n_outside"] else ""
        console.print(f"{r['n_picks']} picks on {r['n_files']} of {r['n_micrographs']} micrographs{outside} "
                      f"-> {target.out / 'coords.star'}{extra}")

    run_guarded(body)


@app.command("map")
@declare(run=JobOptions, omit=("device",), outputs=("map",))
def map_(
    path: Annotated[Path, typer.Option("--in", help="3-D map (MRC).")],
    pixel_size: Annotated[Optional[float], typer.Option("--pixel-size", help="Correct the header's pixel size "
                                                        "(Å; the map is rewritten).")] = None,
    link: Annotated[bool, typer.Option("--link", help="Link instead of copying (when the header is kept).")] = False,
    group: GroupOpt = None,
    run: JobOptions = None,
) -> None:
    """Import a 3-D map (reference, mask or published map) as map.mrc after checking its header and values.

    Example:

      cryolens import map --in emd_1234.map --pixel-size 1.06
    """
    from cryolens.jobs.importing import run_import_map

    def body():
        with job_target("import_map", run) as target:
            _need_project(target, group)
            job = run_import_map(path, target.out, pixel_size=pixel_size, link=link, observer=target.observer)
            extra = _group(target, group)
        r = job.results
        nx, ny, nz = r["box"]
        console.print(f"map {nx}x{ny}x{nz} at {r['pixel_size_A']:g} Å/px "
                      f"({'header corrected' if r['header_rewritten'] else 'linked' if r['linked'] else 'copied'})"
                      f" -> {target.out / 'map.mrc'}{extra}")

    run_guarded(body)
