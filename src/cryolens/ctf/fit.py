"""CTF estimation from a power spectrum (CTFFIND4-like, batched in torch).

Steps of :func:`fit_ctf`:

1. **Amplitude spectrum** ``A = sqrt(PS)`` of a centred ``(box, box)`` power spectrum, inside
   the band ``[1/res_low, 1/res_high]``; the kx = 0 / ky = 0 axes are left out (tile edges
   and detectors paint a cross there).
2. **1-D search** of the mean defocus (and phase shift) on the rotational average: for every
   candidate at once, ``A(s) ≈ b(s) + e(s) · CTF²(s)`` with smooth ``b, e`` is solved by
   linear least squares (:func:`cryolens.ctf.spectrum.background_fit`); the score is the
   share of the background-only residual the rings explain. This needs no separate
   background filter, so steep low-frequency backgrounds and envelopes cannot pull it.
3. **2-D search** on the normalised spectrum ``N = (A − b) / e``: the normalised cross-
   correlation of ``N`` with ``CTF²`` over the band, each pixel weighted by its expected
   SNR ``(e/σ)²`` (σ: the spread of ``A`` in its shell, so shells beyond the envelope add
   no noise), for a grid of (mean defocus,
   astigmatism, angle[, phase]) evaluated as one matrix product (χ is linear in
   ``(mean, a1, a2, phase)`` with ``a1 + i·a2 = (U − V)/2 · e^{2i·angle}``), then
   L-BFGS with the analytic gradient from the best grid points; ``exhaustive`` scores a full
   grid on a quarter of the band pixels and rescores its best 32 on all of them, ``fast``
   scores a coarse grid on all pixels (see :class:`CTFFitParams`).
4. **Re-normalisation** from the astigmatism-corrected rotational average (every pixel moved
   to the radius where the mean-defocus CTF has the same phase) and a last refinement.
5. **Diagnostics**: the fit's CC, the per-shell CC of the corrected 1-D spectrum with the
   fit (window of two ring periods) and the resolution where it falls below
   ``fit_threshold``; the frequency where the rings get closer than 2 pixels (aliasing).

Cost (2048² micrograph, box 512, 5-30 Å: ~24 000 band pixels): ~0.1-0.2 CPU s for the fit,
which runs on one intra-op thread (:func:`cryolens.ctf.scoring.one_cpu_thread`); the power spectrum before it is
an FFT of the tiles and scales with the micrograph.

The CTF is :mod:`cryolens.core.ctf`'s (RELION ``ctf.h``): angles in degrees, defocus in Å
(underfocus positive), ``φ = atan2(ky, kx)``; U ≥ V and the angle is in (−90°, 90°].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from cryolens.ctf.optics import Optics
from cryolens.ctf.params import CTFFitParams
from cryolens.ctf.scoring import (CTFFit, fit_resolution, make_fit, normalise_spectrum, one_cpu_thread,
                                  prepare_spectrum, weighted_cc)
from cryolens.ctf.search import refine, search_1d, search_2d

__all__ = ["CTFFit", "fit_ctf", "evaluate_ctf"]

Progress = Callable[[int, int], None]


def fit_ctf(spectrum: torch.Tensor, *, pixel_size: float, voltage: float, cs_mm: float, amplitude_contrast: float,
            params: CTFFitParams, progress: Progress | None = None) -> CTFFit:
    """Fit defocus U, V, astigmatism angle (and phase shift) to a power spectrum.

    Args:
        spectrum: ``(box, box)`` centred power spectrum (DC at ``box//2``), from
            :func:`cryolens.ctf.power_spectrum` or given (e.g. RELION's ``*_PS.mrc``);
            ``params.box`` is not used here, the spectrum's own size is.
        pixel_size: Å per pixel of the micrograph the spectrum comes from; voltage: kV;
            cs_mm: mm; amplitude_contrast: fraction.
        params: :class:`CTFFitParams`; progress: ``progress(done, total)`` after each stage.

    Returns:
        :class:`CTFFit`. Runs on the spectrum's device (on the CPU with one intra-op thread,
        see :func:`cryolens.ctf.scoring.one_cpu_thread`).
    """
    params.validate()
    with one_cpu_thread(torch.as_tensor(spectrum).device):
        return _fit_ctf(spectrum, Optics(float(pixel_size), float(voltage), float(cs_mm), float(amplitude_contrast)),
                        params, progress)


def _fit_ctf(spectrum: torch.Tensor, optics: Optics, params: CTFFitParams, progress: Progress | None) -> CTFFit:
    prep = prepare_spectrum(spectrum, optics, params)
    total = 4
    step = lambda i: progress(i, total) if progress is not None else None  # noqa: E731

    m, p, s_band, bg, env = search_1d(prep, optics, params)
    step(1)
    x = search_2d(prep, normalise_spectrum(prep, prep.grid, s_band, bg, env), m, p, optics, params)
    step(2)
    s_bins, bg_all, env_all, _, _ = fit_resolution(x, prep, optics, params)
    x, _ = refine(x, prep.grid, normalise_spectrum(prep, prep.grid, s_bins, bg_all, env_all), optics, params)
    step(3)
    s_bins, bg_all, env_all, curves, max_res = fit_resolution(x, prep, optics, params)
    target = normalise_spectrum(prep, prep.grid, s_bins, bg_all, env_all)
    xt = torch.as_tensor(x, dtype=torch.float64, device=target.y.device)[None]
    cc = float(weighted_cc(xt, prep.grid, target, optics)[0])
    fit = make_fit(x, cc, max_res, prep, optics, params, s_bins, bg_all, env_all, curves)
    step(4)
    return fit


def evaluate_ctf(spectrum: torch.Tensor, *, defocus_u_A: float, defocus_v_A: float, angle_deg: float,
                 phase_shift_deg: float = 0.0, pixel_size: float, voltage: float, cs_mm: float,
                 amplitude_contrast: float, params: CTFFitParams) -> CTFFit:
    """Score given CTF parameters against a spectrum without fitting (e.g. another program's answer).

    The spectrum is normalised with the background and envelope that best suit these
    parameters, exactly as :func:`fit_ctf` does for its own answer, so the CC, the per-shell
    quality and the fit resolution of two answers can be compared on equal terms.
    """
    params.validate()
    optics = Optics(float(pixel_size), float(voltage), float(cs_mm), float(amplitude_contrast))
    with one_cpu_thread(torch.as_tensor(spectrum).device):
        prep = prepare_spectrum(spectrum, optics, params)
        half = 0.5 * (defocus_u_A - defocus_v_A)
        a = math.radians(angle_deg)
        x = np.array([0.5 * (defocus_u_A + defocus_v_A), half * math.cos(2 * a), half * math.sin(2 * a),
                      math.radians(phase_shift_deg)])
        s_bins, bg, env, curves, max_res = fit_resolution(x, prep, optics, params)
        target = normalise_spectrum(prep, prep.grid, s_bins, bg, env)
        xt = torch.as_tensor(x, dtype=torch.float64, device=target.y.device)[None]
        cc = float(weighted_cc(xt, prep.grid, target, optics)[0])
        return make_fit(x, cc, max_res, prep, optics, replace(params, phase_shift=phase_shift_deg != 0), s_bins, bg,
                        env, curves)
