"""``cryolens extract``: particle boxes cut from micrographs into stacks and a RELION 3.1 particles.star.

Inputs: the particle positions (:mod:`cryolens.jobs.extract_inputs`: a coordinate index as
``cryolens import coords`` and the simulator write it, one pick table, or a particles.star
for re-extraction, optionally re-centred on its rlnOriginXAngst/YAngst) and the micrographs
STAR (RELION 3.1 optics + micrographs; CTF columns and the patch-CTF defocus plane
``cryolensDefocusGradientX/Y`` optional). Every input is checked (files found, headers
read, box no larger than any micrograph, at least one box inside) before the job folder
is touched.

Each micrograph with positions is one unit of work (:mod:`cryolens.jobs.units`) for the
compute backend: read the micrograph, cut its particles in batches
(:func:`cryolens.extract.iter_extract`: RELION 3.1's extraction) straight into
``Particles/<stem>.mrcs`` (:class:`cryolens.io.stack_writer.StackWriter`, renamed into
place when complete), then write ``Particles/<stem>.json`` last; a rerun with the same
inputs and options skips micrographs already done. Memory follows one micrograph per
worker. On the CPU micrographs run in threads of this process (``threads:cores``; ``--j N``:
N worker processes), on a GPU one after the other in this process.

Outputs in the job folder (paths inside STAR files are relative to the current folder,
RELION's rule):

* ``Particles/<stem>.mrcs``: the particles of one micrograph (white on black unless
  ``--no-invert``), the final pixel size in the header; ``<stem>`` is the micrograph's file
  stem (its folder's name in front where two micrographs share a stem). A micrograph whose
  boxes all leave it has no stack.
* ``particles.star``: ``data_optics`` (the micrographs' optics groups with rlnImagePixelSize
  [Å], rlnImageSize [px], rlnImageDimensionality 2, rlnCtfDataArePhaseFlipped 1 after
  ``--phase-flip``) and ``data_particles``: rlnCoordinateX/Y [px of the micrograph],
  rlnImageName ``N@<job>/Particles/<stem>.mrcs``, rlnMicrographName (as in the micrographs
  STAR), rlnOpticsGroup, the per-particle CTF (rlnDefocusU/V [Å] at the particle from the
  micrograph's defocus and plane, :class:`cryolens.extract.MicrographCTF`; rlnDefocusAngle,
  rlnPhaseShift and the micrograph's other CTF columns copied), then the input's other
  columns (for re-extraction its own columns win, refined defocus included; rlnOriginXAngst/YAngst
  are the residual origins after ``--recentre``). Particles are in the order of the micrographs
  STAR, then of the positions.
* ``gallery.png`` (the first particles), ``report.html``, ``job.json`` (results: counts,
  particles skipped at the edges per micrograph, warnings), ``run.log``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.compute.backends import default_spec, get_backend
from cryolens.errors import InputError
from cryolens.extract import ExtractParams, MicrographCTF, boxes_inside, iter_extract, recentre
from cryolens.io import (merge_optics, open_stack, read_micrographs, read_mrc, require_columns,
                         write_particles)
from cryolens.io.images import format_image_name
from cryolens.io.paths import star_name
from cryolens.io.stack_writer import StackWriter
from cryolens.jobs.extract_inputs import XY, Positions, match_micrographs, read_positions, resolve_file
from cryolens.jobs.report import plot_gallery, write_report
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.units import UnitRecord, check_micrograph_header, fingerprint, unique_stems

__all__ = ["run_extract", "ExtractUnit", "extract_micrograph", "MICROGRAPH_CTF_COLUMNS"]

#: Micrograph CTF columns copied to each particle (rlnDefocusU/V evaluated at the particle).
MICROGRAPH_CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
                          "rlnCtfScalefactor", "rlnCtfAstigmatism", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit")
ORIGINS = ["rlnOriginXAngst", "rlnOriginYAngst"]
_GALLERY = 32  # particles shown in gallery.png


@dataclass(frozen=True)
class ExtractUnit:
    """Everything one worker needs to extract the particles of one micrograph (picklable).

    Attributes:
        name: rlnMicrographName as given; path: the resolved micrograph file; stem: the output name.
        out_dir: the job folder; shape: ``(H, W)`` of the micrograph from its header [px].
        pixel_size: Å per micrograph pixel; coords: ``(N, 2)`` float64 particle centres ``(x, y)`` [px].
        ctf: the micrograph's CTF and defocus plane (None when the STAR file has no CTF).
        params: the extraction options; device: torch device name; key: fingerprint for resuming.
    """

    name: str
    path: str
    stem: str
    out_dir: str
    shape: tuple[int, int]
    pixel_size: float
    coords: np.ndarray
    ctf: MicrographCTF | None
    params: ExtractParams
    device: str
    key: str = ""

    @property
    def stack(self) -> Path:
        """``Particles/<stem>.mrcs`` in the job folder."""
        return Path(self.out_dir) / "Particles" / f"{self.stem}.mrcs"

    @property
    def record(self) -> UnitRecord:
        """The unit's results JSON ``Particles/<stem>.json`` (written last)."""
        return UnitRecord(str(Path(self.out_dir) / "Particles" / f"{self.stem}.json"), self.key)


def _fingerprint(unit: ExtractUnit) -> str:
    """Options, pixel size, the coordinates, the CTF when phase flipping, and the micrograph file's stamp."""
    data = dict(params=dataclasses.asdict(unit.params), pixel_size=unit.pixel_size, shape=list(unit.shape),
                coords=hashlib.sha1(np.ascontiguousarray(unit.coords, dtype=np.float64).tobytes()).hexdigest(),
                ctf=dataclasses.asdict(unit.ctf) if unit.params.phase_flip and unit.ctf is not None else None)
    return fingerprint(data, files=[unit.path])


def _xy(coords: np.ndarray) -> torch.Tensor:
    """``(N, 2)`` float64 tensor (a copy) of particle centres ``(x, y)`` [px]."""
    return torch.tensor(np.asarray(coords, dtype=np.float64).reshape(-1, 2))


def _read_micrograph(unit: ExtractUnit) -> np.ndarray:
    img, _ = read_mrc(unit.path)
    if img.shape != tuple(unit.shape):
        raise InputError(f"{unit.path}: holds {'x'.join(map(str, img.shape))} px, not the {unit.shape[1]}x"
                         f"{unit.shape[0]} of its header; repair or replace the micrograph.")
    if not np.isfinite(img).all():
        raise InputError(f"{unit.path}: contains NaN or infinite values; repair it or remove it from the "
                         "micrographs STAR.")
    return img


def extract_micrograph(unit: ExtractUnit) -> dict:
    """Extract one micrograph's particles into ``Particles/<stem>.mrcs`` (a unit of work).

    Returns ``{"name", "n" (particles written), "n_skipped", "reused"}``; ``reused`` is True
    when an earlier run's stack was taken. The stack is renamed into place when complete and
    the JSON record written after it.
    """
    record = unit.record
    old = record.done()
    if old is not None:
        return {**old, "reused": True}
    p = unit.params
    coords = _xy(unit.coords)
    n = int(boxes_inside(coords, box=p.box, shape=unit.shape, edge=p.edge).sum())
    outputs = []
    if n:
        mic = torch.as_tensor(np.require(_read_micrograph(unit), requirements="W"), device=torch.device(unit.device))
        apix_out = unit.pixel_size * p.box / p.out_box
        unit.stack.parent.mkdir(parents=True, exist_ok=True)
        with StackWriter(unit.stack, n=n, box=p.out_box, voxel_size=apix_out) as w:
            done = 0
            for idx, images in iter_extract(mic, coords, params=p, pixel_size=unit.pixel_size, ctf=unit.ctf):
                w.write(done, images.cpu().numpy())
                done += int(idx.numel())
        outputs.append(unit.stack)
    else:
        unit.stack.unlink(missing_ok=True)  # a stale stack of an earlier run with other options
    result = {"name": unit.name, "n": n, "n_skipped": int(len(unit.coords)) - n}
    return {**record.finish(result, outputs=outputs), "reused": False}


# ------------------------------------------------------------------------------ planning (before the job)


@dataclass
class _Plan:
    optics: pd.DataFrame
    units: list[ExtractUnit]
    tables: list[pd.DataFrame]  # per unit: its particles' rows (all positions, kept or not)
    rows: list[dict]  # per unit: the micrograph's row, optics merged in
    warnings: list[str]
    n_unmatched: int
    has_ctf: bool
    kind: str  # of the positions: files, table or particles
    n_without: int  # micrographs of the STAR file without positions


def _positions_of(pos: Positions, mics: pd.DataFrame, mics_star: Path) -> tuple[pd.DataFrame, int, list[str]]:
    """The positions with a column ``_mic`` (row of the micrographs STAR); unmatched ones dropped with a warning."""
    table = pos.table.copy()
    table["_mic"] = match_micrographs(table["rlnMicrographName"], mics["rlnMicrographName"].astype(str).tolist())
    lost = table["_mic"] < 0
    warnings = []
    if pos.missing:
        warnings.append(f"{len(pos.missing)} coordinate files named in {pos.path} do not exist (e.g. {pos.missing[0]}): "
                        "their micrographs have no picks")
    if len(table) and lost.all():
        raise InputError(f"{pos.path}: none of its micrographs (e.g. {table['rlnMicrographName'].iloc[0]}) is in "
                         f"{mics_star}; give the micrographs STAR the positions were picked on.")
    if lost.any():
        names = table.loc[lost, "rlnMicrographName"].unique()
        warnings.append(f"{int(lost.sum())} positions of {len(names)} micrographs not in {mics_star} (e.g. "
                        f"{names[0]}) were left out")
    return table[~lost], int(lost.sum()), warnings


def _header_shape(path: Path, apix: float, box: int) -> tuple[int, int]:
    ny, nx = check_micrograph_header(path, apix)
    if box > min(nx, ny):
        raise InputError(f"{path}: the box of {box} px is larger than the micrograph ({nx} x {ny} px); give a "
                         "smaller --box.")
    return ny, nx


def _plan(coords_star: Path, mics_star: Path, out: Path, params: ExtractParams, device: str,
          recentre_on: bool) -> _Plan:
    pos = read_positions(coords_star)
    if not len(pos.table):
        raise InputError(f"{coords_star}: holds no particle positions; pick the micrographs first or give another "
                         "file.")
    optics, mics = read_micrographs(mics_star)
    require_columns(mics, ["rlnMicrographName"], mics_star, "micrographs")
    if recentre_on:
        if pos.kind != "particles":
            raise InputError(f"{coords_star}: --recentre needs a particles.star with rlnOriginXAngst/YAngst (refined "
                             "origins), not coordinates; drop --recentre.")
        require_columns(pos.table, ORIGINS, coords_star, "particles")
    table, n_unmatched, warnings = _positions_of(pos, mics, mics_star)
    has_ctf = {"rlnDefocusU", "rlnDefocusV"} <= set(mics.columns)
    if not has_ctf:
        if params.phase_flip:
            raise InputError(f"{mics_star}: has no CTF (rlnDefocusU/V); --phase-flip needs it: give the "
                             "micrographs_ctf.star of `cryolens ctf`.")
        warnings.append(f"{mics_star} has no CTF columns (rlnDefocusU/V): particles.star carries no CTF")
    merged = merge_optics(optics, mics)
    used = sorted(table["_mic"].unique().tolist())
    names = mics["rlnMicrographName"].astype(str).tolist()
    paths = {i: resolve_file(names[i], mics_star, i + 1, "micrograph") for i in used}
    stems = dict(zip(used, unique_stems([paths[i] for i in used])))
    units, tables, rows = [], [], []
    for i in used:
        row = merged.iloc[i].to_dict()
        apix = float(row["rlnMicrographPixelSize"])
        shape = _header_shape(paths[i], apix, params.box)
        t = table[table["_mic"] == i].drop(columns="_mic").reset_index(drop=True)
        if recentre_on:
            c, o = recentre(_xy(t[XY].to_numpy()), _xy(t[ORIGINS].to_numpy()), pixel_size=apix)
            t[XY], t[ORIGINS] = c.numpy(), o.numpy()
        ctf = None
        if has_ctf:
            try:
                ctf = MicrographCTF.from_row(row)
            except KeyError as e:
                raise InputError(f"{mics_star}: {e.args[0]} of micrograph {names[i]} (row {i + 1}) is not a number; "
                                 "re-run CTF estimation or remove the micrograph.") from None
        u = ExtractUnit(name=names[i], path=str(paths[i]), stem=stems[i], out_dir=str(out), shape=shape,
                        pixel_size=apix, coords=np.array(t[XY].to_numpy(), dtype=np.float64), ctf=ctf,
                        params=params, device=device)
        units.append(dataclasses.replace(u, key=_fingerprint(u)))
        tables.append(t)
        rows.append(row)
    n_in = sum(int(boxes_inside(_xy(u.coords), box=params.box, shape=u.shape, edge=params.edge).sum())
               for u in units)
    if n_in == 0:
        n = sum(len(t) for t in tables)
        raise InputError(f"{coords_star}: none of its {n} particle boxes of {params.box} px lies inside its "
                         "micrograph; check that the coordinates are in pixels of these micrographs, or give a "
                         "smaller --box (or --edge replicate).")
    return _Plan(optics, units, tables, rows, warnings, n_unmatched, has_ctf, pos.kind, len(mics) - len(used))


# ------------------------------------------------------------------------------ outputs


def _particle_rows(unit: ExtractUnit, t: pd.DataFrame, row: dict, *, kind: str, has_ctf: bool) -> pd.DataFrame:
    """The particles.star rows of one micrograph's kept particles."""
    p = unit.params
    kept = boxes_inside(_xy(unit.coords), box=p.box, shape=unit.shape, edge=p.edge).numpy()
    t = t[kept].reset_index(drop=True)
    name = star_name(unit.stack, into=unit.stack)
    out = pd.DataFrame({"rlnCoordinateX": t["rlnCoordinateX"], "rlnCoordinateY": t["rlnCoordinateY"],
                        "rlnImageName": [format_image_name(k, name) for k in range(len(t))],
                        "rlnMicrographName": unit.name, "rlnOpticsGroup": int(row["rlnOpticsGroup"])})
    if has_ctf:
        u, v = unit.ctf.defocus_at(_xy(t[XY].to_numpy()), shape=unit.shape)
        for c in MICROGRAPH_CTF_COLUMNS:
            if kind == "particles" and c in t.columns:
                continue  # re-extraction keeps the particles' own (refined) CTF
            if c in ("rlnDefocusU", "rlnDefocusV"):
                out[c] = (u if c == "rlnDefocusU" else v).numpy()
            elif c in row and pd.notna(row[c]):
                out[c] = row[c]
    rest = [c for c in t.columns if c not in out.columns and c not in ("rlnImageName", "rlnOpticsGroup")
            and not c.startswith("_")]
    return pd.concat([out, t[rest]], axis=1)


def _particle_optics(optics: pd.DataFrame, groups: list[int], params: ExtractParams) -> pd.DataFrame:
    o = optics[optics["rlnOpticsGroup"].isin(groups)].reset_index(drop=True).copy()
    o["rlnImagePixelSize"] = o["rlnMicrographPixelSize"].astype(float) * params.box / params.out_box
    o["rlnImageSize"] = int(params.out_box)
    o["rlnImageDimensionality"] = 2
    if params.phase_flip:
        o["rlnCtfDataArePhaseFlipped"] = 1
    return o


def _gallery(units: list[ExtractUnit], results: list[dict], path: Path) -> bool:
    images = []
    for u, r in zip(units, results):
        if r["n"]:
            images.extend(np.asarray(open_stack(u.stack)[:_GALLERY - len(images)], dtype=np.float32))
        if len(images) >= _GALLERY:
            break
    if not images:
        return False
    plot_gallery(np.stack(images), path, title=f"first {len(images)} particles")
    return True


def run_extract(coords_star: str | os.PathLike, micrographs_star: str | os.PathLike, out_dir: str | os.PathLike,
                params: ExtractParams, *, recentre: bool = False, backend: str | None = None,
                workers: int | None = None, device: torch.device | str = "cpu",
                progress: Callable[[int, int], None] | None = None, observer: JobObserver | None = None) -> Job:
    """Extract the particles at the positions of ``coords_star`` from the micrographs of ``micrographs_star``.

    Args:
        coords_star: a coordinate index (coords.star), a pick table or a particles.star
            (:mod:`cryolens.jobs.extract_inputs`).
        micrographs_star: micrographs STAR (RELION 3.1 or 3.0), CTF columns optional
            (needed for ``params.phase_flip``).
        out_dir: the job folder.
        params: :class:`cryolens.extract.ExtractParams` (box [px], binning, normalisation, ...).
        recentre: move each particle's coordinate by the whole pixels of its rlnOriginXAngst/YAngst and
            keep the remainder as its origin (RELION's ``--recenter``; particles.star input only).
        backend: compute backend spec (:func:`cryolens.compute.backends.get_backend`); default on
            the CPU ``threads:cores`` (``local:workers`` when ``workers`` is given), on a GPU ``inprocess``.
        workers: micrographs at once in local worker processes (``--j``).
        device: where each micrograph is processed.
        progress: ``progress(done, total)`` over micrographs.

    Returns:
        The finished :class:`Job` (results: counts, skipped particles per micrograph, warnings).

    Raises:
        InputError: bad input (one sentence naming the file and the fix); raised before the job
            folder is touched unless a micrograph's data turn out unreadable.
    """
    coords_star, mics_star, out = Path(coords_star), Path(micrographs_star), Path(out_dir)
    check_params("extract", params)
    dev = str(torch.device(device))
    plan = _plan(coords_star, mics_star, out, params, dev, recentre)
    spec = default_spec(backend, workers, len(plan.units), dev)
    local = spec.split(":")[0] in ("threads", "inprocess", "local")
    be = get_backend(spec) if local else None  # a bad local spec fails here; remote backends connect in the job
    job_params = {**dataclasses.asdict(params), "recentre": recentre, "backend": spec, "workers": workers}
    with Job("extract", out, params=job_params, inputs={"coordinates": coords_star, "micrographs": mics_star},
             device=dev, observer=observer) as job:
        for w in plan.warnings:
            job.log.warning(w)
        (out / "Particles").mkdir(parents=True, exist_ok=True)
        job.log.info("%d micrographs through backend %s (%s)", len(plan.units), spec, dev)
        with job.timed("extract"), (be or get_backend(spec)) as b:
            results = b.map(extract_micrograph, plan.units, desc="extract", progress=progress)
        parts = [_particle_rows(u, t, row, kind=plan.kind, has_ctf=plan.has_ctf)
                 for u, t, row in zip(plan.units, plan.tables, plan.rows)]
        particles = pd.concat(parts, ignore_index=True)
        if len(particles) != sum(r["n"] for r in results):
            raise RuntimeError("extract: the stacks and the particle table disagree on the number of particles")
        groups = sorted(particles["rlnOpticsGroup"].unique().tolist())
        optics_out = _particle_optics(plan.optics, groups, params)
        write_particles(out / "particles.star", optics_out, particles)
        job.add_output("particles", out / "particles.star")
        skipped = {r["name"]: r["n_skipped"] for r in results if r["n_skipped"]}
        warnings = list(plan.warnings)
        n_skipped = sum(skipped.values())
        if n_skipped:
            warnings.append(f"{n_skipped} particles in {len(skipped)} micrographs were skipped: their {params.box} px "
                            "box leaves the micrograph (--edge replicate keeps them, edge-filled)")
            job.log.warning(warnings[-1])
        fresh = len(results) - sum(bool(r["reused"]) for r in results)
        job.results.update(
            n_micrographs=len(results), n_micrographs_without_positions=plan.n_without, n_particles=len(particles),
            n_positions=sum(len(t) for t in plan.tables), n_skipped=n_skipped, skipped_per_micrograph=skipped,
            n_unmatched_positions=plan.n_unmatched, n_reused=len(results) - fresh, box=params.box,
            image_size=params.out_box, pixel_size_A=round(float(optics_out["rlnImagePixelSize"].iloc[0]), 6),
            backend=spec, seconds_per_micrograph=round(job.timings["extract"] / max(fresh, 1), 3), warnings=warnings)
        images = ["gallery.png"] if _gallery(plan.units, results, out / "gallery.png") else []
        write_report(out / "report.html", title="Particle extraction",
                     summary={k: v for k, v in job.results.items() if k not in ("skipped_per_micrograph", "warnings")},
                     params=job.params, images=images)
        job.add_output("report", out / "report.html")
        job.log.info("%d particles from %d micrographs (%d reused), %d skipped at the edges", len(particles),
                     len(results), len(results) - fresh, n_skipped)
    return job
