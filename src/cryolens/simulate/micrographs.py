"""Micrograph simulator: particles in vitreous ice imaged through the CTF and a counting detector.

Pure stage (tensors and tables in, tensors and tables out; no file I/O). Units: Å,
degrees, kV, mm, e⁻/Å². Coordinates are 0-based pixel indices of the micrograph array
``(y, x)``: ``rlnCoordinateX`` is the column, ``rlnCoordinateY`` the row of the particle
centre (the box centre ``n//2`` of its projection), sub-pixel.

Image formation (every choice):

1. **Specimen** as a projected scattering density ``∫ρ dz`` (Å⁻¹) on the scale of
   :mod:`cryolens.simulate.structures` (ρ = electron scattering-factor density, Å⁻²;
   potential ``V = 47.878 V·Å² · ρ``). A structure on the ``"scattering"`` scale is
   used as it is, times ``hydrogen_factor`` (default 1: maps from models and the
   phantom carry no hydrogens, which would add ~20% in the isolated-atom picture, but
   real images show less contrast than that picture predicts); one on the
   ``"arbitrary"`` scale is scaled so that its mean inside its envelope is the
   protein density 0.134 Å⁻² (0.1646 Å/Da ÷ 1.23 Å³/Da). The solvent the particle
   displaces is subtracted: ``Δρ = ρ - ρ_ice · envelope`` (envelope = the map
   low-passed to 8 Å, thresholded to the molecular volume 1.23 Å³/Da, softened by
   one voxel), so that a particle's contrast is relative to the ice around it.
2. **Particles** at random non-overlapping positions (dart throwing: centres at least
   ``min_distance`` apart (default: the largest particle diameter), at least
   ``margin`` from the edges, outside the carbon and away from contaminants and
   aggregates), each at its own uniformly random pose and class (``populations``).
   Projections come from :func:`cryolens.core.projector.project` in batches;
   sub-pixel positions are an origin phase shift (``rlnOriginX = -fraction``).
   Radiation damage (``radiation_damage``, on by default) attenuates the particles'
   signal by Grant & Grigorieff's ``exp(-N/2N_e(s))`` averaged over the exposure
   [0, dose]; the ice, already amorphous, is not changed by it. Movies turn it off
   and apply it per frame.
3. **Weak-phase image**: the phase is ``φ = γλ ∫Δρ dz`` (``relativistic_phase_scale``)
   and the recorded intensity ``I = dose · (1 + c)`` with the contrast
   ``c = -2/√(1-Q²) · F⁻¹[CTF · F(φ)]`` where CTF is :mod:`cryolens.core.ctf`'s
   (RELION ``ctf.h``: positive at low frequency in underfocus, amplitude contrast
   ``Q`` via its phase offset, so ``c(0) = -2Qφ/√(1-Q²)``). Protein is therefore
   dark at low resolution, as recorded (cryolens' particle stacks are inverted at
   extraction, not here).
4. **CTF per micrograph**: mean defocus uniform in [defocus_min, defocus_max],
   astigmatism |U−V| uniform in [0, astigmatism], angle uniform in [0, 180), B-factor
   envelope ``exp(-B s²/4)`` standing for coherence, drift and damage. **Specimen
   tilt** (uniform in [0, tilt_max], axis uniform): the specimen is the plane
   ``Δf(x, y) = Δf₀ + g_x (x - W/2) + g_y (y - H/2)`` (Å, pixels) with
   ``|g| = tan(tilt) · pixel_size`` perpendicular to the tilt axis at ``tilt_axis``
   degrees from +x: ``(g_x, g_y) = tan(tilt) · pixel_size · (-sin θ, cos θ)``.
   Untilted, everything coherent (particles, thickness, carbon, contaminants) is
   pasted on one canvas and gets the micrograph's CTF in one big rfft (exact). Tilted,
   each particle's CTF uses the local defocus at its centre exactly: it is applied to
   the particle's projection in a box padded by the CTF's delocalisation
   ``λΔf s + Cs λ³ s³`` at Nyquist (nothing wraps or is cut off), then pasted; the
   background is interpolated linearly in defocus between background images
   ``defocus_band`` Å apart. The canvas exceeds the micrograph by half that padded box
   on each side, so no delocalised signal wraps around.
5. **Background** (:mod:`cryolens.simulate.ice`): vitreous ice of mean
   ``ice_thickness`` with a smooth thickness field (std ``ice_variation`` ×
   thickness, correlation ``ice_correlation`` Å) plus the amorphous-ice structure
   noise (water-like power, ice ring at 1/3.7 Å⁻¹) built directly in Fourier space.
   Water molecules at different depths scatter independently, so the structure
   noise is given the depth-averaged CTF² (Thon rings of the ice fade at high
   frequency while its power and the ice ring stay, as in real spectra); optional carbon (hole
   edge, sharp, absorbing) and contaminant blobs (absorbing, saturated phase);
   aggregates are clusters of 4-12 overlapping particles (junk, not in the truth).
   Absorption multiplies the intensity: ``1 + c → (1 + c) exp(-t/Λ)``; with
   ``energy_filter`` the ice thickness variation Δt also removes inelastically
   scattered electrons, ``exp(-Δt/Λ_in)`` (Λ_in = 3500 Å at 300 kV), which is what
   makes thick-ice regions of zero-loss micrographs dark.
6. **Detector** (:func:`expose`): the signal is blurred by the detector MTF
   (:func:`detector_mtf`: pixel-aperture ``sinc(πω_x/2) sinc(πω_y/2)`` of a counting
   detector times a mild Gaussian equal to ``mtf_gaussian`` at Nyquist, ω =
   frequency/Nyquist), then counted: ``counts ~ Poisson(dose·pixel_size²·(1 + c_MTF))``.
   The noise is white (ideal counting), so DQE = MTF². An optional
   ``interpolation_blur`` (Gaussian σ in pixels) filters signal and noise alike, as
   on-the-fly frame alignment with interpolation does (the EPU/Falcon example's
   spectrum falls ~30× towards Nyquist, which only a post-counting filter explains).
   Micrographs are written as float32 counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cryolens.core.rotations import matrix_to_euler, random_rotations
from cryolens.simulate import ice as icemod
from cryolens.simulate.canvas import absorbing_objects, canvas_geometry, image_canvas, local_defocus
from cryolens.simulate.detector import detector_mtf, expose, gaussian_filter_rfft
from cryolens.simulate.micrograph_params import MicrographParams
from cryolens.simulate.specimen import (
    PreparedStructure,
    draw_aggregates,
    paste_ctf_particles,
    paste_projections,
    place_particles,
    prepare_structure,
    prepared_structures,
    radiation_damage,
)
from cryolens.simulate.spectra import centred_spectrum, power_spectrum, radial_profile
from cryolens.simulate.structures import relativistic_phase_scale

# MicrographParams (declared in cryolens.simulate.micrograph_params) is this stage's Params.
__all__ = [
    "MicrographParams", "MicrographTruth", "PreparedStructure", "prepare_structure",
    "simulate_micrograph_signal", "simulate_micrograph", "detector_mtf", "gaussian_filter_rfft", "expose",
    "draw_ctf", "local_defocus", "radiation_damage", "place_particles", "power_spectrum", "radial_profile",
    "centred_spectrum",
]


@dataclass
class MicrographTruth:
    """A simulated micrograph before the detector, and its ground truth.

    Attributes:
        contrast: ``(H, W)`` float32 noise-free fractional intensity change; the recorded
            intensity is ``dose · (1 + contrast)`` before the detector MTF and noise. It
            includes the CTF and is negative on protein at low frequency.
        particles: one row per particle: rlnCoordinateX/Y (px), rlnAngleRot/Tilt/Psi,
            rlnDefocusU/V/Angle (local, tilt included), rlnClassNumber (1-based).
        ctf: defocus_u, defocus_v (Å, at the micrograph centre), defocus_angle,
            tilt_angle, tilt_axis (degrees), gradient_x, gradient_y (Å of defocus per
            pixel), voltage (kV), cs (mm), amplitude_contrast, bfactor (Å²).
        pixel_size: Å.
        extras: what else was drawn (carbon edge, contaminant blobs, aggregate centres).
    """

    contrast: torch.Tensor
    particles: pd.DataFrame
    ctf: dict
    pixel_size: float
    extras: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ geometry


def draw_ctf(params: MicrographParams, rng: np.random.Generator, *, pixel_size: float) -> dict:
    """The micrograph's CTF and specimen plane (see :class:`MicrographTruth`)."""
    mean = rng.uniform(params.defocus_min, params.defocus_max)
    astig = rng.uniform(0, params.astigmatism)
    angle = rng.uniform(0, 180.0)
    tilt = rng.uniform(0, params.tilt_max)  # always drawn, so other draws do not depend on tilt_max
    axis = rng.uniform(-180.0, 180.0)
    if tilt == 0:
        axis = 0.0
    g = math.tan(math.radians(tilt)) * pixel_size
    th = math.radians(axis)
    return dict(defocus_u=mean + astig / 2, defocus_v=mean - astig / 2, defocus_angle=angle,
                tilt_angle=tilt, tilt_axis=axis, gradient_x=-g * math.sin(th) + 0.0, gradient_y=g * math.cos(th) + 0.0,
                voltage=params.voltage, cs=params.cs, amplitude_contrast=params.amplitude_contrast,
                bfactor=params.bfactor)


# --------------------------------------------------------------------------------- simulation


def simulate_micrograph_signal(structures: Sequence, populations: Sequence[float] | None, *, pixel_size: float,
                               params: MicrographParams, index: int, device=None) -> MicrographTruth:
    """Noise-free contrast of micrograph ``index`` and its ground truth (see the module docstring).

    Args:
        structures: cubic maps ``(n, n, n)`` (centre n//2) at ``pixel_size``, as tensors
            (on ``params.structure_units``' scale) or objects with ``.volume`` and
            ``.units`` (:class:`cryolens.simulate.structures.Structure`). Prepared
            Fourier volumes are cached per tensor, so repeated calls are cheap.
        populations: relative class weights (None: equal; a Structure's ``.population``
            is not read here, pass it).
        pixel_size: Å per pixel of the micrograph and the maps.
        params: :class:`MicrographParams`; ``params.seed + index`` seeds everything.
        index: the micrograph's number (0-based).
        device: where to compute (default CPU).

    Returns:
        :class:`MicrographTruth` with ``contrast (H, W)`` float32 on ``device``.
    """
    params.validate()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    seed = int(params.seed) + int(index)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    H, W, apix = params.height, params.width, float(pixel_size)
    preps, pops = _prepared_with_populations(structures, populations, params, apix, dev)

    ctf = draw_ctf(params, rng, pixel_size=apix)
    tilted = ctf["tilt_angle"] > 0
    n_max = max(p.n for p in preps)
    diam = max(p.diameter for p in preps) / apix  # px
    box, off, Hc, Wc = canvas_geometry(ctf, n_max=n_max, height=H, width=W, pixel_size=apix)
    layout = _draw_layout(params, rng, apix, diameter_px=diam, n_max=n_max)
    xy, agg_pts = layout["xy"], layout["agg_pts"]
    k = len(xy)
    cls = rng.choice(len(preps), size=k, p=pops) if k else np.zeros(0, dtype=int)
    rot = random_rotations(k + len(agg_pts), generator=gen, device=dev)
    agg_cls = rng.choice(len(preps), size=len(agg_pts), p=pops)
    all_xy = np.concatenate([xy, agg_pts]) if len(agg_pts) else xy
    all_cls = np.concatenate([cls, agg_cls]).astype(int)
    ddf = local_defocus(ctf, all_xy[:, 0], all_xy[:, 1], width=W, height=H) if len(all_xy) else np.zeros(0)

    gl = relativistic_phase_scale(params.voltage)
    q = params.amplitude_contrast
    gain = -2.0 / math.sqrt(1 - q * q) * gl  # contrast per unit of ∫Δρ dz (Å⁻¹)
    contrast = torch.zeros((Hc, Wc), device=dev)
    real = torch.zeros((Hc, Wc), device=dev)  # coherent projected density (Å⁻¹) that needs the global CTF
    _paste_particles(preps, rot, all_xy, all_cls, ddf, ctf, params=params, pixel_size=apix, gain=gain, box=box,
                     offset=off, tilted=tilted, contrast=contrast, real=real)

    # background on the canvas: carbon and contaminants in real space, ice in Fourier space
    absorb = absorbing_objects(layout["edge"], layout["blobs"], real, offset=off, pixel_size=apix, params=params,
                               phase_scale=gl, generator=gen)
    density_ft = torch.fft.rfft2(real)
    del real
    contrast = image_canvas(contrast, density_ft, ctf, params=params, pixel_size=apix, gain=gain, absorb=absorb,
                            offset=off, size=(H, W), tilted=tilted, generator=gen)
    contrast = contrast[off:off + H, off:off + W].clamp_min(-1.0).contiguous()

    particles = _particle_table(xy, rot[:k], ctf, ddf[:k], cls)
    extras = dict(carbon=layout["edge"], contaminants=layout["blobs"], aggregates=layout["aggs"],
                  min_distance_px=layout["min_d"], margin_px=layout["margin"], padded_box=box,
                  mean_defocus=(ctf["defocus_u"] + ctf["defocus_v"]) / 2)
    return MicrographTruth(contrast.float(), particles, ctf, apix, extras)


def _prepared_with_populations(structures: Sequence, populations: Sequence[float] | None, params: MicrographParams,
                               pixel_size: float, device) -> tuple[list[PreparedStructure], np.ndarray]:
    """The prepared structures and their class probabilities (summing to 1)."""
    preps = prepared_structures(structures, pixel_size=pixel_size, units=params.structure_units,
                                hydrogen_factor=params.hydrogen_factor, device=device)
    if len(preps) == 0:
        raise ValueError("at least one structure is needed")
    pops = np.ones(len(preps)) if populations is None else np.asarray(populations, dtype=float)
    if len(pops) != len(preps) or pops.sum() <= 0 or (pops < 0).any():
        raise ValueError("populations must be one non-negative weight per structure, not all 0")
    return preps, pops / pops.sum()


def _draw_layout(params: MicrographParams, rng: np.random.Generator, pixel_size: float, *, diameter_px: float,
                 n_max: int) -> dict:
    """Carbon edge, contaminants and aggregates, then the particle centres around them (drawn from
    ``rng`` in that order): a dict of ``edge``, ``blobs``, ``aggs``, ``agg_pts`` ``(A, 2)``,
    ``xy`` ``(k, 2)`` (x, y px), ``min_d`` and ``margin`` [px]."""
    H, W, apix, diam = params.height, params.width, pixel_size, diameter_px
    edge = icemod.draw_hole_edge((H, W), pixel_size=apix, rng=rng) if params.carbon else None
    blobs = icemod.draw_contaminants(params.contaminants, (H, W), pixel_size=apix, rng=rng)
    aggs = draw_aggregates(params.aggregates, width=W, height=H, diameter_px=diam, rng=rng)
    min_d = (params.min_distance / apix) if params.min_distance is not None else diam
    margin = (params.margin / apix) if params.margin is not None else n_max / 2
    agg_pts = np.concatenate(aggs) if aggs else np.zeros((0, 2))

    def forbidden(x, y):
        bad = np.zeros(len(x), dtype=bool)
        if edge is not None:
            bad |= edge.on_carbon(x, y)
        for b in blobs:
            bad |= (x - b.x) ** 2 + (y - b.y) ** 2 < (max(b.a, b.b) + diam / 2) ** 2
        for p in agg_pts:
            bad |= (x - p[0]) ** 2 + (y - p[1]) ** 2 < diam ** 2
        return bad

    xy = place_particles(params.particles_per_micrograph, width=W, height=H, min_distance=min_d, margin=margin,
                         rng=rng, forbidden=forbidden)
    return dict(edge=edge, blobs=blobs, aggs=aggs, agg_pts=agg_pts, xy=xy, min_d=min_d, margin=margin)


def _paste_particles(preps: list[PreparedStructure], rot: torch.Tensor, xy: np.ndarray, cls: np.ndarray,
                     ddf: np.ndarray, ctf: dict, *, params: MicrographParams, pixel_size: float, gain: float, box: int,
                     offset: int, tilted: bool, contrast: torch.Tensor, real: torch.Tensor) -> None:
    """Paste every particle, class by class: tilted, imaged with the CTF at its own defocus into
    ``contrast``; untilted, as projected density into ``real`` (imaged with the canvas later)."""
    dev = rot.device
    damage = ((lambda x: radiation_damage(x, dose=params.dose, voltage=params.voltage))
              if params.radiation_damage else None)
    for c, prep in enumerate(preps):
        sel = np.nonzero(cls == c)[0]
        if not len(sel):
            continue
        r = rot[torch.as_tensor(sel, device=dev)]
        if tilted:
            paste_ctf_particles(prep, r, xy[sel], ctf["defocus_u"] + ddf[sel], ctf["defocus_v"] + ddf[sel], ctf,
                                pixel_size=pixel_size, gain=gain, box=box, canvas=contrast, offset=offset,
                                batch_size=params.batch_size, damage=damage)
        else:
            paste_projections(prep, r, xy[sel], pixel_size=pixel_size, canvas=real, offset=offset,
                              batch_size=params.batch_size, damage=damage)


def _particle_table(xy: np.ndarray, rot: torch.Tensor, ctf: dict, ddf: np.ndarray, cls: np.ndarray) -> pd.DataFrame:
    """The truth of the ``k`` particles (aggregates excluded): RELION columns, classes 1-based."""
    k = len(xy)
    r, t_, p = (a.numpy() for a in matrix_to_euler(rot.double().cpu())) if k else (np.zeros(0),) * 3
    return pd.DataFrame({
        "rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1],
        "rlnAngleRot": r, "rlnAngleTilt": t_, "rlnAnglePsi": p,
        "rlnDefocusU": ctf["defocus_u"] + ddf, "rlnDefocusV": ctf["defocus_v"] + ddf,
        "rlnDefocusAngle": np.full(k, ctf["defocus_angle"]),
        "rlnClassNumber": cls.astype(int) + 1,
    })


def simulate_micrograph(structures: Sequence, populations: Sequence[float] | None, *, pixel_size: float,
                        params: MicrographParams, index: int, device=None) -> tuple[torch.Tensor, MicrographTruth]:
    """A recorded micrograph (counts, float32 ``(H, W)``) and its truth: signal, then :func:`expose`."""
    truth = simulate_micrograph_signal(structures, populations, pixel_size=pixel_size, params=params, index=index,
                                       device=device)
    dev = truth.contrast.device
    shape = tuple(truth.contrast.shape)
    noise_seed = int(np.random.SeedSequence([params.seed + index, 7]).generate_state(1)[0])  # its own stream
    gen = torch.Generator(device=dev).manual_seed(noise_seed)
    mtf = detector_mtf(shape, device=dev, nyquist_gaussian=params.mtf_gaussian)
    nf = gaussian_filter_rfft(shape, params.interpolation_blur, device=dev) if params.interpolation_blur > 0 else None
    counts = expose(truth.contrast, dose_per_pixel=params.dose * pixel_size ** 2, mtf=mtf, generator=gen,
                    noise_filter=nf)
    return counts, truth



