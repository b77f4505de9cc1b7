"""The specimen of a simulated micrograph: structures relative to ice, their placement and projection.

Pure functions (no file I/O). See :mod:`cryolens.simulate.micrographs` (points 1-3 of
its docstring) for the physics: the scattering density relative to the displaced ice,
non-overlapping placement by dart throwing, batched projections pasted with
``index_add_``, and the exposure-averaged radiation damage of the particles.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from cryolens.core.ctf import CTFParams, ctf_2d
from cryolens.core.dose import critical_exposure
from cryolens.core.fourier import ft2, ft3, ift2, ift3, radius_3d
from cryolens.core.projector import FourierVolume, SliceGrid, prepare_volume, project
from cryolens.simulate import ice as icemod
from cryolens.simulate.structures import SCATTERING_PER_DALTON

__all__ = ["PROTEIN_DENSITY", "PreparedStructure", "prepare_structure", "prepared_structures", "place_particles",
           "draw_aggregates", "radiation_damage", "paste", "paste_projections", "paste_ctf_particles"]

#: Protein scattering density without hydrogens, Å⁻² (0.1646 Å/Da over 1.23 Å³/Da).
PROTEIN_DENSITY = SCATTERING_PER_DALTON / 1.23


@dataclass
class PreparedStructure:
    """A structure ready for projection: Δρ (relative to ice, Å⁻²) in Fourier form, and its size."""

    fvol: FourierVolume
    grid: SliceGrid
    diameter: float  # Å
    n: int


def _lowpass3(vol: torch.Tensor, pixel_size: float, resolution: float) -> torch.Tensor:
    n = vol.shape[-1]
    s = radius_3d(n, device=vol.device) / (n * pixel_size)
    sigma_s = 1.0 / resolution  # Gaussian low-pass with 1/e² amplitude at 1/resolution
    return ift3(ft3(vol) * torch.exp(-2 * (s / sigma_s) ** 2), n)


def prepare_structure(volume: torch.Tensor, *, pixel_size: float, units: str = "scattering",
                      hydrogen_factor: float = 1.0, device=None) -> PreparedStructure:
    """Δρ = ρ·h − ρ_ice·envelope of a cubic map, Fourier-prepared for projection (module docstring, 1.)."""
    v = volume.to(device=device, dtype=torch.float32)
    n = v.shape[-1]
    lp = _lowpass3(v, pixel_size, max(8.0, 3 * pixel_size))
    if units == "scattering":
        mass = float(v.sum()) * pixel_size ** 3 / SCATTERING_PER_DALTON  # Da
        k = int(np.clip(round(1.23 * mass / pixel_size ** 3), 1, v.numel()))
        thr = torch.topk(lp.reshape(-1), k).values[-1]
        env = lp >= thr
        rho = v * hydrogen_factor
    else:
        env = lp > 0.2 * lp.max()
        rho = v * (PROTEIN_DENSITY / float(v[env].mean().clamp_min(1e-12))) * hydrogen_factor
    envf = _lowpass3(env.float(), pixel_size, 2 * pixel_size).clamp(0, 1)
    delta = rho - icemod.ice_density() * envf
    z, y, x = torch.nonzero(env, as_tuple=True)
    r = torch.sqrt(((torch.stack([z, y, x], 1).float() - n // 2) ** 2).sum(1)).max() if len(z) else torch.tensor(1.0)
    diameter = float(2 * (r + 1) * pixel_size)
    return PreparedStructure(prepare_volume(delta), SliceGrid.build(n, v.device), diameter, n)


_CACHE: dict[int, tuple] = {}  # id(tensor) -> (weakref, key, PreparedStructure); at most 8 entries


def prepared_structures(structures, *, pixel_size: float, units: str, hydrogen_factor: float,
                        device) -> list[PreparedStructure]:
    """Prepare (or reuse, for unchanged tensors) each structure; accepts tensors or Structure objects.

    ``units`` applies to bare tensors; a Structure carries its own ``.units``.
    """
    out = []
    for s in structures:
        vol = getattr(s, "volume", s)
        u = getattr(s, "units", units)
        key = (vol._version, str(device), float(pixel_size), u, hydrogen_factor)
        hit = _CACHE.get(id(vol))
        if hit is None or hit[0]() is not vol or hit[1] != key:
            prep = prepare_structure(vol, pixel_size=pixel_size, units=u, hydrogen_factor=hydrogen_factor,
                                     device=device)
            for dead in [k for k, v in _CACHE.items() if v[0]() is None]:
                del _CACHE[dead]
            while len(_CACHE) >= 8:
                del _CACHE[next(iter(_CACHE))]
            hit = (weakref.ref(vol), key, prep)
            _CACHE[id(vol)] = hit
        out.append(hit[2])
    return out


def place_particles(n: int, *, width: int, height: int, min_distance: float, margin: float,
                    rng: np.random.Generator, forbidden=None, tries: int = 30) -> np.ndarray:
    """Dart throwing: up to ``n`` centres ``(K, 2)`` (x, y) px, pairwise ≥ ``min_distance`` px apart.

    ``forbidden(x, y) -> bool array`` rejects candidates (carbon, contaminants).
    Candidates are drawn in vectorised rounds; acceptance is greedy in draw order.
    """
    lo_x, hi_x, lo_y, hi_y = margin, width - 1 - margin, margin, height - 1 - margin
    if n == 0 or hi_x < lo_x or hi_y < lo_y:
        return np.zeros((0, 2))
    acc = np.zeros((0, 2))
    d2 = min_distance ** 2
    for _ in range(tries):
        m = max(4 * (n - len(acc)), 64)
        cand = np.column_stack([rng.uniform(lo_x, hi_x, m), rng.uniform(lo_y, hi_y, m)])
        if forbidden is not None:
            cand = cand[~forbidden(cand[:, 0], cand[:, 1])]
        for c in cand:  # greedy; each test is vectorised over the accepted set
            if len(acc) >= n:
                return acc
            if len(acc) == 0 or ((acc - c) ** 2).sum(1).min() >= d2:
                acc = np.vstack([acc, c])
    return acc


def paste(canvas: torch.Tensor, boxes: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor) -> None:
    """Add ``boxes (B, m, m)`` into ``canvas (H, W)`` with top-left corners ``(y0, x0)`` (index_add)."""
    h, w = canvas.shape
    m = boxes.shape[-1]
    ar = torch.arange(m, device=canvas.device)
    idx = (y0[:, None, None] + ar[None, :, None]) * w + (x0[:, None, None] + ar[None, None, :])
    canvas.view(-1).index_add_(0, idx.reshape(-1), boxes.reshape(-1).to(canvas.dtype))


def radiation_damage(s: torch.Tensor, *, dose: float, voltage: float, start: float = 0.0) -> torch.Tensor:
    """Mean amplitude of protein signal exposed from ``start`` to ``dose`` e⁻/Å² at frequency ``s`` (1/Å).

    Grant & Grigorieff (2015): critical exposure ``N_e(s) = 0.245 s^-1.665 + 2.81`` e⁻/Å² at
    300 kV (:func:`cryolens.core.dose.critical_exposure`), scaled below 300 kV by a factor
    interpolated linearly from 1 at 300 kV to 0.8 at 200 kV and held at 0.8 below (unlike
    :func:`cryolens.core.dose.voltage_factor`, which takes 0.64 at 100 kV); amplitude
    ``exp(-N/(2 N_e))`` averaged over N in [start, dose].
    """
    ne = critical_exposure(s.clamp_min(1e-4), 300.0)
    if voltage < 300:
        ne = ne * (0.8 + 0.2 * (voltage - 200.0) / 100.0) if voltage >= 200 else ne * 0.8
    width = max(dose - start, 1e-9)
    return (2 * ne / width) * (torch.exp(-start / (2 * ne)) - torch.exp(-dose / (2 * ne)))


def _projections(prep: PreparedStructure, rot: torch.Tensor, xy: np.ndarray, *, pixel_size: float,
                 batch_size: int, damage=None):
    """Yield ``(rows, boxes (b, n, n) of ∫Δρ dz in Å⁻¹, integer centres (b, 2) as (x, y))`` per batch.

    Sub-pixel positions are an origin shift of the projection (content moved by the fraction);
    ``damage(s)`` (a radial amplitude factor) multiplies the projections' transforms.
    """
    dev = rot.device
    filt = None
    if damage is not None:
        n = prep.n
        ky = torch.fft.fftfreq(n, d=pixel_size, device=dev)[:, None]
        kx = torch.fft.rfftfreq(n, d=pixel_size, device=dev)[None, :]
        filt = damage(torch.sqrt(kx * kx + ky * ky))
    for s in range(0, len(xy), batch_size):
        sl = slice(s, s + batch_size)
        pos = torch.as_tensor(xy[sl], dtype=torch.float64, device=dev)
        ipos = torch.round(pos)
        frac = (pos - ipos).float()
        f = project(prep.fvol, rot[sl], -frac, grid=prep.grid)
        img = ift2(f if filt is None else f * filt, prep.n) * pixel_size
        yield sl, img, ipos.long()


def paste_projections(prep, rot, xy, *, pixel_size, canvas, offset, batch_size, damage) -> None:
    """Untilted micrographs: paste the particles' projected density on the canvas (CTF applied globally)."""
    n = prep.n
    for _, img, ipos in _projections(prep, rot, xy, pixel_size=pixel_size, batch_size=batch_size, damage=damage):
        paste(canvas, img, ipos[:, 1] + offset - n // 2, ipos[:, 0] + offset - n // 2)


def paste_ctf_particles(prep, rot, xy, dfu, dfv, ctf, *, pixel_size, gain, box, canvas, offset,
                        batch_size, damage) -> None:
    """Tilted micrographs: each projection gets the CTF at its own defocus in a box padded by the
    CTF's delocalisation (nothing wraps or is cut), then its contrast is pasted."""
    dev = canvas.device
    n = prep.n
    o = box // 2 - n // 2
    for sl, img, ipos in _projections(prep, rot, xy, pixel_size=pixel_size, batch_size=batch_size, damage=damage):
        padded = torch.zeros((img.shape[0], box, box), device=dev)
        padded[:, o:o + n, o:o + n] = img
        cp = CTFParams(defocus_u=torch.as_tensor(dfu[sl], dtype=torch.float32, device=dev),
                       defocus_v=torch.as_tensor(dfv[sl], dtype=torch.float32, device=dev),
                       defocus_angle=ctf["defocus_angle"], voltage=ctf["voltage"], cs=ctf["cs"],
                       amplitude_contrast=ctf["amplitude_contrast"], bfactor=ctf["bfactor"])
        c = ift2(ft2(padded) * ctf_2d(cp, box=box, pixel_size=pixel_size, device=dev), box) * gain
        paste(canvas, c, ipos[:, 1] + offset - box // 2, ipos[:, 0] + offset - box // 2)


def draw_aggregates(n: int, *, width: int, height: int, diameter_px: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` clusters of 4-12 particle centres ~0.7 diameters apart (overlapping junk)."""
    out = []
    for _ in range(n):
        c = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])
        k = int(rng.integers(4, 13))
        pts = [c]
        while len(pts) < k:
            p = pts[int(rng.integers(len(pts)))] + rng.normal(size=2) * 0.7 * diameter_px
            pts.append(p)
        out.append(np.clip(np.array(pts), 0, [width - 1, height - 1]))
    return out
