"""Imaging of a micrograph's canvas (steps 4-5 of :mod:`cryolens.simulate.micrographs`): the
canvas geometry, carbon film and contaminants (phase and absorption), and the CTF image of
the coherent density plus the vitreous-ice background, interpolated in defocus under tilt.

The canvas is the micrograph plus ``offset`` px on each side (no delocalised signal wraps);
arrays are ``(Hc, Wc)`` on the compute device. Units: Å, Å⁻¹ for projected densities,
radians for phases, kV. The ice models are :mod:`cryolens.simulate.ice`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from cryolens.core.ctf import CTFParams, ctf_phase_and_envelope, electron_wavelength
from cryolens.core.fourier import good_fft_size, rfft_polar_grid
from cryolens.simulate import ice as icemod

__all__ = ["canvas_geometry", "canvas_terms", "ctf_params", "delocalisation", "local_defocus",
           "absorbing_objects", "image_canvas"]

# FFT lengths of the canvas and projection boxes: {2, 3, 5}-smooth, as the simulator always
# used (seeded outputs depend on the canvas size; core's default set adds 7).
_PRIMES = (2, 3, 5)
_PHASE_SAT = 0.5  # rad, saturation of thick objects' phase (contaminants, carbon step)
_LAMBDA_CONTAMINANT = 800.0  # Å, effective absorption length of contaminants
_LAMBDA_CARBON = 800.0  # Å, effective absorption length of the carbon film (scattering outside the aperture)


def local_defocus(ctf: dict, x, y, *, width: int, height: int):
    """Defocus offset (Å) of the specimen plane at pixel ``(x, y)`` relative to the centre (W/2, H/2)."""
    return ctf["gradient_x"] * (x - width / 2) + ctf["gradient_y"] * (y - height / 2)


def delocalisation(ctf: dict, defocus_max: float, pixel_size: float) -> float:
    """CTF delocalisation radius (Å) at Nyquist: λΔf s + Cs λ³ s³."""
    lam = electron_wavelength(ctf["voltage"])
    s = 0.5 / pixel_size
    return lam * defocus_max * s + ctf["cs"] * 1e7 * lam ** 3 * s ** 3


def canvas_geometry(ctf: dict, *, n_max: int, height: int, width: int, pixel_size: float) -> tuple[int, int, int, int]:
    """``(box, offset, Hc, Wc)``: the padded box [px] of a tilted particle's CTF (its projection
    of ``n_max`` px plus the delocalisation at the far corner), the canvas margin and shape."""
    corner = abs(ctf["gradient_x"]) * width / 2 + abs(ctf["gradient_y"]) * height / 2
    deloc = int(math.ceil(delocalisation(ctf, max(ctf["defocus_u"], ctf["defocus_v"]) + corner, pixel_size)
                          / pixel_size))
    box = good_fft_size(n_max + 2 * deloc + 4, primes=_PRIMES)
    off = box // 2 + 2  # canvas margin ≥ delocalisation: nothing wraps (same canvas tilted or not)
    return box, off, good_fft_size(height + 2 * off, primes=_PRIMES), good_fft_size(width + 2 * off, primes=_PRIMES)


_TERMS: dict = {}  # one entry: the canvas grid and background amplitudes of the last shape/params


def canvas_terms(shape: tuple[int, int], pixel_size: float, params, device) -> dict:
    """Frequency grid (|s|², cos 2φ, sin 2φ) and the ice fields' amplitudes on the canvas, cached
    while the canvas shape, pixel size, device and ice parameters (of the
    :class:`~cryolens.simulate.micrographs.MicrographParams` ``params``) stay the same."""
    key = (shape, float(pixel_size), str(device), params.ice_thickness, params.ice_variation,
           params.ice_correlation, params.ice_ring)
    if _TERMS.get("key") != key:
        _TERMS.clear()
        grid = rfft_polar_grid(shape, pixel_size, device)
        s = torch.sqrt(grid[0])
        t = params.ice_thickness
        thick = icemod.radial_table(lambda x: icemod.thickness_psd(x, std=params.ice_variation * t,
                                                                   correlation=params.ice_correlation), s)
        ice = icemod.radial_table(lambda x: icemod.ice_structure_psd(x, thickness=t, ring_height=params.ice_ring), s)
        _TERMS.update(key=key, grid=grid,
                      thickness_amp=icemod.field_amplitude(thick, shape, pixel_size=pixel_size),
                      ice_amp=icemod.field_amplitude(ice, shape, pixel_size=pixel_size))
    return _TERMS


def ctf_params(ctf: dict, du=0.0, *, device=None) -> CTFParams:
    """:class:`~cryolens.core.ctf.CTFParams` of the drawn CTF ``ctf`` with both defoci shifted by ``du`` Å."""
    return CTFParams(defocus_u=torch.as_tensor(ctf["defocus_u"] + du, dtype=torch.float32, device=device),
                     defocus_v=torch.as_tensor(ctf["defocus_v"] + du, dtype=torch.float32, device=device),
                     defocus_angle=ctf["defocus_angle"], voltage=ctf["voltage"], cs=ctf["cs"],
                     amplitude_contrast=ctf["amplitude_contrast"], bfactor=ctf["bfactor"])


def absorbing_objects(edge, blobs: list, real: torch.Tensor, *, offset: int, pixel_size: float, params,
                      phase_scale: float, generator: torch.Generator) -> torch.Tensor | None:
    """Add the carbon film (``edge``) and contaminant ``blobs`` to the coherent density ``real``
    (in place, Å⁻¹; phases saturate at 0.5 rad) and return their absorption ``exp(-t/Λ)`` on the
    canvas (None when there are neither). ``phase_scale``: radians per Å⁻¹ (γλ)."""
    if edge is None and not blobs:
        return None
    shape, dev, gl = tuple(real.shape), real.device, phase_scale
    thick = torch.zeros(shape, device=dev)
    if edge is not None and params.carbon_thickness > 0:
        mask = icemod.hole_edge_mask(edge, shape, offset=(offset, offset), device=dev)
        s_c = torch.sqrt(canvas_terms(shape, pixel_size, params, dev)["grid"][0])
        cpsd = icemod.radial_table(lambda x: icemod.carbon_structure_psd(x, thickness=params.carbon_thickness), s_c)
        cnoise = torch.fft.irfft2(icemod.gaussian_field(cpsd, shape, pixel_size=pixel_size, generator=generator),
                                  s=shape)
        del s_c, cpsd
        step = icemod.CARBON_ATOMS_PER_A3 * float(icemod.scattering_factor("C", torch.zeros(())))
        step_phase = _PHASE_SAT * math.tanh(gl * step * params.carbon_thickness / _PHASE_SAT)
        real += mask * (step_phase / gl + cnoise)
        thick += mask * params.carbon_thickness * (_LAMBDA_CONTAMINANT / _LAMBDA_CARBON)
    if blobs:
        t = icemod.render_blobs(blobs, shape, offset=(offset, offset), device=dev)
        real += _PHASE_SAT * torch.tanh(gl * icemod.ice_density() * t / _PHASE_SAT) / gl
        thick += t
    return torch.exp(-thick / _LAMBDA_CONTAMINANT)


def image_canvas(contrast: torch.Tensor, density_ft: torch.Tensor, ctf: dict, *, params, pixel_size: float,
                 gain: float, absorb: torch.Tensor | None, offset: int, size: tuple[int, int], tilted: bool,
                 generator: torch.Generator) -> torch.Tensor:
    """The canvas' fractional intensity change: ``contrast`` (tilted particles, imaged with their
    own CTF) plus the CTF image of the coherent density (``density_ft``: rfft2 of ∫Δρ dz, Å⁻¹)
    and of the ice (thickness field and depth-averaged structure noise, drawn from
    ``generator``), times ``absorb``.

    ``gain``: contrast per unit of ∫Δρ dz (Å⁻¹); ``size``: ``(H, W)`` of the micrograph;
    ``contrast`` ``(Hc, Wc)`` is added to in place.
    """
    shape, dev = tuple(contrast.shape), contrast.device
    terms = canvas_terms(shape, pixel_size, params, dev)
    grid = terms["grid"]

    def field(amp: torch.Tensor) -> torch.Tensor:  # a Gaussian field of known amplitude, mean 0
        f = torch.randn(amp.shape, dtype=torch.complex64, generator=generator, device=dev) * amp
        f[0, 0] = 0
        return f

    thickness = field(terms["thickness_amp"])  # Å, the smooth thickness variation about the mean
    coherent = density_ft + icemod.ice_density() * thickness
    if params.energy_filter:  # zero-loss filtering removes the inelastically scattered electrons
        lam_in = icemod.inelastic_mean_free_path(params.voltage)
        zero_loss = torch.exp(-torch.fft.irfft2(thickness, s=shape) / lam_in)
        absorb = zero_loss if absorb is None else absorb * zero_loss
    del thickness
    ice_noise = field(terms["ice_amp"])
    lam = electron_wavelength(params.voltage)

    def band(du: float) -> torch.Tensor:
        chi, env = ctf_phase_and_envelope(ctf_params(ctf, du, device=dev), grid[0][None], grid[1], grid[2])
        chi, env = chi[0], env[0]
        f = coherent * (-torch.sin(chi) * env)
        f += ice_noise * (env * torch.sqrt(icemod.depth_averaged_ctf2(chi, grid[0], wavelength=lam,
                                                                      thickness=params.ice_thickness)))
        return torch.fft.irfft2(f, s=shape) * gain

    if not tilted:
        contrast += band(0.0)
    else:
        _add_defocus_bands(contrast, band, ctf, offset=offset, size=size, defocus_band=params.defocus_band)
    if absorb is not None:
        contrast = (1 + contrast) * absorb - 1
    return contrast


def _add_defocus_bands(contrast: torch.Tensor, band: Callable[[float], torch.Tensor], ctf: dict, *, offset: int,
                       size: tuple[int, int], defocus_band: float) -> None:
    """Tilted specimen: add background images ``band(Δf)`` ``defocus_band`` Å apart, each weighted by
    linear interpolation in the local defocus of the canvas pixels (in place)."""
    hc, wc = contrast.shape
    dev = contrast.device
    yy = torch.arange(hc, device=dev, dtype=torch.float32)[:, None] - offset
    xx = torch.arange(wc, device=dev, dtype=torch.float32)[None, :] - offset
    ddf_map = local_defocus(ctf, xx, yy, width=size[1], height=size[0])
    lo, hi = float(ddf_map.min()), float(ddf_map.max())
    if hi - lo < 1e-3 * defocus_band:
        contrast += band((lo + hi) / 2)
        return
    nb = max(2, int(math.ceil((hi - lo) / defocus_band)) + 1)
    centres = np.linspace(lo, hi, nb)
    step = centres[1] - centres[0]
    for d in centres:
        contrast += (1 - (ddf_map - d).abs() / step).clamp_min(0) * band(float(d))
