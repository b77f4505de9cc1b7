"""Structures from files for the simulators: MRC maps, PDB/mmCIF models, the phantom.

A structure *spec* is a path or ``phantom``, optionally followed by ``:key=value``
options (several separated by ``,`` or ``:``)::

    phantom                         the built-in asymmetric phantom (seed 0)
    phantom:seed=3,diameter=80      another fold / size (Å)
    apoferritin                     the shipped apoferritin chain (PDB 7A4M) as an O 24-mer
    model.pdb:assembly=D7           the model's first chain repeated by D7 symmetry
    map.mrc                         an MRC map (Fourier-resampled, padded/cropped)
    map.mrc:population=0.3          weight in a discrete mixture (default 1)
    map.mrc:apix=1.1                voxel size when the header's is wrong or 0
    map.mrc:mass_kda=64             put the map on the scattering scale (needed by --dose)
    model.pdb:bfactor=60            an atomic model; every atom's B set to 60 Å²
    model.cif:keep_coordinates      deposited coordinates instead of centring

Options valid for all: ``population``, ``name``. Models: ``bfactor``,
``keep_coordinates``, ``assembly`` (a point group; see :mod:`cryolens.simulate.assembly`). Maps: ``apix`` (alias ``map_pixel_size``), ``mass_kda``.
Phantom: ``seed``, ``diameter``, ``bfactor``.

All structures of one simulation share one pixel size and box: the given ones,
else the first structure's (map: its header voxel size and box; model:
:data:`DEFAULT_MODEL_PIXEL_SIZE` and 1.5× its diameter; phantom: 2 Å, 64 px).
Maps are loaded first, because Fourier resampling sets their exact pixel size
(``voxel · n / round(n · voxel / pixel_size)``); models and the phantom are then
rendered at exactly that pixel size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryolens.core.fourier import pad_or_crop, resample
from cryolens.errors import InputError
from cryolens.io import read_mrc
from cryolens.simulate.assembly import BUILTIN_MODELS, symmetric_assembly
from cryolens.simulate.structures import (
    Structure,
    calibrate_mass,
    default_model_box,
    model_to_map,
    phantom_structure,
)

__all__ = ["DEFAULT_MODEL_PIXEL_SIZE", "parse_spec", "load_structure", "load_structures", "structure_inputs", "load_morph",
           "read_model"]

DEFAULT_MODEL_PIXEL_SIZE = 1.0
_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
_OPTIONS = {
    "phantom": {"population", "name", "seed", "diameter", "bfactor"},
    "map": {"population", "name", "apix", "map_pixel_size", "mass_kda"},
    "model": {"population", "name", "bfactor", "keep_coordinates", "assembly"},
}
_FLOAT_OPTIONS = {"population", "diameter", "bfactor", "apix", "map_pixel_size", "mass_kda"}


def _kind(path: str) -> str:
    if path.lower() == "phantom":
        return "phantom"
    if path.lower() in BUILTIN_MODELS:
        return "model"
    return "model" if path.lower().endswith(_MODEL_SUFFIXES) else "map"


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """``(kind, path, options)`` of a structure spec; kind is phantom, map or model."""
    parts = spec.split(":")
    path, opts = parts[0].strip(), {}
    if not path:
        raise InputError(f"structure {spec!r}: no file given; write PATH[:key=value,...] or phantom.")
    kind = _kind(path)
    for item in (x.strip() for p in parts[1:] for x in p.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in _OPTIONS[kind]:
            raise InputError(f"structure {spec!r}: unknown option {key!r} for a {kind}; "
                             f"use one of {', '.join(sorted(_OPTIONS[kind]))}.")
        if key == "keep_coordinates":
            opts[key] = (not sep) or value.strip().lower() in ("1", "true", "yes", "on")
        elif key in ("name", "assembly"):
            opts[key] = value.strip()
        else:
            try:
                opts[key] = float(value) if key in _FLOAT_OPTIONS else int(value)
            except ValueError:
                raise InputError(f"structure {spec!r}: option {key} needs a number, got {value!r}.") from None
    if opts.get("population", 1.0) < 0:
        raise InputError(f"structure {spec!r}: population must not be negative.")
    return kind, path, opts


def read_model(path: str):
    """A ``gemmi.Structure`` from a PDB/mmCIF file, with at least one atom."""
    import gemmi

    if not Path(path).is_file():
        raise InputError(f"{path}: file not found; check the path.")
    try:
        st = gemmi.read_structure(str(path))
    except Exception as e:  # gemmi raises RuntimeError/ValueError on malformed records
        raise InputError(f"{path}: cannot be read as a PDB/mmCIF model ({str(e).splitlines()[0][:120]}); "
                         "check that the file is a valid, complete model.") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f"{path}: no atoms could be read as a PDB/mmCIF model; "
                         "check that the file is a valid, complete model.")
    return st


def _model(path: str, assembly: str | None):
    """The model of a spec: a file or a built-in name, repeated by ``assembly`` symmetry when given."""
    builtin = BUILTIN_MODELS.get(path.lower())
    if builtin:
        st = read_model(str(builtin[0]))
        assembly = assembly or builtin[1]
    else:
        st = read_model(path)
    if assembly and assembly.upper() != "C1":
        st = symmetric_assembly(st, assembly)  # an unknown point group is an InputError
    return st


def _map_volume(path: str, *, pixel_size: float | None, box: int | None,
                map_pixel_size: float | None) -> tuple[torch.Tensor, float]:
    data, apix = read_mrc(path)
    if map_pixel_size:
        apix = map_pixel_size
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: the map is {data.shape}, not a cubic volume; pad it to a cube first.")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the map contains NaN or infinite values; fix or regenerate it.")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path}: the map is constant ({float(data.max()):g} everywhere); give a map with density.")
    if not apix > 0:
        raise InputError(f"{path}: the header's voxel size is 0; give it with --map-pixel-size "
                         f"or as {Path(path).name}:apix=VALUE.")
    vol = torch.tensor(data, dtype=torch.float32)
    if pixel_size and abs(pixel_size - apix) > 1e-4:
        vol = resample(vol, apix, pixel_size, ndim=3)
        apix = apix * data.shape[-1] / vol.shape[-1]
    if box and box != vol.shape[-1]:
        vol = pad_or_crop(vol, box)
    return vol, float(apix)


def _load_one(spec: str, *, pixel_size: float | None, box: int | None, seed: int,
              map_pixel_size: float | None) -> Structure:
    kind, path, o = parse_spec(spec)
    pop = float(o.get("population", 1.0))
    if kind == "phantom":
        apix = pixel_size or 2.0
        s = phantom_structure(box or 64, apix, seed=int(o.get("seed", seed)), diameter=o.get("diameter"),
                              bfactor=o.get("bfactor", 30.0), population=pop)
    elif kind == "model":
        st = _model(path, o.get("assembly"))
        apix = pixel_size or DEFAULT_MODEL_PIXEL_SIZE
        try:
            n = box or default_model_box(st[0], apix)
            vol = model_to_map(st, pixel_size=apix, box=n, bfactor=o.get("bfactor"),
                               keep_coordinates=bool(o.get("keep_coordinates", False)))
        except ValueError as e:
            raise InputError(f"{path}: {e}; give a larger --box or a larger --pixel-size.") from None
        s = Structure(vol, float(apix), Path(path).name, pop, "scattering")
    else:
        vol, apix = _map_volume(path, pixel_size=pixel_size, box=box,
                                map_pixel_size=o.get("apix") or o.get("map_pixel_size") or map_pixel_size)
        units = "arbitrary"
        if "mass_kda" in o:
            try:
                vol = calibrate_mass(vol, pixel_size=apix, mass_kda=o["mass_kda"])
            except ValueError as e:
                raise InputError(f"{path}: cannot calibrate by mass ({e}); check the map and mass_kda.") from None
            units = "scattering"
        s = Structure(vol, apix, Path(path).name, pop, units)
    if "name" in o:
        s.name = o["name"]
    return s


def structure_inputs(specs: list[str] | None) -> dict:
    """``Job`` inputs for structure specs: a readable description plus the files, so a project records them as
    input edges (the lineage of a simulation shows which map or model it came from)."""
    specs = list(specs or [])
    files = [p for k, p, _ in map(parse_spec, specs) if k != "phantom" and p.lower() not in BUILTIN_MODELS]
    out: dict = {"structures": ", ".join(specs) if specs else "built-in asymmetric phantom"}
    if files:
        out["structure_files"] = files
    return out


def load_structures(specs: list[str], *, pixel_size: float | None, box: int | None, seed: int = 0,
                    map_pixel_size: float | None = None) -> list[Structure]:
    """Structures for a simulation, all on one grid (pixel size and box).

    Args:
        specs: structure specs (module docstring); empty means ``["phantom"]``.
        pixel_size: Å per voxel of the result (default: the first map's, else the first structure's).
        box: voxels per side (default: the first map's, else the first structure's).
        seed: phantom seed when a phantom spec gives none.
        map_pixel_size: voxel size for maps whose header lacks one (``--map-pixel-size``).

    Raises:
        InputError: missing/unreadable file, non-cubic map, voxel size 0, NaNs,
        bad spec, a model that does not fit, or structures that cannot share a grid.
    """
    specs = list(specs) or ["phantom"]
    # maps first: Fourier resampling fixes their pixel size, models and the phantom follow exactly
    order = sorted(range(len(specs)), key=lambda i: _kind(parse_spec(specs[i])[1]) != "map")
    loaded: dict[int, Structure] = {}
    first: Structure | None = None
    for i in order:
        s = _load_one(specs[i], pixel_size=first.pixel_size if first else pixel_size,
                      box=first.box if first else box, seed=seed, map_pixel_size=map_pixel_size)
        if first is None:
            first = s
        elif abs(s.pixel_size - first.pixel_size) > 0.005 * first.pixel_size:
            raise InputError(f"{parse_spec(specs[i])[1]}: resampled to {s.pixel_size:.4f} Å/px, not the "
                             f"{first.pixel_size:.4f} Å/px of {first.name}; choose a --pixel-size both maps "
                             "reach exactly (their box × voxel size divided by an integer).")
        s.pixel_size = first.pixel_size
        loaded[i] = s
    out = [loaded[i] for i in range(len(specs))]
    if sum(s.population for s in out) <= 0:
        raise InputError("the structures' populations are all 0; give at least one a positive population.")
    return out


def load_morph(spec_a: str, spec_b: str, *, pixel_size: float | None = None, box: int | None = None,
               seed: int = 0, map_pixel_size: float | None = None) -> tuple[Structure, Structure]:
    """The two end states of a continuous morph, on one grid (see :func:`load_structures`)."""
    a, b = load_structures([spec_a, spec_b], pixel_size=pixel_size, box=box, seed=seed,
                           map_pixel_size=map_pixel_size)
    if a.units != b.units:
        raise InputError(f"{b.name}: is on the {b.units} scale but {a.name} on the {a.units} scale; "
                         "give maps a mass (map.mrc:mass_kda=M) so that both are on the scattering scale.")
    return a, b


def load_structure(map_path: str | None, *, pixel_size: float | None, box: int | None,
                   map_pixel_size: float | None = None, seed: int = 0) -> tuple[torch.Tensor, float]:
    """One structure's ``(volume, pixel_size)``; ``map_path=None`` is the phantom (kept for callers).

    The phantom is on the scattering scale (see :func:`phantom_structure`).
    """
    s = load_structures([map_path or "phantom"], pixel_size=pixel_size, box=box, seed=seed,
                        map_pixel_size=map_pixel_size)[0]
    return s.volume, s.pixel_size
