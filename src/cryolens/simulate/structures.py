"""Structures for the simulators: atomic models as density maps, the phantom, morphs.

Pure functions on in-memory objects (a ``gemmi.Structure`` read by the job layer,
tensors); no file I/O.

Units of a density map (``Structure.units``):

* ``"scattering"``: electron scattering-factor density ρ in Å⁻² (Å of scattering
  amplitude per Å³). :func:`model_to_map` renders every atom as the Fourier
  transform of its electron scattering factor ``f_e(s)`` (gemmi's
  ``DensityCalculatorE``, the 5-Gaussian fits of International Tables C 4.3.2.2,
  Peng 1998) smeared by its isotropic B-factor, times its occupancy. So
  ``∫ρ d³r = Σ_atoms occ · f_e(0)`` (f_e(0) in Å: C 2.51, N 2.21, O 1.98, S 5.16,
  Fe 7.16, H 0.53), i.e. ``volume.sum() · pixel_size³``. The electrostatic
  potential is ``V = 47.878 V·Å² · ρ`` (h²/(2π m₀ e)), and the phase an electron of
  wavelength λ picks up crossing it is ``φ = γ λ ∫ρ dz`` radians (γ the relativistic
  mass factor). There is no solvent: the map is the molecule in vacuum.
* ``"arbitrary"``: an MRC map in its own units. :func:`calibrate_mass` puts it on
  the scattering scale from a molecular mass, using :data:`SCATTERING_PER_DALTON`.

Centring: a model's centre of mass (atomic masses) goes to voxel ``n//2`` of the
box (the box centre convention), unless ``keep_coordinates`` is set; then the
model's deposited coordinates are used as they are (voxel i at ``i·pixel_size`` Å,
as for an EMDB map with origin 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryolens.core.fourier import fourier_resize
from cryolens.simulate.phantom import asymmetric_phantom

__all__ = [
    "SCATTERING_PER_DALTON", "Structure", "model_to_map", "model_center_of_mass", "model_scattering_power",
    "default_model_box", "phantom_structure", "calibrate_mass", "morph_volume", "relativistic_phase_scale",
]

#: Σ f_e(0) of a protein model's non-hydrogen atoms per dalton of the molecule's mass
#: (hydrogens included in the mass, not in the model, as deposited models are), in Å/Da.
#: Measured on PDB 5ME2 (haemoglobin): 10 619 Å over 63.4 kDa of modelled residues and
#: hemes (polymer alone: 0.1672). Puts the phantom and mass-calibrated maps on the
#: scale of model maps.
SCATTERING_PER_DALTON = 0.1675

#: Mass of an average residue (Da), used for the phantom (one Gaussian per residue).
_DALTON_PER_RESIDUE = 110.0


@dataclass
class Structure:
    """A density map to simulate from.

    Attributes:
        volume: ``(n, n, n)`` float32 density, protein positive, centre at ``n//2``.
        pixel_size: Å per voxel.
        name: a label (file name or ``"phantom"``) for logs and reports.
        population: relative weight in a discrete mixture (normalised by the simulator).
        units: ``"scattering"`` (electron scattering-factor density, Å⁻², see the module
            docstring) or ``"arbitrary"``.
    """

    volume: torch.Tensor
    pixel_size: float
    name: str
    population: float = 1.0
    units: str = "arbitrary"

    @property
    def box(self) -> int:
        return int(self.volume.shape[-1])


def relativistic_phase_scale(voltage_kv: float) -> float:
    """``γ·λ`` in Å: the phase (radians) per unit of projected scattering density ``∫ρ dz`` (Å⁻¹)."""
    v = voltage_kv * 1e3
    wavelength = 12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v))
    gamma = 1.0 + v / 510998.95
    return gamma * wavelength


def _atoms(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions ``(A, 3)`` Å, masses ``(A,)`` Da and ``occ·f_e(0)`` ``(A,)`` of a gemmi Model."""
    pos, mass, fe = [], [], []
    for chain in model:
        for res in chain:
            for at in res:
                p = at.pos
                pos.append((p.x, p.y, p.z))
                mass.append(at.element.weight * at.occ)
                fe.append(at.occ * float(sum(at.element.c4322.a)))
    return np.asarray(pos, dtype=np.float64).reshape(-1, 3), np.asarray(mass), np.asarray(fe)


def model_center_of_mass(model) -> np.ndarray:
    """Centre of mass ``(x, y, z)`` Å of a ``gemmi.Model`` (occupancy-weighted atomic masses)."""
    pos, mass, _ = _atoms(model)
    if len(pos) == 0:
        raise ValueError("the model contains no atoms")
    return (pos * mass[:, None]).sum(0) / mass.sum()


def model_scattering_power(model) -> float:
    """``Σ occ · f_e(0)`` in Å: what the map of :func:`model_to_map` integrates to."""
    return float(_atoms(model)[2].sum())


def default_model_box(model, pixel_size: float) -> int:
    """An even box (voxels) of 1.5× the model's diameter about its centre of mass, at least 32."""
    pos, _, _ = _atoms(model)
    if len(pos) == 0:
        raise ValueError("the model contains no atoms")
    radius = float(np.linalg.norm(pos - model_center_of_mass(model), axis=1).max()) + 2.0
    n = int(math.ceil(1.5 * 2 * radius / pixel_size))
    return max(32, n + (n % 2))


def model_to_map(structure, *, pixel_size: float, box: int | None = None, bfactor: float | None = None,
                 keep_coordinates: bool = False, oversample: int | None = None) -> torch.Tensor:
    """Electron scattering-factor density of an atomic model on a cubic grid (gemmi).

    Args:
        structure: a ``gemmi.Structure`` (its first model is used; not modified).
        pixel_size: Å per voxel of the result.
        box: voxels per side (default :func:`default_model_box`).
        bfactor: if given, replaces every atom's B-factor (Å²); else the model's own.
        keep_coordinates: use the deposited coordinates (voxel i at i·pixel_size Å)
            instead of moving the centre of mass to voxel ``box//2``.
        oversample: render on a grid this many times finer and Fourier-crop to ``box``
            (anti-aliasing of sharp atoms on coarse pixels). Default: ``ceil(pixel_size/0.75 Å)``,
            at most 4 and at most a 400³ fine grid.

    Returns:
        ``(box, box, box)`` float32 ``(z, y, x)`` density in Å⁻² (see the module
        docstring); ``volume.sum() · pixel_size³ ≈ Σ occ·f_e(0)``.

    Raises:
        ValueError: no atoms, or atoms outside the box (in keep mode: outside
        ``[0, box·pixel_size)``; else a model wider than the box).
    """
    import gemmi

    st = structure.clone()
    st.remove_empty_chains()
    if len(st) == 0:
        raise ValueError("the model contains no atoms")
    for i in range(len(st) - 1, 0, -1):  # keep the first model only
        del st[i]
    model = st[0]
    pos, _, _ = _atoms(model)
    if len(pos) == 0:
        raise ValueError("the model contains no atoms")
    n = box or default_model_box(model, pixel_size)
    length = n * pixel_size
    shift = np.zeros(3) if keep_coordinates else (n // 2) * pixel_size - model_center_of_mass(model)
    new = pos + shift
    margin = 0.5 * pixel_size
    if new.min() < -margin or new.max() > length - margin:
        if keep_coordinates:
            raise ValueError(f"atoms lie outside the box of {n} voxels ({length:.1f} Å) at their deposited "
                             "coordinates")
        raise ValueError(f"the model ({np.ptp(new, axis=0).max():.1f} Å across) does not fit in a box of "
                         f"{n} voxels ({length:.1f} Å)")
    if not keep_coordinates:
        model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*(float(s) for s in shift))))
    if bfactor is not None:
        for chain in model:
            for res in chain:
                for at in res:
                    at.b_iso = float(bfactor)
                    at.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)
    if oversample is None:
        oversample = max(1, min(4, math.ceil(pixel_size / 0.75), max(1, 400 // n)))
    m = n * oversample
    st.cell = gemmi.UnitCell(length, length, length, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 0.0  # the grid size is set explicitly below
    dc.set_grid_cell_and_spacegroup(st)
    dc.grid.set_size(m, m, m)
    dc.initialize_grid()
    dc.add_model_density_to_grid(model)
    dc.grid.symmetrize_sum()
    vol = torch.from_numpy(np.array(dc.grid, dtype=np.float32, copy=True).transpose(2, 1, 0).copy())
    if oversample > 1:
        # grid point 0 is the cell origin: shift so that the fine grid's centre m//2 lands on n//2
        vol = torch.roll(vol, shifts=(m // 2 - (n // 2) * oversample,) * 3, dims=(0, 1, 2))
        vol = fourier_resize(vol, n, ndim=3)
    return vol.to(torch.float32).contiguous()


def phantom_structure(box: int = 64, pixel_size: float = 2.0, *, seed: int = 0, diameter: float | None = None,
                      bfactor: float = 30.0, population: float = 1.0) -> Structure:
    """The built-in asymmetric phantom on the scattering scale.

    The phantom places one Gaussian per ~140 Å³ of its ellipsoid (one residue); its
    integral is set to ``n_residues · 110 Da · SCATTERING_PER_DALTON``, as a protein of
    that mass modelled without hydrogens.
    """
    vol = asymmetric_phantom(box, pixel_size, seed=seed, diameter=diameter, bfactor=bfactor)
    d = diameter if diameter is not None else 0.6 * box * pixel_size
    semi = np.array([0.5, 0.36, 0.28]) * d
    n_res = max(1, int((4 / 3) * math.pi * semi.prod() / 140.0))
    vol = calibrate_mass(vol, pixel_size=pixel_size, mass_kda=n_res * _DALTON_PER_RESIDUE / 1000.0)
    name = "phantom" if seed == 0 else f"phantom(seed={seed})"
    return Structure(vol, float(pixel_size), name, population, "scattering")


def calibrate_mass(volume: torch.Tensor, *, pixel_size: float, mass_kda: float) -> torch.Tensor:
    """Scale a map of arbitrary units to scattering density for a molecule of ``mass_kda``.

    The background (mean of the outermost voxel shell) is subtracted first, then the
    map is scaled so that ``Σ(volume) · pixel_size³ = mass · SCATTERING_PER_DALTON``.
    """
    if not mass_kda > 0:
        raise ValueError("the mass must be positive")
    v = volume.to(torch.float32)
    shell = torch.ones_like(v, dtype=torch.bool)
    shell[1:-1, 1:-1, 1:-1] = False
    v = v - v[shell].mean()
    total = float(v.sum()) * pixel_size ** 3
    if not total > 0:
        raise ValueError("the map has no positive density above its background")
    return v * (mass_kda * 1000.0 * SCATTERING_PER_DALTON / total)


def morph_volume(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Linear interpolation of two maps: ``(1 − t)·a + t·b``.

    ``t`` is a number or a ``(B,)`` tensor (then the result is ``(B, n, n, n)``);
    ``t = 0`` gives ``a`` and ``t = 1`` gives ``b`` exactly.
    """
    if a.shape != b.shape:
        raise ValueError(f"the two maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        t = t.to(a.dtype).reshape(-1, *([1] * a.ndim))
    return (1 - t) * a + t * b
