"""``cryolens pick``: particle picking over the micrographs of a STAR file, resumable per micrograph.

Input: a micrographs STAR (RELION 3.1 optics + micrographs; the micrographs_ctf.star of ``cryolens
ctf``); its CTF columns, when present, make the picker CTF-aware (the blob or templates carry each
micrograph's CTF, :class:`cryolens.extract.MicrographCTF` at the micrograph's centre). Templates:
class averages (``--templates classes.mrcs``) or a map whose projections serve as templates
(``--map map.mrc``), both with their pixel size in the header. Every input is checked (files
found, headers read, diameter smaller than every micrograph) before the job folder is touched.

Each micrograph is one unit of work (:mod:`cryolens.jobs.units`) for the compute backend: read
it, :func:`cryolens.picking.pick_micrograph`, write its candidates (every pick down to the floor
``PickParams.keep_floor``, with score and diameter) to ``Candidates/<stem>.star`` and, for a
sample of micrographs, a low-passed copy ``Overlays/<stem>.mrc`` for the overlays, then the
record ``Candidates/<stem>.json`` last; a rerun with the same inputs and options (the threshold
and ``--max-per-micrograph`` aside: they only select among the candidates) skips finished micrographs. Memory follows one micrograph per worker. Then the candidates are gathered and the
selection (threshold, at most N per micrograph) and every output written by
:func:`cryolens.jobs.pick_outputs.write_selection` (``picks_all.star``, ``coords.star``, RELION's
``*_autopick.star`` layout, overlays, plots, ``report.html``). :func:`run_rethreshold`
(:mod:`cryolens.jobs.pick_select`) re-selects from a finished job's candidates without picking.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryolens.compute.backends import default_spec, get_backend
from cryolens.errors import InputError
from cryolens.extract import MicrographCTF
from cryolens.io import (merge_optics, read_micrographs, read_mrc, read_mrc_header, read_star, require_columns, write_mrc,
                         write_star)
from cryolens.jobs.extract_inputs import match_micrographs, resolve_file
from cryolens.jobs.pick_outputs import DIAMETER, FOM, XY, draw_overlay, write_selection
from cryolens.jobs.runner import Job, JobObserver, check_params
from cryolens.jobs.units import UnitRecord, check_micrograph_header, fingerprint, unique_stems
from cryolens.picking import PickParams, pick_micrograph
from cryolens.picking.filters import fourier_crop_2d
from cryolens.picking.picker import picking_shape

__all__ = ["PickUnit", "pick_unit", "run_pick", "preview_pick", 
           "N_OVERLAYS", "OUTPUTS"]

#: The outputs recorded in job.json (name -> file in the job folder).
OUTPUTS = {"coords": "coords.star", "picks_all": "picks_all.star", "autopick": "autopick.star", "report": "report.html"}
#: Micrographs (evenly spaced through the STAR file) that get an overlay PNG.
N_OVERLAYS = 6
_OVERLAY_MAX_PX = 1024  # longest side of an overlay image


@dataclass(frozen=True)
class PickUnit:
    """Everything one worker needs to pick one micrograph (picklable).

    Attributes:
        name: rlnMicrographName as given; path: the resolved micrograph file; stem: the output name.
        out_dir: the job folder; pixel_size: Å per micrograph pixel.
        ctf: the micrograph's CTF (None: the STAR file has none); params: the picking options.
        templates, map: paths of the class averages or the map (``method="template"``), else None.
        overlay: also write the low-passed micrograph ``Overlays/<stem>.mrc``.
        device: torch device name; key: fingerprint for resuming.
    """

    name: str
    path: str
    stem: str
    out_dir: str
    pixel_size: float
    ctf: MicrographCTF | None
    params: PickParams
    templates: str | None = None
    map: str | None = None
    overlay: bool = False
    device: str = "cpu"
    key: str = ""

    @property
    def table(self) -> Path:
        """``Candidates/<stem>.star``: every candidate (x, y [px], score [SD], diameter [Å])."""
        return Path(self.out_dir) / "Candidates" / f"{self.stem}.star"

    @property
    def small(self) -> Path:
        """``Overlays/<stem>.mrc``: the low-passed micrograph for the overlay."""
        return Path(self.out_dir) / "Overlays" / f"{self.stem}.mrc"

    @property
    def record(self) -> UnitRecord:
        """The unit's results JSON ``Candidates/<stem>.json`` (written last)."""
        return UnitRecord(str(Path(self.out_dir) / "Candidates" / f"{self.stem}.json"), self.key)


def _reference(path: str, kind: str) -> tuple[torch.Tensor, float]:
    """Templates ``(T, b, b)`` or a map ``(n, n, n)`` with its pixel size [Å] from the header (cached per process
    while the file is unchanged)."""
    return _load_reference(path, kind, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_reference(path: str, kind: str, stamp: int) -> tuple[torch.Tensor, float]:
    data, apix = read_mrc(path)
    arr = np.asarray(data, dtype=np.float32)
    if kind == "templates" and arr.ndim == 2:
        arr = arr[None]
    return torch.from_numpy(arr.copy()), float(apix)


def _read_micrograph(unit: PickUnit) -> np.ndarray:
    img, _ = read_mrc(unit.path)
    if img.ndim != 2:
        raise InputError(f"{unit.path}: holds {img.shape[0]} images, not one micrograph; give single-image "
                         "micrographs in rlnMicrographName.")
    if not np.isfinite(img).all():
        raise InputError(f"{unit.path}: contains NaN or infinite values; repair it or remove it from the "
                         "micrographs STAR.")
    return img


def _pick(unit: PickUnit, img: np.ndarray, progress=None):
    """Pick one micrograph image -> :class:`cryolens.picking.Picks`."""
    dev = torch.device(unit.device)
    H, W = img.shape
    ctf = None
    if unit.ctf is not None:
        ctf = unit.ctf.ctf_params(torch.tensor([[W / 2, H / 2]], dtype=torch.float64), shape=(H, W))
    kw = {}
    if unit.templates is not None:
        t, apix = _reference(unit.templates, "templates")
        kw = dict(templates=t, template_pixel_size=apix)
    elif unit.map is not None:
        v, apix = _reference(unit.map, "map")
        kw = dict(volume=v, volume_pixel_size=apix)
    image = torch.as_tensor(np.require(img, dtype=np.float32, requirements="W"), device=dev)
    try:
        return pick_micrograph(image, pixel_size=unit.pixel_size, params=unit.params, ctf=ctf, device=dev,
                               progress=progress, **kw)
    except ValueError as e:
        raise InputError(f"{unit.path}: {e}; check the options against this micrograph.") from None


def _display(img: np.ndarray, pixel_size: float, diameter: float) -> tuple[np.ndarray, float]:
    """The micrograph Fourier-cropped (a low-pass) to about diameter/20 Å per pixel, at most 1024 px a side;
    returns ``(image, Å per pixel)``."""
    H, W = img.shape
    target = max(diameter / 20, pixel_size * max(H, W) / _OVERLAY_MAX_PX)
    h, w = picking_shape((H, W), pixel_size, target)
    t = torch.from_numpy(np.require(img, dtype=np.float32, requirements="W"))
    small = fourier_crop_2d(t - t.mean(), (h, w)).numpy()
    return small, pixel_size * W / w


def pick_unit(unit: PickUnit) -> dict:
    """Pick one micrograph into ``Candidates/<stem>.star`` (a unit of work).

    Returns ``{"name", "n_candidates", "floor" (SD), "seconds", "blob_radius", "reused"}`` (``blob_radius``: the
    matched filter's blob, a fraction of the diameter, or None); ``reused`` is True when an
    earlier run's candidates were taken (its options but the selection were the same: the candidates do
    not depend on the threshold above their floor nor on ``max_per_micrograph``).
    """
    record = unit.record
    old = record.done()
    if old is not None:
        return {**old, "reused": True}
    t0 = time.perf_counter()
    img = _read_micrograph(unit)
    picks = _pick(unit, img)
    c = picks.candidates.detach().cpu().double().numpy().reshape(-1, 4).round(4)  # float32 digits, no more
    table = pd.DataFrame({XY[0]: c[:, 0], XY[1]: c[:, 1], FOM: c[:, 2], DIAMETER: c[:, 3]})
    table = table.sort_values(FOM, ascending=False, kind="stable", ignore_index=True)
    unit.table.parent.mkdir(parents=True, exist_ok=True)
    write_star(unit.table, {"picks": table})
    outputs = [unit.table]
    if unit.overlay:
        small, apix = _display(img, unit.pixel_size, unit.params.diameters[1])
        unit.small.parent.mkdir(parents=True, exist_ok=True)
        write_mrc(unit.small, small, apix)
        outputs.append(unit.small)
    result = {"name": unit.name, "n_candidates": int(len(c)), "floor": float(picks.floor),
              "seconds": round(time.perf_counter() - t0, 3), "blob_radius": picks.blob_radius}
    return {**record.finish(result, outputs=outputs), "reused": False}


# ------------------------------------------------------------------------------ planning (before the job)


def _check_reference(path: Path | None, what: str, flag: str) -> str | None:
    if path is None:
        return None
    info = read_mrc_header(path)  # a missing or unreadable file: InputError naming it
    if not info.voxel_size > 0:
        raise InputError(f"{path}: the header gives no pixel size; set it (e.g. `relion_image_handler --i {path} "
                         f"--o fixed.mrc --angpix A`) and pass the fixed {what} to {flag}.")
    data, _ = read_mrc(path)  # small (class averages or one map): check the values before any job starts
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the {what} holds NaN or infinite values; regenerate it and pass it to {flag}.")
    if data.size and float(data.max()) == float(data.min()):
        raise InputError(f"{path}: the {what} is constant ({float(data.max()):g} everywhere); give real {what} "
                         f"to {flag}.")
    return str(path)


def _header_check(path: Path, apix: float, diameter: float) -> None:
    """One micrograph's header: one image, not truncated, its pixel size, larger than the diameter."""
    ny, nx = check_micrograph_header(path, apix)
    if diameter >= min(nx, ny) * apix:
        raise InputError(f"{path}: the particle diameter {diameter:g} Å is not smaller than the micrograph "
                         f"({nx} x {ny} px at {apix:g} Å/px); give a smaller --diameter (in Å).")


def _method(params: PickParams, templates: Path | None, map_: Path | None) -> PickParams:
    """Templates or a map make the method ``template``; ``template`` needs one of them."""
    if templates is not None and map_ is not None:
        raise InputError(f"{templates}, {map_}: give --templates or --map, not both.")
    if templates is not None or map_ is not None:
        if params.method == "log":
            raise InputError(f"{templates or map_}: templates need --method template (or the default), not "
                             "--method log; drop --method or the templates.")
        return dataclasses.replace(params, method="template")
    if params.method == "template":
        raise InputError("--method template needs --templates classes.mrcs (class averages) or --map map.mrc.")
    return params


def _plan(mics_star: Path, out: Path, params: PickParams, device: str, templates: str | None,
          map_: str | None) -> tuple[list[PickUnit], bool]:
    optics, mics = read_micrographs(mics_star)
    require_columns(mics, ["rlnMicrographName"], mics_star, "micrographs")
    if not len(mics):
        raise InputError(f"{mics_star}: lists no micrographs; give the micrographs STAR of motion correction or CTF.")
    merged = merge_optics(optics, mics)
    names = mics["rlnMicrographName"].astype(str).tolist()
    paths = [resolve_file(n, mics_star, i + 1, "micrograph") for i, n in enumerate(names)]
    stems = unique_stems(paths)
    has_ctf = {"rlnDefocusU", "rlnDefocusV"} <= set(mics.columns)
    sample = set(np.unique(np.linspace(0, len(names) - 1, min(len(names), N_OVERLAYS)).round().astype(int)).tolist())
    units = []
    for i, (name, path, stem) in enumerate(zip(names, paths, stems)):
        row = merged.iloc[i].to_dict()
        apix = float(row["rlnMicrographPixelSize"])
        _header_check(path, apix, params.diameters[1])
        ctf = None
        if has_ctf:
            try:
                ctf = MicrographCTF.from_row(row)
            except KeyError as e:
                raise InputError(f"{mics_star}: {e.args[0]} of micrograph {name} (row {i + 1}) is not a number; "
                                 "re-run CTF estimation or remove the micrograph.") from None
        u = PickUnit(name=name, path=str(path), stem=stem, out_dir=str(out), pixel_size=apix, ctf=ctf, params=params,
                     templates=templates, map=map_, overlay=i in sample, device=device)
        key = fingerprint({"params": _candidate_options(params), "pixel_size": apix, "overlay": u.overlay,
                           "ctf": dataclasses.asdict(ctf) if ctf is not None else None},
                          files=[path, *(f for f in (templates, map_) if f is not None)])
        units.append(dataclasses.replace(u, key=key))
    return units, has_ctf


def _candidate_options(params: PickParams) -> dict:
    """What the candidates depend on: every option but the selection (threshold, at most N per micrograph),
    with the floor they are kept down to; a rerun with another selection reuses the candidates."""
    d = dataclasses.asdict(params)
    for k in ("threshold", "max_per_micrograph", "keep_floor"):
        d.pop(k)
    return {**d, "floor": min(params.keep_floor, params.resolved_threshold())}


def _checked_inputs(params: PickParams, templates, map):
    """Params validated (a diameter required) and the method set by the references given; the references'
    paths and checked names."""
    check_params("pick", params)
    try:
        params.require_diameter()
    except ValueError as e:
        raise InputError(f"pick: {e}.") from None
    tpath = Path(templates) if templates is not None else None
    mpath = Path(map) if map is not None else None
    params = _method(params, tpath, mpath)
    return params, tpath, mpath, _check_reference(tpath, "templates", "--templates"), \
        _check_reference(mpath, "map", "--map")


def run_pick(micrographs_star: str | os.PathLike, out_dir: str | os.PathLike, params: PickParams, *,
             templates: str | os.PathLike | None = None, map: str | os.PathLike | None = None,  # noqa: A002
             backend: str | None = None, workers: int | None = None, device: torch.device | str = "cpu",
             progress: Callable[[int, int], None] | None = None, observer: JobObserver | None = None) -> Job:
    """Pick particles in every micrograph of ``micrographs_star`` into the job folder ``out_dir``.

    Args:
        micrographs_star: micrographs STAR (RELION 3.1 or 3.0); CTF columns optional (used when present).
        out_dir: the job folder.
        params: :class:`cryolens.picking.PickParams` (diameter [Å], method, threshold [SD], ...).
        templates: class averages ``(T, b, b)`` MRC stack (white on black), pixel size in the header.
        map: a 3D map whose projections are the templates, voxel size in the header.
        backend: compute backend spec (:func:`cryolens.compute.backends.get_backend`); default on
            the CPU ``threads:cores`` (``local:workers`` when ``workers`` is given), on a GPU ``inprocess``.
        workers: micrographs at once in local worker processes (``--j``).
        device: where each micrograph is picked.
        progress: ``progress(done, total)`` over micrographs.

    Returns:
        The finished :class:`Job` (results: counts, threshold, floor, picks per micrograph, warnings).

    Raises:
        InputError: bad input (one sentence naming the file and the fix), before the job folder is
            touched unless a micrograph's data turn out unreadable.
    """
    mics_star, out = Path(micrographs_star), Path(out_dir)
    params, tpath, mpath, tname, mname = _checked_inputs(params, templates, map)
    dev = str(torch.device(device))
    units, has_ctf = _plan(mics_star, out, params, dev, tname, mname)
    spec = default_spec(backend, workers, len(units), dev)
    local = spec.split(":")[0] in ("threads", "inprocess", "local")
    be = get_backend(spec) if local else None  # a bad local spec fails here; remote backends connect in the job
    threshold = params.resolved_threshold()
    job_params = {**dataclasses.asdict(params), "resolved_threshold": threshold, "backend": spec, "workers": workers}
    inputs = {"micrographs": mics_star, **({"templates": tpath} if tpath else {}), **({"map": mpath} if mpath else {})}
    with Job("pick", out, params=job_params, inputs=inputs, device=dev, observer=observer) as job:
        warnings = [] if has_ctf else [f"{mics_star} has no CTF columns (rlnDefocusU/V): picked without the CTF"]
        for w in warnings:
            job.log.warning(w)
        (out / "Candidates").mkdir(parents=True, exist_ok=True)
        job.log.info("%d micrographs through backend %s (%s)", len(units), spec, dev)
        with job.timed("pick"), (be or get_backend(spec)) as b:
            results = b.map(pick_unit, units, desc="pick", progress=progress)
        candidates = pd.concat([_read_candidates(u) for u in units], ignore_index=True)
        micrographs = pd.DataFrame({"rlnMicrographName": [u.name for u in units],
                                    "rlnMicrographPixelSize": [u.pixel_size for u in units],
                                    "cryolensStem": [u.stem for u in units]})
        floor = min(float(r["floor"]) for r in results)
        fresh = len(results) - sum(bool(r["reused"]) for r in results)
        job.results.update(write_selection(
            out, micrographs, candidates, threshold=threshold, max_per_micrograph=params.max_per_micrograph,
            floor=floor, overlays_from=out, micrographs_star=str(mics_star), title="Particle picking",
            params=job.params, extra=dict(method=params.method, ctf_aware=has_ctf)))
        job.results.update(n_reused=len(results) - fresh, backend=spec, warnings=warnings,
                           seconds_per_micrograph=round(job.timings["pick"] / max(fresh, 1), 3))
        blobs = [r.get("blob_radius") for r in results if r.get("blob_radius") is not None]
        if blobs:  # the matched filter's blob chosen per micrograph (filled: 0.33, hollow: 0.5 of the diameter)
            job.results["micrographs_per_blob_radius"] = {f"{b:g}": blobs.count(b) for b in sorted(set(blobs))}
            job.log.info("matched filter blob radius (fraction of the diameter): %s",
                         job.results["micrographs_per_blob_radius"])
        for name, file in OUTPUTS.items():
            job.add_output(name, out / file, rows=False)  # zero picks is a result (reported), not a fault
        r = job.results
        job.log.info("%d picks (%d candidates) in %d micrographs (%d reused), threshold %.3g", r["n_picks"],
                     r["n_candidates"], len(results), r["n_reused"], threshold)
    return job


def _read_candidates(unit: PickUnit) -> pd.DataFrame:
    """One unit's candidates with its rlnMicrographName in front."""
    t = next(iter(read_star(unit.table).values()))
    t = t.copy() if isinstance(t, pd.DataFrame) else pd.DataFrame(columns=[*XY, FOM, DIAMETER])
    t.insert(0, "rlnMicrographName", unit.name)
    return t


def preview_pick(micrograph: str, params: PickParams, *, micrographs_star: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike = ".", templates: str | os.PathLike | None = None,
                 map: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> tuple[Path, int]:  # noqa: A002
    """Pick one micrograph and write ``<out_dir>/preview_<stem>.png`` (no job folder).

    ``micrograph`` is a name in ``micrographs_star`` (its pixel size and CTF are used) or an MRC
    file (pixel size from its header, no CTF). Returns ``(png path, number of picks)``.
    """
    params, tpath, mpath, tname, mname = _checked_inputs(params, templates, map)
    dev = str(torch.device(device))
    unit = None
    if micrographs_star is not None:
        optics, mics = read_micrographs(micrographs_star)
        require_columns(mics, ["rlnMicrographName"], micrographs_star, "micrographs")
        hit = match_micrographs(pd.Series([micrograph]), mics["rlnMicrographName"].astype(str).tolist())[0]
        if hit >= 0:
            row = merge_optics(optics, mics).iloc[hit].to_dict()
            path = resolve_file(str(row["rlnMicrographName"]), micrographs_star, int(hit) + 1, "micrograph")
            ctf = MicrographCTF.from_row(row) if {"rlnDefocusU", "rlnDefocusV"} <= set(row) else None
            unit = PickUnit(name=str(row["rlnMicrographName"]), path=str(path), stem=path.stem, out_dir=str(out_dir),
                            pixel_size=float(row["rlnMicrographPixelSize"]), ctf=ctf, params=params, templates=tname,
                            map=mname, device=dev)
    if unit is None:
        path = Path(micrograph)
        if not path.is_file():
            where = f" nor a micrograph of {micrographs_star}" if micrographs_star is not None else ""
            raise InputError(f"{micrograph}: not a file{where}; give a micrograph MRC or a name from --in.")
        apix = read_mrc_header(path).voxel_size
        if not apix > 0:
            raise InputError(f"{path}: the header gives no pixel size; pass --in micrographs.star listing it "
                             "(rlnMicrographPixelSize) instead.")
        unit = PickUnit(name=str(path), path=str(path), stem=path.stem, out_dir=str(out_dir), pixel_size=float(apix),
                        ctf=None, params=params, templates=tname, map=mname, device=dev)
    _header_check(Path(unit.path), unit.pixel_size, params.diameters[1])
    img = _read_micrograph(unit)
    picks = _pick(unit, img)
    small, apix = _display(img, unit.pixel_size, params.diameters[1])
    png = Path(out_dir) / f"preview_{unit.stem}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    xy = picks.xy().detach().cpu().numpy()
    draw_overlay(small, apix / unit.pixel_size, xy, picks.diameter.detach().cpu().numpy() / unit.pixel_size, png,
                 title=f"{unit.name}: {len(picks)} picks above {picks.threshold:g} SD")
    return png, len(picks)
