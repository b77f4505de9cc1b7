"""``cryolens import movies|micrographs|particles|coords|map``: bring data into a job folder as RELION 3.1 STAR.

Outputs (fixed names in the job folder; paths inside STAR files are relative to the project
root inside a project, else to the current folder, and absolute for files outside it: RELION's
rule, see :func:`cryolens.io.paths.star_name`):

* movies: ``movies.star`` = ``data_optics`` (rlnOpticsGroupName, rlnOpticsGroup, [rlnMtfFileName],
  rlnMicrographOriginalPixelSize Å, rlnVoltage kV, rlnSphericalAberration mm, rlnAmplitudeContrast,
  rlnMicrographDoseRate = exposure per frame e/Å², rlnMicrographPreExposure e/Å²) + ``data_movies``
  (rlnMicrographMovieName, rlnOpticsGroup, [rlnMicrographGainName, rlnMicrographDefectFile]), the
  columns ``relion_import --do_movies`` writes plus the dose, which RELION keeps per movie
  (MotionCorr's ``data_general``) under the same labels; motion correction reads it from optics.
  ``gain.mrc``: the gain reference oriented once (RELION's ``--gain_rot``/``--gain_flip``, see
  :mod:`cryolens.jobs.import_gain`), so downstream needs no flip/rotation flags; ``defects.<ext>``: a copy of the defect file.
* micrographs: ``micrographs.star`` (rlnMicrographName; optics with rlnMicrographPixelSize and
  rlnMicrographOriginalPixelSize, as ``relion_import --do_micrographs``).
* particles: ``particles.star`` (RELION 3.0 files upgraded to 3.1 with the given acquisition values;
  every stack located, its header and file size read, indices and box checked; stack paths rewritten
  so they resolve from the project root, or outside a project from the current folder).
* coords: see :mod:`cryolens.jobs.import_coords`.
* map: ``map.mrc`` (a copy, a link, or a rewritten file when the pixel size is corrected).

Every kind also writes ``job.json``, ``run.log`` and ``report.html``.
"""

from __future__ import annotations

import glob as globlib
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import ImageSource, read_mrc, read_mrc_header, read_particles, read_star, write_mrc
from cryolens.io import write_particles, write_star
from cryolens.io.paths import project_root, resolve_path, star_name
from cryolens.io.movies import MOVIE_SUFFIXES as _MOVIE_FORMATS
from cryolens.io.movies import MovieInfo, movie_info, read_defects
from cryolens.io.atomic import atomic_output
from cryolens.jobs.import_gain import oriented_gain, plot_gain
from cryolens.jobs.import_options import Acquisition, GainOptions, ParticleOptics
from cryolens.jobs.report import plot_central_slices, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.units import check_pixel_size

__all__ = ["expand_inputs", "read_headers", "check_particle_import", "CheckedParticles",
           "run_import_movies", "run_import_micrographs", "run_import_particles",
           "run_import_map", "MOVIE_SUFFIXES", "MICROGRAPH_SUFFIXES"]

MOVIE_SUFFIXES = tuple(_MOVIE_FORMATS)
MICROGRAPH_SUFFIXES = (".mrc", ".tif", ".tiff")


def expand_inputs(patterns: list[str], files: list[str | os.PathLike], *, what: str,
                  suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Files from glob ``patterns`` (sorted, ``**`` allowed) and explicit ``files``, in order, without repeats.

    Raises:
        InputError: nothing given, a pattern matching nothing, a missing or empty file, a wrong suffix.
    """
    if not patterns and not files:
        raise InputError(f"no {what} given; pass --glob 'DIR/*.ext' or the files.")
    out: list[Path] = []
    for pattern in patterns:
        hits = sorted(globlib.glob(os.path.expanduser(pattern), recursive=True))
        hits = [h for h in hits if Path(h).is_file()]
        if not hits:
            raise InputError(f"--glob {pattern!r}: no file matches in {Path.cwd()}; check the pattern "
                             "(quote it so the shell does not expand it).")
        out += [Path(h) for h in hits]
    for f in files:
        if not Path(f).is_file():
            raise InputError(f"{f}: file not found; check the path.")
        out.append(Path(f))
    out = list(dict.fromkeys(Path(os.path.normpath(p)) for p in out))
    for p in out:
        if suffixes is not None and p.suffix.lower() not in suffixes:
            raise InputError(f"{p}: not a {what} file ({', '.join(suffixes)}); narrow the pattern.")
        if p.stat().st_size == 0:
            raise InputError(f"{p}: the file is empty; re-copy it or leave it out.")
    return out


# ------------------------------------------------------------------------------------------ headers

def read_frame_info(path: Path) -> MovieInfo:
    """A movie's or micrograph's header (frames, rows, columns, dtype, format); EER frames are readouts."""
    return movie_info(path, eer_grouping=1)


def read_headers(files: list[Path]) -> list[MovieInfo]:
    """Every file's header, each checked to open and to be as long as it says (a header and a file size,
    for TIFF/EER the page directories, never the data), so a missing, truncated or corrupt file is named
    before anything is written.

    Raises:
        InputError: the first bad file, named with the fix.
    """
    return [read_frame_info(f) for f in files]


# ------------------------------------------------------------------------------------------ optics

def _optics_row(acq: Acquisition, number: int, *, kind: str, into: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"rlnOpticsGroupName": acq.optics_group, "rlnOpticsGroup": number}
    if acq.mtf:
        if not Path(acq.mtf).is_file():
            raise InputError(f"{acq.mtf}: the --mtf file does not exist; give the detector's MTF STAR file (or drop "
                             "--mtf).")
        row["rlnMtfFileName"] = star_name(acq.mtf, into=into)
    if kind == "micrographs":
        row["rlnMicrographPixelSize"] = float(acq.pixel_size)
    row["rlnMicrographOriginalPixelSize"] = float(acq.pixel_size)
    row |= {"rlnVoltage": float(acq.voltage), "rlnSphericalAberration": float(acq.cs),
            "rlnAmplitudeContrast": float(acq.amplitude_contrast)}
    if kind == "movies":
        row |= {"rlnMicrographDoseRate": float(acq.exposure_per_frame),
                "rlnMicrographPreExposure": float(acq.pre_exposure)}
    return row


def _optics_groups(files: list[Path], acq: Acquisition, rule: str | None, *, kind: str,
                   into: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Optics table and each file's group number: one group, or one per value of the regular expression
    ``rule`` on the file name (its first capture group, else the whole match), named ``<optics group>_<value>``."""
    if rule is None:
        names, groups = [acq.optics_group], np.ones(len(files), np.int64)
    else:
        try:
            rx = re.compile(rule)
        except re.error as e:
            raise InputError(f"--optics-from {rule!r}: not a regular expression ({e}); fix it.") from None
        values = []
        for f in files:
            m = rx.search(f.name)
            if m is None:
                raise InputError(f"{f}: its name does not match --optics-from {rule!r}; fix the rule or the pattern.")
            values.append(m.group(1) if rx.groups else m.group(0))
        unique = sorted(set(values))
        names = [f"{acq.optics_group}_{v}" for v in unique]
        groups = np.array([unique.index(v) + 1 for v in values], np.int64)
    rows = [_optics_row(replace(acq, optics_group=n), k + 1, kind=kind, into=into) for k, n in enumerate(names)]
    return pd.DataFrame(rows), groups


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    return bool(np.isclose(float(a), float(b)))


def _merge_previous(previous: Path, block: str, key: str, optics: pd.DataFrame,
                    table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Append new optics groups and rows to a previous import's STAR (``relion_import --continue``)."""
    blocks = read_star(previous)
    if "optics" not in blocks or block not in blocks:
        raise InputError(f"{previous}: --append needs a RELION 3.1 {block} STAR (data_optics + data_{block}); "
                         "give the STAR of an earlier import.")
    old_optics, old_table = blocks["optics"].copy(), blocks[block].copy()
    dup = sorted(set(old_table[key].astype(str)) & set(table[key].astype(str)))
    if dup:
        raise InputError(f"{previous}: already lists {dup[0]} ({len(dup)} files in both); leave them out of this "
                         "import.")
    renumber = {}
    next_number = int(old_optics["rlnOpticsGroup"].max()) + 1
    keep = []
    for _, row in optics.iterrows():  # a few optics groups
        same = old_optics[old_optics["rlnOpticsGroupName"].astype(str) == row["rlnOpticsGroupName"]]
        if len(same):
            cols = [c for c in optics.columns if c != "rlnOpticsGroup"]
            if not all(c in same.columns and _same(same.iloc[0][c], row[c]) for c in cols):
                raise InputError(f"{previous}: optics group {row['rlnOpticsGroupName']} exists with other "
                                 "acquisition values; choose another --optics-group.")
            renumber[int(row["rlnOpticsGroup"])] = int(same.iloc[0]["rlnOpticsGroup"])
        else:
            renumber[int(row["rlnOpticsGroup"])] = next_number
            keep.append(row.to_dict() | {"rlnOpticsGroup": next_number})
            next_number += 1
    table = table.assign(rlnOpticsGroup=table["rlnOpticsGroup"].map(renumber).astype(np.int64))
    merged_optics = pd.concat([old_optics, pd.DataFrame(keep)], ignore_index=True) if keep else old_optics
    merged = pd.concat([old_table, table], ignore_index=True)
    for df, what in ((merged_optics, "data_optics"), (merged, f"data_{block}")):
        missing = [c for c in df.columns if df[c].isna().any()]
        if missing:
            raise InputError(f"{previous}: its {what} and this import differ in column {missing[0]}; import into a "
                             "separate STAR or give the same options.")
    return merged_optics, merged


def _require(acq: Acquisition, names: tuple[str, ...], what: str) -> None:
    for name in names:
        if getattr(acq, name) is None:
            raise InputError(f"import {what}: --{name.replace('_', '-')} is required; give it.")


# ------------------------------------------------------------------------------------------ movies

def run_import_movies(files: list[Path], out_dir: str | os.PathLike, acq: Acquisition, gain: GainOptions, *,
                      defect: str | None = None, append: str | None = None, optics_from: str | None = None,
                      check_all: bool = False, source: str = "", headers: list[MovieInfo] | None = None,
                      observer: JobObserver | None = None) -> Job:
    """Write ``movies.star`` (+ ``gain.mrc``, defects copy) for ``files``; returns the finished :class:`Job`.

    ``headers``: :func:`read_headers` of ``files`` when the caller checked them already (read here otherwise)."""
    out = Path(out_dir)
    check_params("import movies", acq, gain)
    _require(acq, ("pixel_size", "voltage", "cs", "amplitude_contrast", "exposure_per_frame"), "movies")
    infos = read_headers(files) if headers is None else headers
    first = infos[0]
    for info in infos:
        if info.n_frames < 2 and info.fmt != "eer":
            raise InputError(f"{info.path}: holds {info.n_frames} frame; it looks like a micrograph: use "
                             "`cryolens import micrographs` (or leave it out).")
    if check_all:
        for f, info in zip(files[1:], infos[1:]):
            if (info.n_frames, info.height, info.width) != (first.n_frames, first.height, first.width):
                raise InputError(f"{f}: {info.width}x{info.height}x{info.n_frames} differs from {files[0]} "
                                 f"({first.width}x{first.height}x{first.n_frames}); import them as another "
                                 "optics group.")
    raw = oriented = None
    if gain.path is not None:
        raw, oriented = oriented_gain(gain, first)
    if defect is not None:
        read_defects(defect, (first.height, first.width))  # validates the list or the map
    optics, groups = _optics_groups(files, acq, optics_from, kind="movies", into=out)
    params = {"acquisition": asdict(acq), "gain": asdict(gain), "defect": defect, "append": append,
              "optics_from": optics_from, "n_movies": len(files)}
    inputs = {k: v for k, v in {"movies": source, "gain": gain.path, "defect": defect, "append": append}.items() if v}
    with Job("import_movies", out, params=params, inputs=inputs, observer=observer) as job:
        table = pd.DataFrame({"rlnMicrographMovieName": [star_name(f, into=out) for f in files],
                              "rlnOpticsGroup": groups})
        images = []
        if oriented is not None:
            write_mrc(out / "gain.mrc", oriented, acq.pixel_size)
            job.add_output("gain", out / "gain.mrc")
            table["rlnMicrographGainName"] = star_name(out / "gain.mrc", into=out)
            plot_gain(raw, oriented, out / "gain.png", gain)
            images.append("gain.png")
        if defect is not None:
            copy = out / f"defects{Path(defect).suffix.lower() or '.txt'}"
            _copy_atomic(Path(defect), copy)
            job.add_output("defects", copy)
            table["rlnMicrographDefectFile"] = star_name(copy, into=out)
        if append is not None:
            optics, table = _merge_previous(Path(append), "movies", "rlnMicrographMovieName", optics, table)
        write_star(out / "movies.star", {"optics": optics, "movies": table})
        job.add_output("movies", out / "movies.star")
        job.results.update(n_movies=int(len(table)), n_imported=len(files), n_optics_groups=int(len(optics)),
                           n_frames=first.n_frames, width=first.width, height=first.height, dtype=str(first.dtype),
                           format=first.fmt, pixel_size_A=acq.pixel_size,
                           total_exposure_e_per_A2=round(first.n_frames * acq.exposure_per_frame, 4)
                           if first.fmt != "eer" else None, gain=oriented is not None,
                           header_pixel_size_A=first.pixel_size)
        if first.pixel_size > 0 and abs(first.pixel_size - acq.pixel_size) > 0.01 * acq.pixel_size:
            job.log.warning("%s: the header says %.4g Å/px, --pixel-size %.4g Å/px is used", files[0],
                            first.pixel_size, acq.pixel_size)
        write_report(out / "report.html", title="Import movies", summary=job.results, params=job.params,
                     images=images)
        job.log.info("%d movies (%dx%dx%d %s) -> movies.star", len(files), first.width, first.height, first.n_frames,
                     first.dtype)
    return job


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


# ------------------------------------------------------------------------------------------ micrographs

def run_import_micrographs(files: list[Path], out_dir: str | os.PathLike, acq: Acquisition, *,
                           append: str | None = None, optics_from: str | None = None, source: str = "",
                           headers: list[MovieInfo] | None = None, observer: JobObserver | None = None) -> Job:
    """Write ``micrographs.star`` for ``files``; returns the finished :class:`Job` (``headers``: as for
    :func:`run_import_movies`)."""
    out = Path(out_dir)
    check_params("import micrographs", acq)
    _require(acq, ("pixel_size", "voltage", "cs", "amplitude_contrast"), "micrographs")
    infos = read_headers(files) if headers is None else headers
    first = infos[0]
    for info in infos:
        if info.n_frames > 1:
            raise InputError(f"{info.path}: holds {info.n_frames} frames; it looks like a movie: use "
                             "`cryolens import movies` (or leave it out).")
    optics, groups = _optics_groups(files, acq, optics_from, kind="micrographs", into=out)
    params = {"acquisition": asdict(acq), "append": append, "optics_from": optics_from, "n_micrographs": len(files)}
    inputs = {k: v for k, v in {"micrographs": source, "append": append}.items() if v}
    with Job("import_micrographs", out, params=params, inputs=inputs, observer=observer) as job:
        table = pd.DataFrame({"rlnMicrographName": [star_name(f, into=out) for f in files], "rlnOpticsGroup": groups})
        if append is not None:
            optics, table = _merge_previous(Path(append), "micrographs", "rlnMicrographName", optics, table)
        write_star(out / "micrographs.star", {"optics": optics, "micrographs": table})
        job.add_output("micrographs", out / "micrographs.star")
        job.results.update(n_micrographs=int(len(table)), n_imported=len(files), n_optics_groups=int(len(optics)),
                           width=first.width, height=first.height, dtype=str(first.dtype), pixel_size_A=acq.pixel_size)
        write_report(out / "report.html", title="Import micrographs", summary=job.results, params=job.params,
                     images=[])
    return job


# ------------------------------------------------------------------------------------------ particles

_NAME = r"^(?:(?P<index>\d+)@)?(?P<path>.+)$"


@dataclass
class CheckedParticles:
    """A particle STAR read and checked by :func:`check_particle_import`: optics upgraded to RELION 3.1, every
    stack located, its header and size read, indices and box checked (``source``); ``version`` of the input."""

    optics: pd.DataFrame
    particles: pd.DataFrame
    source: ImageSource
    version: str


def check_particle_import(star: str | os.PathLike, acq: ParticleOptics) -> CheckedParticles:
    """Read and check a RELION 3.0/3.1 particle STAR for :func:`run_import_particles` (headers and file sizes
    only, never the images); InputError names the first problem and its fix."""
    optics_group = acq.optics_group
    check_params("import particles", acq)
    blocks = read_star(star)
    version = "3.1" if "optics" in blocks else "3.0"
    optics, parts = read_particles(star, pixel_size=acq.pixel_size)
    for label, value, opt in (("rlnVoltage", acq.voltage, "voltage"), ("rlnSphericalAberration", acq.cs, "cs"),
                              ("rlnAmplitudeContrast", acq.amplitude_contrast, "amplitude-contrast"),
                              ("rlnImagePixelSize", acq.pixel_size, "pixel-size")):
        if label in optics.columns:
            have = optics[label].astype(float).to_numpy()
            if value is not None and not np.allclose(have, value, rtol=1e-4):
                raise InputError(f"{star}: {label} is {have[0]:g} in the file but --{opt} says {value:g}; "
                                 f"drop --{opt} or fix the file.")
        elif value is None:
            raise InputError(f"{star}: no {label} in the file (RELION {version}); give --{opt}.")
        else:
            optics[label] = float(value)
    source = ImageSource(parts, star)  # locates every stack, checks indices and box sizes
    apix = optics["rlnImagePixelSize"].astype(float)
    if apix.nunique() == 1:  # one policy with every stage: each stack header agrees with the optics
        for stack in source.stack_paths:
            check_pixel_size(stack, read_mrc_header(stack).voxel_size, float(apix.iloc[0]), "rlnImagePixelSize")
    box = source.image_size
    if "rlnImageSize" in optics.columns and (optics["rlnImageSize"].astype(int) != box).any():
        raise InputError(f"{star}: rlnImageSize says {int(optics['rlnImageSize'].iloc[0])} but the stacks are "
                         f"{box} pixels; fix data_optics.")
    optics["rlnImageSize"] = box
    optics["rlnImageDimensionality"] = 2
    if optics_group is not None:
        optics["rlnOpticsGroupName"] = ([optics_group] if len(optics) == 1
                                        else [f"{optics_group}_{g}" for g in optics["rlnOpticsGroup"]])
    return CheckedParticles(optics, parts, source, version)


def run_import_particles(star: str | os.PathLike, out_dir: str | os.PathLike, acq: ParticleOptics, *,
                         checked: CheckedParticles | None = None, observer: JobObserver | None = None) -> Job:
    """Validate a RELION 3.0/3.1 particle STAR, upgrade it to 3.1 and write ``particles.star``.

    ``acq`` values fill what a 3.0 file lacks (voltage, Cs, amplitude contrast, pixel size); a
    value given that disagrees with the file is an error. ``acq.optics_group`` renames the groups.
    ``checked``: :func:`check_particle_import` of the same STAR when the caller ran it already.
    """
    out = Path(out_dir)
    c = checked if checked is not None else check_particle_import(star, acq)
    optics, parts, source, version = c.optics, c.particles, c.source, c.version
    box = source.image_size
    parts_ = parts["rlnImageName"].astype(str).str.extract(_NAME)
    renamed, in_project = {}, project_root(out) is not None
    for name in parts_["path"].unique():
        resolved = resolve_path(name, star)
        keep = not in_project and ((Path.cwd() / name).is_file() or Path(name).is_absolute())
        renamed[name] = name if keep else star_name(resolved, into=out)
    paths = parts_["path"].map(renamed)
    parts = parts.assign(rlnImageName=np.where(parts_["index"].notna(), parts_["index"].fillna("") + "@" + paths,
                                               paths))
    header_apix = read_mrc_header(source.stack_paths[0]).voxel_size
    apix = float(optics["rlnImagePixelSize"].iloc[0])
    params = {"acquisition": asdict(acq), "optics_group": acq.optics_group}
    with Job("import_particles", out, params=params, inputs={"particles": star}, observer=observer) as job:
        write_particles(out / "particles.star", optics, parts)
        job.add_output("particles", out / "particles.star")
        job.results.update(n_particles=int(len(parts)), n_stacks=len(source.stack_paths), box=box,
                           pixel_size_A=apix, header_pixel_size_A=header_apix, input_version=version,
                           n_optics_groups=int(len(optics)), n_renamed_stacks=sum(a != b for a, b in renamed.items()))
        if header_apix > 0 and abs(header_apix - apix) > 0.01 * apix:
            job.log.warning("%s: header pixel size %.4g Å differs from the STAR's %.4g Å (the STAR is used)",
                            source.stack_paths[0], header_apix, apix)
        write_report(out / "report.html", title="Import particles", summary=job.results, params=job.params,
                     images=[])
    return job


# ------------------------------------------------------------------------------------------ map

def _finite_stats(path: Path) -> tuple[float, float, float, float]:
    """(min, max, mean, std) of a map, read 16 sections at a time; InputError on NaN or infinity."""
    try:
        handle = mrcfile.mmap(path, mode="r", permissive=True)
    except Exception:  # noqa: BLE001 - compressed or odd files: read whole (read_mrc names the problem)
        handle = None
    if handle is not None and handle.data is None:  # permissive mmap of a truncated file: no data
        handle.close()
        handle = None
    data = handle.data if handle is not None else read_mrc(path)[0]
    try:
        lo, hi, s, s2, n = np.inf, -np.inf, 0.0, 0.0, 0
        for z in range(0, data.shape[0], 16):
            slab = np.asarray(data[z:z + 16], dtype=np.float64)
            if not np.isfinite(slab).all():
                raise InputError(f"{path}: the map contains NaN or infinite values; fix or re-export it.")
            lo, hi = min(lo, slab.min()), max(hi, slab.max())
            s, s2, n = s + slab.sum(), s2 + (slab ** 2).sum(), n + slab.size
    finally:
        if handle is not None:
            handle.close()
    mean = s / n
    return float(lo), float(hi), float(mean), float(np.sqrt(max(s2 / n - mean ** 2, 0.0)))


def run_import_map(path: str | os.PathLike, out_dir: str | os.PathLike, *, pixel_size: float | None = None,
                   link: bool = False, observer: JobObserver | None = None) -> Job:
    """Check a 3-D map and bring it in as ``map.mrc``: copied (or linked), rewritten when ``pixel_size`` corrects
    the header; returns the finished :class:`Job`."""
    src, out = Path(path), Path(out_dir)
    if pixel_size is not None and not pixel_size > 0:
        raise InputError("import map: --pixel-size must be positive (Å).")
    info = read_mrc_header(src)
    nz, ny, nx = info.shape
    if nz < 2:
        raise InputError(f"{src}: is a 2-D image ({nx}x{ny}), not a 3-D map; give a map.")
    if info.is_stack:
        raise InputError(f"{src}: its header marks a stack of {nz} images (space group 0), not a 3-D map; give a "
                         "map, or set the space group to 1 (e.g. relion_image_handler or mrcfile) if it is one.")
    if pixel_size is None and not info.voxel_size > 0:
        raise InputError(f"{src}: the header has no pixel size; give --pixel-size in Å.")
    apix = float(pixel_size) if pixel_size is not None else info.voxel_size
    lo, hi, mean, std = _finite_stats(src)
    rewrite = pixel_size is not None and not np.isclose(info.voxel_size, pixel_size, rtol=1e-4)
    params = {"pixel_size": pixel_size, "link": link}
    with Job("import_map", out, params=params, inputs={"map": src}, observer=observer) as job:
        target = out / "map.mrc"
        if rewrite:
            data, _ = read_mrc(src)
            write_mrc(target, data, apix, is_stack=False, origin=info.origin)
        elif link:
            with atomic_output(target) as tmp:
                os.symlink(os.path.abspath(src), tmp)
        else:
            _copy_atomic(src, target)
        job.add_output("map", target)
        job.results.update(box=[nx, ny, nz], cubic=nx == ny == nz, pixel_size_A=apix,
                           header_pixel_size_A=info.voxel_size, header_rewritten=rewrite, linked=link and not rewrite,
                           min=lo, max=hi, mean=mean, std=std)
        if not nx == ny == nz:
            job.log.warning("%s is not cubic (%dx%dx%d); refinement needs a cubic box", src, nx, ny, nz)
        plot_central_slices(read_mrc(target)[0], out / "map_slices.png", title=src.name)
        write_report(out / "report.html", title="Import map", summary=job.results, params=job.params,
                     images=["map_slices.png"])
    return job
