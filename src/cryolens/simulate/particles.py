"""Particle-stack simulator: projections of one or more maps at chosen poses with CTF and noise.

Image model (RELION's): ``image = ift2(CTF · shift(slice(A), -origin)) + noise``, with
particles white on black (the CTF is positive at low frequency); ``slice`` sums the
map's voxels along the beam (projection in map units × voxels).

Heterogeneity:

* discrete: several structures with populations; each particle's structure is drawn
  with probability ∝ population and recorded as ``rlnClassNumber`` (1-based index);
* continuous: a morph between two maps ``(1 − t)·A + t·B`` with ``t`` uniform in
  [0, 1] per particle, recorded in ``rlnCryolensMorph``. That column is specific to
  cryolens (ground truth only); RELION 3.1 reads such a STAR file, warns
  "will ignore (but maintain) values for the unknown label" and keeps the column.
  As projection is linear, the image is ``(1 − t)·P(A) + t·P(B)`` exactly.

Poses: uniform on SO(3) or preferred orientation (:mod:`cryolens.simulate.poses`).

Junk (``params.junk``, a fraction): empty boxes, ice/aggregate blobs, particles cut by
the box edge and carbon edges replace that fraction of the particles, with the same CTF
and noise (:mod:`cryolens.simulate.junk`; truth in ``rlnCryolensJunk`` and
``rlnCryolensJunkKind``).

Noise, one of:

* ``snr``: white Gaussian noise of variance ``signal_variance / snr``, where the signal
  variance is the mean per-image variance of noise-free CTF-modulated projections at a
  pilot set of 256 particles (so the SNR does not depend on the batch size);
* ``dose`` (e⁻/Å², needs structures on the scattering scale, see
  :mod:`cryolens.simulate.structures`): an ideal counting detector (DQE 1, no MTF)
  behind a weak-phase object in vacuum (no ice). The phase shift of a particle is
  ``φ = γλ·apix·P`` (P the voxel-sum projection of the scattering density, γλ from the
  voltage); the recorded micrograph intensity is ``1 − K·ift(CTF·F(P))`` with
  ``K = 2γλ·apix/√(1 − Q²)`` (weak phase and amplitude object with amplitude contrast
  ``Q``, whose RELION CTF is ``−sin(χ − atan(Q/√(1−Q²)))``; protein dark at low
  resolution, as recorded), and a pixel counts ``Poisson(N₀·(1 − K·ift(CTF·F(P))))``
  electrons with ``N₀ = dose·apix²``. The stack holds the inverted counts, as
  extraction would invert them, rescaled to the units of the noise-free image:
  ``image = (N₀ − counts) / (K·N₀)``. Its expectation is the noise-free image and its
  noise variance ``(1 − K·ift(CTF·F(P))) / (N₀·K²)``, i.e. ``1/(N₀·K²)`` over the
  background. The molecule is in vacuum (no ice, no displaced solvent, no hydrogens
  beyond the model's), so the contrast, and the SNR at a given dose, are higher than
  in real data (the micrograph simulator models the ice).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cryolens.core.ctf import ctf_2d
from cryolens.core.fourier import ift2
from cryolens.core.projector import SliceGrid, prepare_volume, project
from cryolens.core.rotations import matrix_to_euler
from cryolens.particles import ctf_params_from_table, origins_px_from_table, rotations_from_table
from cryolens.simulate.junk import JUNK_KINDS, draw_junk, junk_images
from cryolens.simulate.particle_params import PARTICLE_PRESETS, ParticleSimParams
from cryolens.simulate.poses import sample_rotations
from cryolens.simulate.structures import Structure, relativistic_phase_scale

__all__ = ["ParticleSimParams", "SimulatedParticles", "simulate_particles", "optics_table", "PARTICLE_PRESETS",
           "MORPH_COLUMN"]

Progress = Callable[[int, int], None]

#: cryolens-specific STAR column with each particle's morph parameter t in [0, 1].
MORPH_COLUMN = "rlnCryolensMorph"

@dataclass
class SimulatedParticles:
    """The simulated metadata (RELION 3.1 columns, ground truth) and a batch iterator of images."""

    optics: pd.DataFrame
    particles: pd.DataFrame
    noise_sigma: float
    batches: Iterator[tuple[int, np.ndarray]]
    signal_variance: float = float("nan")
    info: dict = field(default_factory=dict)


def optics_table(params: ParticleSimParams, *, pixel_size: float, box: int) -> pd.DataFrame:
    """One RELION 3.1 optics group describing the simulated stack."""
    return pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnVoltage": [params.voltage], "rlnSphericalAberration": [params.cs],
        "rlnAmplitudeContrast": [params.amplitude_contrast], "rlnImagePixelSize": [pixel_size],
        "rlnImageSize": [box], "rlnImageDimensionality": [2],
    })


def _draw_metadata(params: ParticleSimParams, gen: torch.Generator, *, populations: Sequence[float] = (1.0,),
                   morph: bool = False) -> pd.DataFrame:
    n = params.n_particles
    u = lambda: torch.rand(n, generator=gen, dtype=torch.float64).numpy()  # noqa: E731
    R = sample_rotations(n, generator=gen, distribution=params.pose_distribution,
                         direction=tuple(params.preferred_direction), concentration=params.concentration,
                         uniform_fraction=params.uniform_fraction, dtype=torch.float64)
    rot, tilt, psi = (a.double().numpy() for a in matrix_to_euler(R))
    mean_df = params.defocus_min + (params.defocus_max - params.defocus_min) * u()
    astig = params.astigmatism * u()
    df = pd.DataFrame({
        "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        "rlnOriginXAngst": params.max_shift * (2 * u() - 1),
        "rlnOriginYAngst": params.max_shift * (2 * u() - 1),
        "rlnDefocusU": mean_df + astig / 2, "rlnDefocusV": mean_df - astig / 2,
        "rlnDefocusAngle": 180.0 * u(),
        "rlnPhaseShift": np.full(n, params.phase_shift),
        "rlnCtfBfactor": np.full(n, params.bfactor),
        "rlnOpticsGroup": np.ones(n, dtype=int),
        "rlnClassNumber": np.ones(n, dtype=int),
    })
    if len(populations) > 1:
        w = torch.tensor([float(p) for p in populations], dtype=torch.float64)
        df["rlnClassNumber"] = torch.multinomial(w / w.sum(), n, replacement=True, generator=gen).numpy() + 1
    if morph:
        df[MORPH_COLUMN] = u()
    return df


def _with_optics(df: pd.DataFrame, optics: pd.DataFrame) -> pd.DataFrame:
    return df.assign(**{c: optics[c].iloc[0] for c in optics.columns if c != "rlnOpticsGroup"})


def _clean_images(fvol, df: pd.DataFrame, params: ParticleSimParams, optics: pd.DataFrame,
                  grid: SliceGrid, device) -> torch.Tensor:
    """Noise-free CTF-modulated images ``(B, n, n)`` of one prepared volume for the rows of ``df``."""
    merged = _with_optics(df, optics)
    f = project(fvol, rotations_from_table(merged, device), origins_px_from_table(merged, device), grid=grid)
    if params.ctf:
        apix = float(optics["rlnImagePixelSize"].iloc[0])
        f = f * ctf_2d(ctf_params_from_table(merged, device), box=fvol.n, pixel_size=apix, device=device)
    return ift2(f, fvol.n)


def _mixture_images(fvols: list, df: pd.DataFrame, params: ParticleSimParams, optics: pd.DataFrame,
                    grid: SliceGrid, device, morph: bool) -> torch.Tensor:
    """Noise-free images of a discrete mixture (by rlnClassNumber) or of a morph (by rlnCryolensMorph)."""
    if morph:
        t = torch.tensor(df[MORPH_COLUMN].to_numpy(copy=True), dtype=torch.float32, device=device)[:, None, None]
        return (1 - t) * _clean_images(fvols[0], df, params, optics, grid, device) + \
            t * _clean_images(fvols[1], df, params, optics, grid, device)
    if len(fvols) == 1:
        return _clean_images(fvols[0], df, params, optics, grid, device)
    n = fvols[0].n
    out = torch.zeros((len(df), n, n), device=device)
    cls = df["rlnClassNumber"].to_numpy()
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        out[torch.as_tensor(idx, device=device)] = _clean_images(fvols[c - 1], df.iloc[idx], params, optics,
                                                                 grid, device)
    return out


class _Junk:
    """The junk rows of a simulation and how to draw them (see :mod:`cryolens.simulate.junk`)."""

    def __init__(self, df, params, fvols, pilot, optics, grid, device, is_morph) -> None:
        apix, n = float(optics["rlnImagePixelSize"].iloc[0]), fvols[0].n
        self.gen = torch.Generator().manual_seed(params.seed + 3)
        self.table, self.codes = draw_junk(df, params.junk, box=n, pixel_size=apix, generator=self.gen)
        self.args = (fvols, dataclasses.replace(params, ctf=False), optics, grid, device, is_morph)
        self.ctf, self.apix = params.ctf, apix
        self.peak = float(self.projections(pilot).amax(dim=(-2, -1)).mean())

    def projections(self, rows: pd.DataFrame) -> torch.Tensor:
        """Centred projections without CTF ``(b, n, n)``."""
        return _mixture_images(self.args[0], rows.assign(rlnOriginXAngst=0.0, rlnOriginYAngst=0.0), *self.args[1:])

    def replace(self, img: torch.Tensor, start: int, rows: pd.DataFrame) -> torch.Tensor:
        """``img`` (noise-free images of ``rows``, which begin at row ``start``) with the junk rows replaced."""
        codes = self.codes[start:start + len(rows)]
        sel = np.flatnonzero(codes)
        if not len(sel):
            return img
        jrows = _with_optics(rows.iloc[sel], self.args[2])
        device = img.device
        cut = torch.as_tensor(codes[sel] == 1 + JUNK_KINDS.index("cut"), device=device)[:, None]
        shifts = torch.where(cut, -origins_px_from_table(jrows, device), torch.zeros((), device=device))
        ctf = ctf_params_from_table(jrows, device) if self.ctf else None
        img = img.clone()
        img[torch.as_tensor(sel, device=device)] = junk_images(
            codes[sel], self.projections(rows.iloc[sel]), ctf, pixel_size=self.apix, shifts_px=shifts,
            peak=self.peak, generator=self.gen)
        return img


def _as_structures(volume, structures, morph, pixel_size, units) -> tuple[list[Structure], bool]:
    given = sum(x is not None for x in (volume, structures, morph))
    if given != 1:
        raise ValueError("give exactly one of volume, structures or morph")
    if volume is not None:
        if pixel_size is None:
            raise ValueError("pixel_size is needed with a plain volume")
        return [Structure(volume, float(pixel_size), "map", 1.0, units)], False
    items = list(morph if morph is not None else structures)
    if morph is not None and len(items) != 2:
        raise ValueError("a morph needs exactly two structures")
    if not items:
        raise ValueError("no structures given")
    shapes = {tuple(s.volume.shape) for s in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or len(set(next(iter(shapes)))) != 1:
        raise ValueError(f"all structures must be cubic maps of one box, got {sorted(shapes)}")
    return items, morph is not None


def simulate_particles(volume: torch.Tensor | None = None, *, pixel_size: float | None = None,
                       params: ParticleSimParams, structures: Sequence[Structure] | None = None,
                       morph: tuple[Structure, Structure] | None = None, units: str = "arbitrary",
                       device: torch.device | str = "cpu", progress: Progress | None = None) -> SimulatedParticles:
    """Simulate a particle stack from one map, a discrete mixture, or a morph.

    Args:
        volume: ``(n, n, n)`` density (protein positive), centre at n//2; or ``None`` when
            ``structures`` or ``morph`` is given (exactly one of the three).
        pixel_size: Å per voxel, also the stack's pixel size (default: the structures').
        params: :class:`ParticleSimParams`.
        structures: :class:`Structure` list on one grid; particles are drawn from them with
            probabilities ∝ ``population`` (``rlnClassNumber`` = 1-based index).
        morph: two :class:`Structure` end states; ``t`` uniform per particle in ``rlnCryolensMorph``.
        units: units of a plain ``volume`` (``"scattering"`` allows ``params.dose``).
        device: where projections are computed.
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        :class:`SimulatedParticles`; iterate ``.batches`` to get ``(start, images)``
        with images ``(b, n, n)`` float32 in row order of ``.particles``. ``info`` holds the
        realised class fractions, the per-image SNR (``image_snr``: pilot signal variance over
        background noise variance), with ``dose`` the electrons per pixel and, with junk, the
        number of each junk kind (``junk_counts``).

    Raises:
        ValueError: impossible parameters, or ``dose`` with structures not on the scattering scale.
    """
    params.validate()
    items, is_morph = _as_structures(volume, structures, morph, pixel_size, units)
    device = torch.device(device)
    apix = float(pixel_size if pixel_size is not None else items[0].pixel_size)
    if params.dose is not None and any(s.units != "scattering" for s in items):
        bad = next(s.name for s in items if s.units != "scattering")
        raise ValueError(f"dose-based noise needs structures on the scattering scale, and {bad} is in arbitrary "
                         "units (use an atomic model, the phantom, or give the map's mass as MAP:mass_kda=M)")
    n = items[0].volume.shape[-1]
    populations = [1.0, 1.0] if is_morph else [float(s.population) for s in items]
    if not is_morph and sum(populations) <= 0:
        raise ValueError("the populations must not all be 0")
    gen = torch.Generator().manual_seed(params.seed)
    optics = optics_table(params, pixel_size=apix, box=n)
    pops = populations if not is_morph else (1.0,)
    df = _draw_metadata(params, gen, populations=pops, morph=is_morph)
    fvols = [prepare_volume(s.volume.to(device)) for s in items]
    grid = SliceGrid.build(n, device)

    pilot_params = ParticleSimParams(**{**params.__dict__, "n_particles": 256, "seed": params.seed + 1})
    pilot = _draw_metadata(pilot_params, torch.Generator().manual_seed(params.seed + 1), populations=pops,
                           morph=is_morph)
    signal_var = float(_mixture_images(fvols, pilot, params, optics, grid, device, is_morph)
                       .var(dim=(-2, -1)).mean())
    junk = _Junk(df, params, fvols, pilot, optics, grid, device, is_morph) if params.junk > 0 else None
    if junk is not None:
        df = junk.table
    info: dict = {}
    if junk is not None:
        info["junk_counts"] = {k: int((junk.codes == i + 1).sum()) for i, k in enumerate(JUNK_KINDS)}
    if not is_morph and len(items) > 1:
        counts = np.bincount(df["rlnClassNumber"].to_numpy(), minlength=len(items) + 1)[1:]
        info["class_fractions"] = [float(c) / len(df) for c in counts]
    if params.dose is not None:
        n0 = params.dose * apix ** 2
        # contrast per unit of projected map, K = 2γλ·apix/√(1 − Q²)
        k2 = 2.0 * relativistic_phase_scale(params.voltage) * apix / math.sqrt(1 - params.amplitude_contrast ** 2)
        sigma = 1.0 / (k2 * math.sqrt(n0))
        info.update(electrons_per_pixel=n0, contrast_per_unit=k2)
    else:
        n0 = k2 = 0.0
        sigma = float(np.sqrt(signal_var / params.snr)) if np.isfinite(params.snr) else 0.0
    info["image_snr"] = signal_var / sigma ** 2 if sigma > 0 else float("inf")
    noise_gen = torch.Generator(device=device).manual_seed(params.seed + 2)

    def batches() -> Iterator[tuple[int, np.ndarray]]:
        total = len(df)
        for s in range(0, total, params.batch_size):
            rows = df.iloc[s:s + params.batch_size]
            img = _mixture_images(fvols, rows, params, optics, grid, device, is_morph)
            if junk is not None:
                img = junk.replace(img, s, rows)
            if params.dose is not None:
                expected = (n0 * (1.0 - k2 * img)).clamp_min(0.0)
                counts = torch.poisson(expected, generator=noise_gen)
                img = (n0 - counts) / (k2 * n0)
            elif sigma > 0:
                img = img + sigma * torch.randn(img.shape, generator=noise_gen, device=device)
            if progress is not None:
                progress(min(s + params.batch_size, total), total)
            yield s, img.cpu().numpy().astype(np.float32)

    return SimulatedParticles(optics, df, sigma, batches(), signal_var, info)
