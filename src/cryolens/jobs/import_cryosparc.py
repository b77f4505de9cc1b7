"""``cryolens import particles --in particles.cs``: a cryoSPARC particle set as a RELION 3.1 ``particles.star``.

The ``.cs`` file is joined with its passthrough files (the ``--passthrough`` files, else every
``*_passthrough_*.cs`` beside it that holds all its particles), converted field by field
(:mod:`cryolens.jobs.cryosparc_tables`), and every stack named by ``blob/path`` located and checked
as ``import particles`` checks a STAR file's stacks (header, size, indices, box, pixel size). cryoSPARC
names stacks relative to its project folder: they are looked for under ``--cs-project-dir``, beside the
``.cs`` file, in the folder above it (a job folder inside the project), in the current folder, and by
file name beside the ``.cs`` file. The job folder holds ``particles.star``, ``job.json``, ``run.log`` and
``report.html`` like every ``import particles`` job.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.errors import InputError
from cryolens.io import ImageSource, format_image_name, read_mrc_header, write_particles
from cryolens.io.cryosparc import find_passthroughs, join_passthrough, read_cs
from cryolens.io.paths import star_name
from cryolens.jobs.cryosparc_tables import cs_to_relion
from cryolens.jobs.import_options import ParticleOptics
from cryolens.jobs.report import write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.units import check_pixel_size

__all__ = ["CheckedCryosparc", "check_cryosparc_import", "run_import_cryosparc", "locate_stack"]


@dataclass
class CheckedCryosparc:
    """A ``.cs`` file read and checked by :func:`check_cryosparc_import`: RELION 3.1 ``optics`` and ``particles``
    (``rlnImageName`` naming stacks absolutely), the image ``source``, the passthrough files joined, each row's
    resolved stack and 0-based index, and how many rows have ``blob/sign`` +1."""

    optics: pd.DataFrame
    particles: pd.DataFrame
    source: ImageSource
    passthroughs: list[Path]
    stacks: list[Path]
    indices: np.ndarray
    n_sign_positive: int
    version: str = "cryoSPARC"


def locate_stack(name: str, cs: Path, project_dir: Path | None) -> Path:
    """The file a ``blob/path`` entry names (see the module docstring for where it looks).

    Raises:
        InputError: found nowhere; names the ``.cs`` file, the stack and ``--cs-project-dir``.
    """
    p = Path(name)
    if p.is_absolute():
        tries = [p]
    else:
        here = cs.absolute().parent
        tries = ([project_dir / p] if project_dir is not None else []) + [here / p, here.parent / p, Path.cwd() / p,
                                                                          here / p.name]
    for t in tries:
        if t.is_file():
            return t
    where = "under --cs-project-dir, " if project_dir is not None else ""
    raise InputError(f"{cs}: particle stack {name} not found ({where}beside the file, above it or in the current "
                     "folder); give --cs-project-dir (the cryoSPARC project folder) or copy the stacks.")


def check_cryosparc_import(cs: str | os.PathLike, acq: ParticleOptics, *, passthrough: list[str | os.PathLike],
                           project_dir: str | os.PathLike | None = None) -> CheckedCryosparc:
    """Read, join, convert and check a cryoSPARC ``.cs`` particle file before a job folder is taken
    (headers and file sizes of the stacks only); InputError names the first problem and its fix."""
    cs = Path(cs)
    check_params("import particles", acq)
    if project_dir is not None and not Path(project_dir).is_dir():
        raise InputError(f"{project_dir}: --cs-project-dir is not a folder; give the cryoSPARC project folder.")
    ds = read_cs(cs)
    strict = bool(passthrough)
    files = [Path(p) for p in passthrough] if strict else find_passthroughs(cs)
    ds, used = join_passthrough(ds, [(f, read_cs(f)) for f in files], cs, strict=strict)
    optics, parts, names = cs_to_relion(ds, cs)
    for label, value, opt in (("rlnVoltage", acq.voltage, "voltage"), ("rlnSphericalAberration", acq.cs, "cs"),
                              ("rlnAmplitudeContrast", acq.amplitude_contrast, "amplitude-contrast"),
                              ("rlnImagePixelSize", acq.pixel_size, "pixel-size")):
        have = optics[label].astype(float).to_numpy()
        if value is not None and not np.allclose(have, value, rtol=1e-4):
            raise InputError(f"{cs}: {label} is {have[0]:g} in the file but --{opt} says {value:g}; drop --{opt} "
                             "or fix the file.")
    pdir = Path(project_dir) if project_dir is not None else None
    unique = {n: locate_stack(n, cs, pdir) for n in dict.fromkeys(names)}
    stacks = [unique[n] for n in names]
    idx = np.asarray(ds["blob/idx"], np.int64)
    parts.insert(0, "rlnImageName", [format_image_name(i, os.path.abspath(s)) for i, s in zip(idx, stacks)])
    source = ImageSource(parts, cs)  # every stack's header and size, indices and box
    if (optics["rlnImageSize"].astype(int) != source.image_size).any():
        raise InputError(f"{cs}: blob/shape says {int(optics['rlnImageSize'].iloc[0])} pixels but the stacks are "
                         f"{source.image_size}; re-export the particles from cryoSPARC.")
    group_of = dict(zip(parts["rlnImageName"].str.split("@").str[1], parts["rlnOpticsGroup"]))
    apix_of = dict(zip(optics["rlnOpticsGroup"], optics["rlnImagePixelSize"].astype(float)))
    for stack in source.stack_paths:  # one policy with every stage: each header agrees with the optics
        check_pixel_size(stack, read_mrc_header(stack).voxel_size, apix_of[group_of[os.path.abspath(stack)]],
                         "blob/psize_A")
    if acq.optics_group is not None:
        optics["rlnOpticsGroupName"] = ([acq.optics_group] if len(optics) == 1
                                        else [f"{acq.optics_group}_{g}" for g in optics["rlnOpticsGroup"]])
    sign = np.asarray(ds["blob/sign"]) if "blob/sign" in ds.fields() else np.full(len(ds), -1.0)
    return CheckedCryosparc(optics, parts, source, passthroughs=used, stacks=stacks, indices=idx,
                            n_sign_positive=int((sign > 0).sum()))


def run_import_cryosparc(cs: str | os.PathLike, out_dir: str | os.PathLike, acq: ParticleOptics, *,
                         checked: CheckedCryosparc, observer: JobObserver | None = None) -> Job:
    """Write ``particles.star`` (RELION 3.1) of a checked cryoSPARC particle file; returns the finished Job.

    Stack names are written as every import writes them (:func:`cryolens.io.paths.star_name`: relative to the
    project root inside a project, else to the current folder, absolute outside either)."""
    out = Path(out_dir)
    c = checked
    parts = c.particles.copy()
    names = {s: star_name(s, into=out) for s in dict.fromkeys(c.stacks)}
    parts["rlnImageName"] = [format_image_name(i, names[s]) for i, s in zip(c.indices, c.stacks)]
    params = {"acquisition": asdict(acq), "optics_group": acq.optics_group,
              "passthrough": [str(p) for p in c.passthroughs]}
    inputs = {"particles": cs} | {f"passthrough{k + 1}": p for k, p in enumerate(c.passthroughs)}
    with Job("import_particles", out, params=params, inputs=inputs, observer=observer) as job:
        write_particles(out / "particles.star", c.optics, parts)
        job.add_output("particles", out / "particles.star")
        has_poses = "rlnAngleRot" in parts.columns
        job.results.update(n_particles=int(len(parts)), n_stacks=len(names), box=c.source.image_size,
                           pixel_size_A=float(c.optics["rlnImagePixelSize"].iloc[0]), input_version=c.version,
                           n_optics_groups=int(len(c.optics)), n_passthrough=len(c.passthroughs),
                           poses=has_poses, classes="rlnClassNumber" in parts.columns,
                           n_sign_positive=c.n_sign_positive)
        if c.n_sign_positive:
            job.log.warning("%s: %d particles have blob/sign +1 (protein dark in the stack); cryolens reads stacks "
                            "as protein bright: invert them (relion_image_handler --multiply_constant -1)",
                            cs, c.n_sign_positive)
        write_report(out / "report.html", title="Import cryoSPARC particles", summary=job.results,
                     params=job.params, images=[])
    return job
