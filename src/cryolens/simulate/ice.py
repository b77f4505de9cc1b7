"""Background of a simulated micrograph: vitreous ice, carbon film, contaminants.

Pure functions (tensors in, tensors out; no file I/O). Everything is expressed as a
*projected scattering density* ``∫ρ dz`` (Å⁻¹, ρ in Å of electron scattering
amplitude per Å³, the scale of :mod:`cryolens.simulate.structures`), which becomes a
phase ``φ = γλ ∫ρ dz`` radians (:func:`cryolens.simulate.structures.relativistic_phase_scale`).
Only fluctuations about the mean matter to the image; the mean is the reference.

Models and numbers (all documented choices):

* Electron scattering factors ``f_e(s)`` of H, C, O: 5-Gaussian fits of International
  Tables C 4.3.2.2 (Peng et al. 1996; gemmi's ``Element.c4322``),
  ``f(s) = Σ a_i exp(-b_i (s/2)²)`` with ``s = 1/d`` in Å⁻¹, f in Å.
* Vitreous (low-density amorphous) ice: 0.0314 molecules/Å³ (0.94 g/cm³), so the mean
  density is ``ρ_ice = 0.0314 · f_H2O(0) = 0.0955 Å⁻²`` (isolated-atom superposition;
  4.57 V mean inner potential).
* Thickness variation: a Gaussian random field with Gaussian correlation (length
  ``correlation`` Å, std ``variation × thickness``), i.e. power spectrum
  ``σ_t² 2π L² exp(-2π² L² s²)``. It is nearly invisible through the CTF except by
  amplitude contrast, as in real micrographs (slow intensity gradients).
* Amorphous-ice structure (the "structural noise" of the solvent): molecules at
  density n in a slab of thickness t have a projected-density power spectrum
  ``P(s) = t n |f_H2O(s)|² S(s)`` (Å⁻², per unit area) with the structure factor
  ``S(s)`` of amorphous ice: small up to the first ring (0.02; LDA ice is nearly
  hyperuniform, so mid-frequency Thon rings come from the particles, as in real
  data), the first diffraction ring at 1/3.7 Å⁻¹ (the "ice ring", q = 1.70 Å⁻¹),
  a trough near 1/2.8 Å⁻¹ and a second maximum near 1/2.1 Å⁻¹, tending to 1.
  Molecules at different depths scatter independently, so the ice's image power
  is the CTF² averaged over the slab's depth (Thon rings of the ice wash out at
  high frequency while its power, and the ice ring, remain; see
  :func:`depth_averaged_ctf2`).
* Carbon film: amorphous carbon (2.0 g/cm³, 0.100 atoms/Å³) of ``thickness`` Å over
  the region outside a circular hole edge (hole radius 6000 Å, the edge crossing the
  micrograph); a sharp (1-pixel) edge; its own structure noise with ``S_C(s)`` that
  rises from 0.2 to 1 by 1/4 Å⁻¹. Its strong mean phase step is kept in the weak-phase
  regime by saturation (see below), and it absorbs (``exp(-t/Λ)``, Λ = 800 Å, so a
  100 Å film is ~20% darker with its amplitude contrast).
* Contaminants: clusters of 1-4 dense ellipsoids (crystalline-ice / ethane blobs) of
  100-300 Å radius; projected thickness ``2√(1 - r²)·c`` per ellipsoid. Thick objects
  violate the weak-phase approximation, so their phase is saturated
  (``φ_sat tanh(φ/φ_sat)``, φ_sat = 0.5 rad) and most of their contrast comes from
  absorption ``exp(-t/Λ)`` with Λ = 800 Å (scattering outside the aperture and energy
  filter), which makes them as dark as in real micrographs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ICE_MOLECULES_PER_A3", "CARBON_ATOMS_PER_A3", "scattering_factor", "water_scattering_factor",
    "ice_density", "ice_structure_factor", "carbon_structure_factor", "ice_structure_psd",
    "thickness_psd", "inelastic_mean_free_path", "depth_averaged_ctf2", "radial_table", "gaussian_field", "field_amplitude", "Blob",
    "draw_contaminants", "render_blobs", "HoleEdge",
    "draw_hole_edge", "hole_edge_mask",
]

#: Molecules of H2O per Å³ in low-density amorphous ice (0.94 g/cm³).
ICE_MOLECULES_PER_A3 = 0.0314
#: Carbon atoms per Å³ in an evaporated amorphous carbon film (2.0 g/cm³).
CARBON_ATOMS_PER_A3 = 0.100
#: Hole radius (Å) of the holey support film whose edge is drawn.
HOLE_RADIUS = 6000.0

# International Tables C 4.3.2.2 electron scattering factors (a_i in Å, b_i in Å²).
_C4322 = {
    "H": ([0.0349, 0.1201, 0.197, 0.0573, 0.1195], [0.5347, 3.5867, 12.3471, 18.9525, 38.6269]),
    "C": ([0.0893, 0.2563, 0.757, 1.0487, 0.3575], [0.2465, 1.71, 6.4094, 18.6113, 50.2523]),
    "O": ([0.0974, 0.2921, 0.691, 0.699, 0.2039], [0.2067, 1.3815, 4.6943, 12.7105, 32.4726]),
}


def scattering_factor(element: str, s: torch.Tensor) -> torch.Tensor:
    """Electron scattering factor (Å) of a neutral atom at spatial frequency ``s`` = 1/d (Å⁻¹)."""
    a, b = _C4322[element]
    q2 = (s / 2) ** 2
    return sum(ai * torch.exp(-bi * q2) for ai, bi in zip(a, b))


def water_scattering_factor(s: torch.Tensor) -> torch.Tensor:
    """``f_O + 2 f_H`` (Å): one water molecule as independent atoms."""
    return scattering_factor("O", s) + 2 * scattering_factor("H", s)


def ice_density() -> float:
    """Mean projected-density per Å of vitreous ice, ``n f_H2O(0)`` (Å⁻²)."""
    return ICE_MOLECULES_PER_A3 * float(water_scattering_factor(torch.zeros(())))


def _gauss(s: torch.Tensor, centre: float, width: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((s - centre) / width) ** 2)


def ice_structure_factor(s: torch.Tensor, *, ring_height: float = 2.2) -> torch.Tensor:
    """Structure factor S(s) of low-density amorphous ice (see the module docstring).

    ``S0 = 0.02`` below the first ring (LDA ice is nearly hyperuniform), a sharp first
    ring of ``ring_height`` at 1/3.7 Å⁻¹ (σ 0.017 Å⁻¹), a step to 1 just after it, a
    trough near 1/2.8 Å⁻¹ and a weak second ring near 1/2.1 Å⁻¹.
    """
    step = torch.sigmoid((s - 0.29) / 0.015)
    return (0.02 + 0.98 * step + ring_height * _gauss(s, 1 / 3.7, 0.017) - 0.4 * _gauss(s, 0.36, 0.03)
            + 0.3 * _gauss(s, 1 / 2.1, 0.04))


def carbon_structure_factor(s: torch.Tensor) -> torch.Tensor:
    """Structure factor of amorphous carbon: 0.2 at s → 0 rising to 1 (peak near 1/2.1 Å⁻¹)."""
    return 1.0 - 0.8 * torch.exp(-((s / 0.25) ** 2)) + 0.4 * _gauss(s, 1 / 2.1, 0.05)


def ice_structure_psd(s: torch.Tensor, *, thickness: float, ring_height: float = 2.2) -> torch.Tensor:
    """Power spectrum of the projected density of an amorphous-ice slab, Å⁻² (per unit area)."""
    f = water_scattering_factor(s)
    return thickness * ICE_MOLECULES_PER_A3 * f * f * ice_structure_factor(s, ring_height=ring_height)


def carbon_structure_psd(s: torch.Tensor, *, thickness: float) -> torch.Tensor:
    """Power spectrum of the projected density of an amorphous-carbon film, Å⁻²."""
    f = scattering_factor("C", s)
    return thickness * CARBON_ATOMS_PER_A3 * f * f * carbon_structure_factor(s)


def inelastic_mean_free_path(voltage_kv: float) -> float:
    """Inelastic mean free path of vitreous ice (Å): 3500 Å at 300 kV, scaled by β² (v²/c²) at other voltages."""
    def beta2(kv: float) -> float:
        gamma = 1 + kv / 510.99895
        return 1 - 1 / gamma ** 2
    return 3500.0 * beta2(voltage_kv) / beta2(300.0)


def depth_averaged_ctf2(chi: torch.Tensor, s2: torch.Tensor, *, wavelength: float, thickness: float) -> torch.Tensor:
    """``<sin²(χ - πλ z s²)>`` over depths z uniform in a slab of ``thickness`` Å centred on the focus plane.

    ``= 1/2 - 1/2 cos(2χ) sin(aT)/(aT)`` with ``a = πλ s²`` (χ and s² on the same grid).
    """
    a_t = math.pi * wavelength * s2 * thickness
    return 0.5 - 0.5 * torch.cos(2 * chi) * torch.sinc(a_t / math.pi)


def radial_table(fn, s: torch.Tensor, *, samples: int = 4096) -> torch.Tensor:
    """Evaluate a radial function ``fn(s)`` on a fine 1-D grid and interpolate it at ``s`` (fast on big grids)."""
    s_max = float(s.max()) * 1.0001 + 1e-9
    grid = torch.linspace(0, s_max, samples, device=s.device)
    table = fn(grid)
    x = s / s_max * (samples - 1)
    i = x.floor().long().clamp(0, samples - 2)
    w = x - i
    return table[i] * (1 - w) + table[i + 1] * w


def thickness_psd(s: torch.Tensor, *, std: float, correlation: float) -> torch.Tensor:
    """Power spectrum (Å⁴) of a Gaussian-correlated thickness field of ``std`` Å, length ``correlation`` Å."""
    return std * std * 2 * math.pi * correlation ** 2 * torch.exp(-2 * math.pi ** 2 * correlation ** 2 * s * s)


def gaussian_field(psd: torch.Tensor, shape: tuple[int, int], *, pixel_size: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Fourier coefficients (rfft layout ``(H, W//2+1)``) of a real Gaussian random field.

    Args:
        psd: continuous power spectrum on the rfft grid of ``shape`` (units² · Å²).
        shape: ``(H, W)`` of the real field; pixel_size in Å.

    ``torch.fft.irfft2(result, s=shape)`` has, per pixel, the variance ``∫ psd d²s``.
    """
    amp = field_amplitude(psd, shape, pixel_size=pixel_size)
    return torch.randn(psd.shape, dtype=torch.complex64, generator=generator, device=psd.device) * amp


def field_amplitude(psd: torch.Tensor, shape: tuple[int, int], *, pixel_size: float) -> torch.Tensor:
    """Per-coefficient amplitude ``sqrt(psd · H W / pixel_size²)`` that :func:`gaussian_field` multiplies
    unit complex normal numbers by (reusable across fields with the same spectrum)."""
    h, w = shape
    return torch.sqrt(psd.clamp_min(0) * (h * w / pixel_size ** 2))


@dataclass
class Blob:
    """An ellipsoidal contaminant: centre ``(x, y)`` px, semi-axes ``(a, b)`` px, angle rad, depth Å."""

    x: float
    y: float
    a: float
    b: float
    angle: float
    depth: float


def draw_contaminants(n: int, shape: tuple[int, int], *, pixel_size: float,
                      rng: np.random.Generator) -> list[Blob]:
    """``n`` contaminant clusters of 1-4 ellipsoids (radius 100-300 Å) at random places."""
    h, w = shape
    blobs = []
    for _ in range(n):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        for j in range(int(rng.integers(1, 5))):
            r = rng.uniform(100.0, 300.0) / pixel_size
            off = rng.normal(scale=0.8 * r, size=2) if j else np.zeros(2)
            blobs.append(Blob(float(cx + off[0]), float(cy + off[1]), float(r), float(r * rng.uniform(0.6, 1.0)),
                              float(rng.uniform(0, math.pi)), float(2 * r * pixel_size * rng.uniform(0.7, 1.2))))
    return blobs


def render_blobs(blobs: list[Blob], shape: tuple[int, int], *, offset: tuple[int, int] = (0, 0),
                 device=None) -> torch.Tensor:
    """Projected thickness (Å) of ellipsoids on an ``(H, W)`` canvas whose pixel (0, 0) is ``-offset``.

    Each blob is rendered in its bounding window (a loop over blobs, a handful per image).
    """
    h, w = shape
    out = torch.zeros((h, w), device=device)
    oy, ox = offset
    for b in blobs:
        r = max(b.a, b.b) + 1
        x0, x1 = max(0, int(b.x + ox - r)), min(w, int(b.x + ox + r) + 2)
        y0, y1 = max(0, int(b.y + oy - r)), min(h, int(b.y + oy + r) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        yy = torch.arange(y0, y1, device=device, dtype=torch.float32)[:, None] - (b.y + oy)
        xx = torch.arange(x0, x1, device=device, dtype=torch.float32)[None, :] - (b.x + ox)
        c, s = math.cos(b.angle), math.sin(b.angle)
        u, v = (c * xx + s * yy) / b.a, (-s * xx + c * yy) / b.b
        out[y0:y1, x0:x1] += b.depth * torch.sqrt((1 - u * u - v * v).clamp_min(0))
    return out


@dataclass
class HoleEdge:
    """A circular hole in the carbon film: centre ``(x, y)`` px and radius px; carbon lies outside."""

    x: float
    y: float
    radius: float

    def on_carbon(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x - self.x) ** 2 + (y - self.y) ** 2 > self.radius ** 2


def draw_hole_edge(shape: tuple[int, int], *, pixel_size: float, rng: np.random.Generator) -> HoleEdge:
    """A hole edge crossing the micrograph, carbon covering ~10-35% of it."""
    h, w = shape
    radius = HOLE_RADIUS / pixel_size
    theta = rng.uniform(0, 2 * math.pi)
    # distance from the micrograph centre to the edge along theta: 15-40% of the half-diagonal
    d = rng.uniform(0.15, 0.4) * 0.5 * math.hypot(h, w)
    cx = w / 2 - (radius - d) * math.cos(theta)
    cy = h / 2 - (radius - d) * math.sin(theta)
    return HoleEdge(float(cx), float(cy), float(radius))


def hole_edge_mask(edge: HoleEdge, shape: tuple[int, int], *, offset: tuple[int, int] = (0, 0),
                   device=None) -> torch.Tensor:
    """Carbon mask (1 on carbon) on a canvas whose pixel (0, 0) is ``-offset``, 1-px linear edge."""
    h, w = shape
    yy = torch.arange(h, device=device, dtype=torch.float32)[:, None] - (edge.y + offset[0])
    xx = torch.arange(w, device=device, dtype=torch.float32)[None, :] - (edge.x + offset[1])
    r = torch.sqrt(xx * xx + yy * yy)
    return (r - edge.radius + 0.5).clamp(0, 1)
