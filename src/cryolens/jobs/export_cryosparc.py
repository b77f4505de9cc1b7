"""``cryolens export cryosparc --in particles.star --out DIR``: a particle STAR as cryoSPARC reads it.

Writes into the job folder:

* ``particles.cs``: the cryoSPARC particle dataset (:func:`cryolens.jobs.cryosparc_tables.relion_to_cs`:
  blob, ctf and, with poses, alignments3D fields), ``blob/path`` naming ``stacks/<file>`` relative to the job
  folder; read it with cryosparc-tools (``Dataset.load``) or bring it back with ``cryolens import particles``.
* ``stacks/``: one symbolic link per particle stack (file names made unique), so the folder is self-contained
  without copying images; cryoSPARC's *Import Particle Stack* takes ``particles.star`` as *Particle meta path*
  and ``stacks/`` as *Particle data path* (it links the stacks again, matching file names).
* ``particles.star``: the RELION 3.1 table with ``rlnImageName`` naming the links (what *Import Particle
  Stack* reads: it takes STAR metadata, not ``.cs``).
* ``job.json``, ``run.log``, ``report.html``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryolens.errors import InputError
from cryolens.io import (ImageSource, format_image_name, parse_image_name, read_mrc_header, read_particles,
                         require_finite, write_particles)
from cryolens.io.atomic import atomic_output
from cryolens.io.cryosparc import read_cs, write_cs
from cryolens.io.paths import star_name
from cryolens.jobs.cryosparc_tables import relion_to_cs
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver
from cryolens.jobs.units import check_pixel_size

__all__ = ["check_cryosparc_export", "run_export_cryosparc", "link_names"]

_CTF = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_POSE = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def link_names(stacks: list[Path]) -> list[str]:
    """A unique file name for each stack (its own name, or ``<k>_<name>`` when two stacks share a name)."""
    names, seen = [], set()
    for k, s in enumerate(stacks):
        name = s.name if s.name not in seen else f"{k + 1:04d}_{s.name}"
        seen.add(name)
        names.append(name)
    return names


def check_cryosparc_export(star: str | os.PathLike):
    """``(optics, particles, source)`` of a particle STAR with the CTF columns cryoSPARC needs and finite poses;
    InputError names the file and the fix."""
    optics, parts = read_particles(star)
    missing = [c for c in _CTF if c not in parts.columns]
    if missing:
        raise InputError(f"{star}: column {missing[0]} is missing; cryoSPARC needs each particle's CTF: run "
                         "`cryolens ctf` before extraction, or add it.")
    for label in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if label not in optics.columns:
            raise InputError(f"{star}: data_optics has no {label}; add it (or re-import with `cryolens import "
                             "particles`).")
    poses = [c for c in _POSE if c in parts.columns]
    if 0 < len(poses) < 3:
        missing = next(c for c in _POSE if c not in parts.columns)
        raise InputError(f"{star}: has {poses[0]} but no {missing}; give all three angles or none.")
    require_finite(parts, [c for c in (*_CTF, *poses, "rlnOriginXAngst", "rlnOriginYAngst", "rlnPhaseShift")
                           if c in parts.columns], star, "particles")
    source = ImageSource(parts, star)  # every stack located, indices and box checked
    box = source.image_size
    if "rlnImageSize" in optics.columns and (optics["rlnImageSize"].astype(int) != box).any():
        raise InputError(f"{star}: rlnImageSize says {int(optics['rlnImageSize'].iloc[0])} but the stacks are "
                         f"{box} pixels; fix data_optics.")
    optics["rlnImageSize"] = box
    apix = optics["rlnImagePixelSize"].astype(float)
    if apix.nunique() == 1:  # the policy of every stage: each stack header agrees with the optics
        for stack in source.stack_paths:
            check_pixel_size(stack, read_mrc_header(stack).voxel_size, float(apix.iloc[0]), "rlnImagePixelSize")
    return optics, parts, source


def run_export_cryosparc(star: str | os.PathLike, out_dir: str | os.PathLike, *, checked=None,
                         observer: JobObserver | None = None) -> Job:
    """Write ``particles.cs``, ``particles.star`` and ``stacks/`` links for a particle STAR; returns the Job."""
    out = Path(out_dir)
    optics, parts, source = checked if checked is not None else check_cryosparc_export(star)
    stacks = source.stack_paths
    links = link_names(stacks)
    split = [parse_image_name(n) for n in parts["rlnImageName"].astype(str)]  # as ImageSource read them
    idx = np.array([i for i, _ in split], np.int64)
    order = {name: k for k, name in enumerate(dict.fromkeys(p for _, p in split))}  # = source.stack_paths order
    which = np.array([order[p] for _, p in split], np.int64)
    with Job("export_cryosparc", out, params={}, inputs={"particles": star}, observer=observer) as job:
        (out / "stacks").mkdir(exist_ok=True)
        for stack, name in zip(stacks, links):
            with atomic_output(out / "stacks" / name) as tmp:
                os.symlink(os.path.realpath(stack), tmp)  # the file itself, not a chain of links
        blob = [f"stacks/{links[w]}" for w in which]
        ds = relion_to_cs(optics, parts, blob_paths=blob, blob_idx=idx)
        write_cs(out / "particles.cs", ds)
        if len(read_cs(out / "particles.cs")) != len(parts):  # written and read back whole
            raise InputError(f"{out / 'particles.cs'}: wrote fewer rows than {star} holds; check the disk.")
        job.add_output("particles_cs", out / "particles.cs")
        named = {k: star_name(out / "stacks" / n, into=out) for k, n in enumerate(links)}
        star_parts = parts.assign(rlnImageName=[format_image_name(i, named[w]) for i, w in zip(idx, which)])
        write_particles(out / "particles.star", optics, star_parts)
        job.add_output("particles", out / "particles.star")
        job.results.update(n_particles=int(len(parts)), n_stacks=len(stacks), box=source.image_size,
                           pixel_size_A=float(optics["rlnImagePixelSize"].iloc[0]),
                           n_optics_groups=int(len(optics)), poses="alignments3D/pose" in ds.fields(),
                           fields=len(ds.fields()))
        write_report(out / "report.html", title="Export to cryoSPARC", summary=job.results, params=job.params,
                     images=[])
    return job
