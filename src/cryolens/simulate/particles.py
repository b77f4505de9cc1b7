"""Particle-stack simulator: projections of a map at random poses with CTF and noise.

Image model (RELION's): ``image = ift2(CTF · shift(slice(A), -origin)) + noise``, with
particles white on black (the CTF is positive at low frequency). The noise is white
Gaussian with variance ``signal_variance / snr``, where the signal variance is the
mean per-image variance of noise-free CTF-modulated projections at a pilot set of
256 poses (so the SNR does not depend on the batch size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cryolens.core.ctf import ctf_2d
from cryolens.core.fourier import ift2
from cryolens.core.projector import SliceGrid, prepare_volume, project
from cryolens.core.rotations import matrix_to_euler, random_rotations
from cryolens.particles import ctf_params_from_table, origins_px_from_table, rotations_from_table

__all__ = ["ParticleSimParams", "SimulatedParticles", "simulate_particles", "optics_table"]

Progress = Callable[[int, int], None]


@dataclass
class ParticleSimParams:
    """Options of the particle simulator (units in brackets).

    Attributes:
        n_particles: number of images.
        snr: signal-to-noise variance ratio per image (``inf`` for noise-free).
        defocus_min, defocus_max: range of the mean defocus [Å], uniform.
        astigmatism: maximum |ΔfU - ΔfV| [Å], uniform in [0, astigmatism].
        max_shift: origins uniform in [-max_shift, max_shift] per axis [Å].
        voltage [kV], cs [mm], amplitude_contrast [fraction], bfactor: CTF envelope [Å²],
        phase_shift [degrees].
        ctf: apply the CTF at all (False: pure projections plus noise).
        seed: random seed of poses, CTFs and noise.
        batch_size: images per projection batch (bounds memory).
    """

    n_particles: int = 2000
    snr: float = 0.1
    defocus_min: float = 10000.0
    defocus_max: float = 25000.0
    astigmatism: float = 1000.0
    max_shift: float = 4.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0
    phase_shift: float = 0.0
    ctf: bool = True
    seed: int = 0
    batch_size: int = 256

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for impossible values."""
        if self.n_particles < 1:
            raise ValueError("n_particles must be at least 1")
        if not self.snr > 0:
            raise ValueError("snr must be positive (use inf for noise-free images)")
        if self.defocus_max < self.defocus_min:
            raise ValueError("defocus_max must not be smaller than defocus_min")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@dataclass
class SimulatedParticles:
    """The simulated metadata (RELION 3.1 columns, ground truth) and a batch iterator of images."""

    optics: pd.DataFrame
    particles: pd.DataFrame
    noise_sigma: float
    batches: Iterator[tuple[int, np.ndarray]]


def optics_table(params: ParticleSimParams, *, pixel_size: float, box: int) -> pd.DataFrame:
    """One RELION 3.1 optics group describing the simulated stack."""
    return pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnVoltage": [params.voltage], "rlnSphericalAberration": [params.cs],
        "rlnAmplitudeContrast": [params.amplitude_contrast], "rlnImagePixelSize": [pixel_size],
        "rlnImageSize": [box], "rlnImageDimensionality": [2],
    })


def _draw_metadata(params: ParticleSimParams, pixel_size: float, gen: torch.Generator) -> pd.DataFrame:
    n = params.n_particles
    u = lambda: torch.rand(n, generator=gen, dtype=torch.float64).numpy()  # noqa: E731
    rot, tilt, psi = (a.double().numpy() for a in matrix_to_euler(random_rotations(n, generator=gen, dtype=torch.float64)))
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
    return df


def _clean_images(fvol, df: pd.DataFrame, params: ParticleSimParams, optics: pd.DataFrame,
                  grid: SliceGrid, device) -> torch.Tensor:
    """Noise-free CTF-modulated images ``(B, n, n)`` for the rows of ``df``."""
    merged = df.assign(**{c: optics[c].iloc[0] for c in optics.columns if c != "rlnOpticsGroup"})
    f = project(fvol, rotations_from_table(merged, device), origins_px_from_table(merged, device), grid=grid)
    if params.ctf:
        apix = float(optics["rlnImagePixelSize"].iloc[0])
        f = f * ctf_2d(ctf_params_from_table(merged, device), box=fvol.n, pixel_size=apix, device=device)
    return ift2(f, fvol.n)


def simulate_particles(volume: torch.Tensor, *, pixel_size: float, params: ParticleSimParams,
                       device: torch.device | str = "cpu", progress: Progress | None = None) -> SimulatedParticles:
    """Simulate a particle stack from a cubic map.

    Args:
        volume: ``(n, n, n)`` density (protein positive), centre at n//2.
        pixel_size: Å per voxel, also the stack's pixel size.
        params: :class:`ParticleSimParams`.
        device: where projections are computed.
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        :class:`SimulatedParticles`; iterate ``.batches`` to get ``(start, images)``
        with images ``(b, n, n)`` float32 in row order of ``.particles``.
    """
    params.validate()
    device = torch.device(device)
    n = volume.shape[-1]
    gen = torch.Generator().manual_seed(params.seed)
    optics = optics_table(params, pixel_size=pixel_size, box=n)
    df = _draw_metadata(params, pixel_size, gen)
    fvol = prepare_volume(volume.to(device))
    grid = SliceGrid.build(n, device)

    pilot_params = ParticleSimParams(**{**params.__dict__, "n_particles": 256, "seed": params.seed + 1})
    pilot = _draw_metadata(pilot_params, pixel_size, torch.Generator().manual_seed(params.seed + 1))
    signal_var = float(_clean_images(fvol, pilot, params, optics, grid, device).var(dim=(-2, -1)).mean())
    sigma = float(np.sqrt(signal_var / params.snr)) if np.isfinite(params.snr) else 0.0
    noise_gen = torch.Generator(device=device).manual_seed(params.seed + 2)

    def batches() -> Iterator[tuple[int, np.ndarray]]:
        total = len(df)
        for s in range(0, total, params.batch_size):
            rows = df.iloc[s:s + params.batch_size]
            img = _clean_images(fvol, rows, params, optics, grid, device)
            if sigma > 0:
                img = img + sigma * torch.randn(img.shape, generator=noise_gen, device=device)
            if progress is not None:
                progress(min(s + params.batch_size, total), total)
            yield s, img.cpu().numpy().astype(np.float32)

    return SimulatedParticles(optics, df, sigma, batches())
