"""Options of the particle simulator, each declared once; light to import (the CLI reads them at start-up)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from cryolens.params import Params, option
from cryolens.simulate.poses import POSE_DISTRIBUTIONS

__all__ = ["ParticleSimParams", "StackGeometry", "PARTICLE_PRESETS"]

#: Named option sets of ``cryolens simulate particles --preset``. Keys are
#: :class:`ParticleSimParams` fields plus ``pixel_size`` (Å), ``box`` (px) and
#: ``structures`` (specs); options given explicitly override them.
PARTICLE_PRESETS: dict[str, dict] = {
    # quick to simulate and to refine on a laptop
    "tutorial": {"n_particles": 1500, "box": 96, "pixel_size": 1.75, "structures": ["phantom"], "snr": 0.05,
                 "defocus_min": 8000.0, "defocus_max": 25000.0},
    # acquisition like EMPIAR-10291: box 180 at 1.232 Å/px, 300 kV
    "benchmark": {"n_particles": 10000, "box": 180, "pixel_size": 1.232, "structures": ["phantom"],
                  "voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1, "snr": 0.05,
                  "defocus_min": 5000.0, "defocus_max": 25000.0, "astigmatism": 1000.0, "max_shift": 5.0},
}


@dataclass
class ParticleSimParams(Params):
    """Options of the particle simulator, each declared once (flag, help, unit, default, bounds).

    ``snr`` is the signal-to-noise variance ratio per image (``inf``: noise-free), unused with
    ``dose`` (electrons per Å², Poisson noise of an ideal counting detector). ``pose_distribution``
    ``"preferred"`` draws von Mises-Fisher viewing directions (:func:`sample_rotations`).
    ``PRESETS`` also name ``pixel_size``, ``box`` and ``structures``, which the job takes apart.
    """

    PRESETS: ClassVar[Mapping[str, Mapping]] = PARTICLE_PRESETS
    PRESETS_HELP: ClassVar[str] = ("Option set: tutorial (1 500 phantom particles, box 96, 1.75 Å/px, SNR 0.05) or "
                                   "benchmark (EMPIAR-10291-like: box 180, 1.232 Å/px, 300 kV, 10 000 particles). "
                                   "Explicit options override it.")

    n_particles: int = option(2000, flag="--n", ge=1, help="Number of particles")
    snr: float | None = option(0.1, gt=0, help="Signal-to-noise variance ratio per image; 'inf' for no noise")
    defocus_min: float = option(10000.0, flag="--defocus", join=("defocus_max",), unit="Å", gt=0,
                                metavar="MIN MAX", help="Mean defocus range MIN MAX (underfocus positive)")
    defocus_max: float = option(25000.0, cli=False, unit="Å", gt=0, help="Largest mean defocus")
    astigmatism: float = option(1000.0, unit="Å", ge=0, help="Maximum |defocusU - defocusV|")
    max_shift: float = option(4.0, unit="Å", ge=0, help="Origins uniform within ±this per axis")
    voltage: float = option(300.0, unit="kV", gt=0, le=3000, help="Acceleration voltage")
    cs: float = option(2.7, unit="mm", ge=0, lt=100, help="Spherical aberration")
    amplitude_contrast: float = option(0.1, ge=0, lt=1, help="Amplitude contrast fraction")
    bfactor: float = option(0.0, unit="Å²", ge=0, help="CTF envelope B-factor")
    phase_shift: float = option(0.0, unit="°", help="Phase-plate phase shift")
    ctf: bool = option(True, help="Apply the CTF (--no-ctf: pure projections plus noise)")
    seed: int = option(0, help="Random seed (poses, classes, CTFs, noise)")
    batch_size: int = option(256, ge=1, help="Images per batch (bounds memory)")
    dose: float | None = option(None, unit="e⁻/Å²", gt=0, rule=(math.isfinite, "finite"),
                                help="Instead of --snr: electron dose, Poisson counting noise of a weak-phase "
                                     "object in vacuum; needs a model, the phantom, or a map with mass_kda")
    pose_distribution: str = option("uniform", choices=POSE_DISTRIBUTIONS,
                                    help="uniform, or preferred (von Mises-Fisher viewing directions); preferred "
                                         "is implied by --concentration/--preferred-direction")
    preferred_direction: tuple[float, float, float] = option(
        (0.0, 0.0, 1.0), metavar="X Y Z", rule=(lambda v: any(abs(float(c)) > 0 for c in v), "not all 0"),
        help="Preferred viewing direction X Y Z in the map's frame")
    concentration: float = option(0.0, ge=0, help="von Mises-Fisher concentration κ of the viewing direction "
                                                  "(0 uniform; 10 ≈ 25° spread)")
    uniform_fraction: float = option(0.0, ge=0, le=1, help="Fraction of particles with uniform viewing directions")
    junk: float = option(0.0, ge=0, le=1, help="Fraction of particles replaced by junk of four kinds in equal "
                                                "numbers (empty boxes, ice/aggregate blobs, particles cut by the box "
                                                "edge, carbon edges) with the same CTF and noise; the truth is in "
                                                "rlnCryolensJunk (1 junk, 0 good) and rlnCryolensJunkKind")

    def check(self) -> None:
        """Noise from --snr or --dose; the defocus range in order."""
        if self.dose is None and self.snr is None:
            raise ValueError("--snr: give a positive signal-to-noise ratio (inf for noise-free images) or --dose")
        if self.defocus_max < self.defocus_min:
            raise ValueError(f"--defocus {self.defocus_min:g} {self.defocus_max:g}: give MIN MAX with MIN <= MAX (Å)")


@dataclass
class StackGeometry(Params):
    """The simulated stack's grid (the job resamples the structures to it); None: the first structure's."""

    pixel_size: float | None = option(None, unit="Å", gt=0, help="Stack pixel size; maps are Fourier-resampled. "
                                                                "Default: the first structure's (phantom 2, model 1)")
    box: int | None = option(None, unit="px", ge=8, le=1024, help="Stack box; maps are padded/cropped. Default: the first "
                                                         "structure's (phantom 64)")
    map_pixel_size: float | None = option(None, unit="Å", gt=0, help="Override the maps' header voxel size")
