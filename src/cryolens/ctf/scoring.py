"""Pieces of the CTF fit shared by the whole-micrograph fit (:mod:`cryolens.ctf.fit`) and the
patch fits (:mod:`cryolens.ctf.patches`): the prepared amplitude spectrum, its normalisation
``(A − b)/e`` with SNR weights, the weighted cross-correlation score of candidate CTFs, the
astigmatism-corrected 1-D fit resolution, and the :class:`CTFFit` result.

Candidates are ``(mean defocus Å, a1, a2, phase rad)`` with ``a1 + i·a2 = (U − V)/2 · e^{2i·angle}``
(χ is linear in them, :func:`cryolens.ctf.optics.ctf_phase_linear`). Spectra are centred
``(box, box)`` (DC at ``box//2``); frequencies in 1/Å.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from cryolens.core.ctf import ctf_phase_and_envelope
from cryolens.ctf.diagnostics import aliasing_frequency, corrected_radius, windowed_cc
from cryolens.ctf.optics import Optics, chi_1d, ctf_phase_linear
from cryolens.ctf.params import CTFFitParams
from cryolens.ctf.spectrum import SpectrumGrid, background_fit, hat_basis, radial_bins, spectrum_grid

__all__ = ["CTFFit", "Target", "PreparedSpectrum", "KNOTS_BACKGROUND", "KNOTS_ENVELOPE", "one_cpu_thread",
           "weighted_cc", "prepare_spectrum", "normalise_spectrum", "fit_resolution", "make_fit"]

_CHUNK = 1 << 20  # candidate × pixel elements per batch (4 MB float32 temporaries: cache-sized, faster than larger)
KNOTS_BACKGROUND, KNOTS_ENVELOPE = 5, 3  # hat knots of background and envelope over the fit band
_WEIGHT_POWER = 2.0  # pixel weights (e/σ)^p: p = 2 is the SNR (least-squares) weighting


@dataclass
class CTFFit:
    """Result of :func:`cryolens.ctf.fit_ctf` (RELION conventions; see :mod:`cryolens.ctf.fit`).

    Attributes:
        defocus_u_A, defocus_v_A: Å, U ≥ V (``rlnDefocusU/V``); angle_deg: ``rlnDefocusAngle``.
        phase_shift_deg: degrees (``rlnPhaseShift``, 0 unless searched).
        cc: normalised cross-correlation of the normalised spectrum and CTF² over the band,
            each pixel weighted by its expected SNR (``rlnCtfFigureOfMerit``).
        max_resolution_A: Å up to which the rings fit (``rlnCtfMaxResolution``).
        astigmatism_A: U − V; aliasing_resolution_A: Å from which the rings are closer than
            2 spectrum pixels at this box (None: not before Nyquist).
        warnings: sentences for the user (aliasing in the band, search edge, ...).
        spectrum: ``(box, box)`` centred normalised amplitude spectrum ``(A − b)/e`` (≈ CTF²).
        model: ``(box, box)`` centred fitted ``CTF²`` (no envelope), same scale.
        freq_1d: 1/Å per 1-D bin; spectrum_1d: astigmatism-corrected rotational average of
            ``spectrum``; fit_1d: CTF² at the mean defocus; quality_1d: per-shell CC.
    """

    defocus_u_A: float
    defocus_v_A: float
    angle_deg: float
    phase_shift_deg: float
    cc: float
    max_resolution_A: float
    astigmatism_A: float
    aliasing_resolution_A: float | None
    warnings: list[str] = field(default_factory=list)
    spectrum: torch.Tensor | None = None
    model: torch.Tensor | None = None
    freq_1d: np.ndarray | None = None
    spectrum_1d: np.ndarray | None = None
    fit_1d: np.ndarray | None = None
    quality_1d: np.ndarray | None = None

    @property
    def defocus_mean_A(self) -> float:
        return 0.5 * (self.defocus_u_A + self.defocus_v_A)


@dataclass
class Target:
    """What candidates are scored against: the normalised spectrum ``y = (A − b)/e`` on the band
    pixels, centred with the weights ``w ∝ (e/σ)²`` (each pixel's expected SNR)."""

    y: torch.Tensor  # (P,) weighted-mean-free
    w: torch.Tensor  # (P,) weights, max 1

    @staticmethod
    def make(y: torch.Tensor, w: torch.Tensor) -> "Target":
        w = w / w.max().clamp_min(1e-30)
        return Target(y - (w * y).sum() / w.sum(), w)


def weighted_cc(coef: torch.Tensor, grid: SpectrumGrid, target: Target, optics: Optics) -> torch.Tensor:
    """SNR-weighted normalised CC of the spectrum with CTF² for candidates ``coef (B, 4)``: ``(B,)``."""
    out = []
    step = max(1, _CHUNK // max(1, len(target.y)))
    w = target.w.to(coef.dtype)
    wy = w * target.y.to(coef.dtype)
    ny = torch.sqrt((wy * target.y.to(coef.dtype)).sum())
    sw = w.sum()
    for i in range(0, len(coef), step):
        m = torch.cos(2 * ctf_phase_linear(coef[i:i + step], grid, optics))  # −(2·CTF² − 1)
        sm = m @ w
        var = ((m * m) @ w - sm * sm / sw).clamp_min(1e-12)
        out.append(-(m @ wy) / (ny * torch.sqrt(var)))
    return torch.cat(out)


@contextmanager
def one_cpu_thread(device: torch.device | str | None = None) -> Iterator[None]:
    """Run torch's CPU ops inside on one intra-op thread (restored afterwards; no-op off the CPU).

    The fit is latency-bound: arrays of 10⁴-10⁷ elements and many small steps, where waking
    and joining a thread pool costs more than it saves, and far more on a shared machine
    (a thread of the pool that is descheduled stalls every parallel op). Measured on 2 cores:
    one thread is as fast in wall time and about half the CPU time when idle, 2-5× faster
    when other processes compete for the cores.
    """
    n = torch.get_num_threads()
    if (device is not None and torch.device(device).type != "cpu") or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _to_uva(x: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, a1, a2, phase rad) -> (U, V, angle deg in (−90, 90], phase deg)."""
    half = math.hypot(x[1], x[2])
    ang = math.degrees(0.5 * math.atan2(x[2], x[1])) if half > 0 else 0.0
    if ang <= -90:
        ang += 180.0
    return float(x[0] + half), float(x[0] - half), float(ang), float(math.degrees(x[3]))


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``fp(xp)`` (xp increasing) at ``x``, clamped at the ends."""
    return torch.from_numpy(np.interp(x.cpu().numpy(), xp.cpu().numpy(), fp.cpu().numpy())).to(x.device, x.dtype)


@dataclass
class PreparedSpectrum:
    """Amplitude spectrum and its band geometry."""

    amp: torch.Tensor  # (box, box) centred amplitude
    grid: SpectrumGrid  # band pixels
    all_grid: SpectrumGrid  # every pixel of the half plane up to the corners
    s_lo: float
    s_hi: float
    box: int
    shell_s: torch.Tensor  # (box//2+1,) 1/Å
    shell_sd: torch.Tensor  # standard deviation of A within each shell


def prepare_spectrum(spectrum: torch.Tensor, optics: Optics, params: CTFFitParams) -> PreparedSpectrum:
    ps = torch.as_tensor(spectrum).float()
    if ps.ndim != 2 or ps.shape[0] != ps.shape[1] or ps.shape[0] % 2 or ps.shape[0] < 64:
        raise ValueError("the power spectrum must be a square (box, box) array with an even box of at least 64")
    if not torch.isfinite(ps).all():
        raise ValueError("the power spectrum contains NaN or infinite values")
    box = ps.shape[0]
    amp = torch.sqrt(ps.clamp_min(0))
    s_nyq = 0.5 / optics.pixel_size
    s_lo = 1.0 / params.res_low_A
    s_hi = min(1.0 / params.res_high_A, s_nyq)
    if s_hi - s_lo < 8 / (box * optics.pixel_size):
        raise ValueError("the resolution band is narrower than 8 spectrum pixels; widen res_low_A/res_high_A")
    dev = amp.device
    grid = spectrum_grid(box, optics.pixel_size, s_min=s_lo, s_max=s_hi, mask_cross=params.mask_cross, device=dev)
    all_grid = spectrum_grid(box, optics.pixel_size, mask_cross=params.mask_cross, device=dev)
    nb = box // 2 + 1
    vals = amp.reshape(-1)[all_grid.index]
    mean, _ = radial_bins(vals, all_grid.radius, n_bins=nb)
    mean2, _ = radial_bins(vals * vals, all_grid.radius, n_bins=nb)
    sd = torch.sqrt((mean2 - mean * mean).clamp_min(0))
    sd = torch.maximum(sd, 1e-3 * sd.max().clamp_min(1e-30))
    shell_s = torch.arange(nb, device=dev, dtype=torch.float32) / (box * optics.pixel_size)
    return PreparedSpectrum(amp, grid, all_grid, s_lo, s_hi, box, shell_s, sd)


def normalise_spectrum(prep: PreparedSpectrum, grid: SpectrumGrid, s_bins: torch.Tensor, bg: torch.Tensor,
               env: torch.Tensor) -> Target:
    """``y = (A − b(s)) / e(s)`` on ``grid``'s pixels (``e`` kept above 5 % of its maximum) and the
    SNR weights ``(e/σ)²``, σ(s) being the spread of ``A`` within its shell."""
    a = prep.amp.reshape(-1)[grid.index]
    e_raw = _interp(grid.s, s_bins, env)
    e = e_raw.clamp_min(0.05 * float(env.max().clamp_min(1e-30)))
    sigma = _interp(grid.s, prep.shell_s, prep.shell_sd)
    w = (e_raw.clamp_min(0) / sigma.clamp_min(1e-30)) ** _WEIGHT_POWER
    return Target.make((a - _interp(grid.s, s_bins, bg)) / e, w)


def fit_resolution(x: np.ndarray, prep: PreparedSpectrum, optics: Optics, params: CTFFitParams):
    """Astigmatism-corrected 1-D spectrum, background, envelope, fit, per-shell CC and fit resolution."""
    dev = prep.amp.device
    nb = prep.box // 2 + 1
    r_eq = corrected_radius(prep.all_grid, x, optics)
    prof, cnt = radial_bins(prep.amp.reshape(-1)[prep.all_grid.index], r_eq, n_bins=nb)
    s_bins = torch.arange(nb, device=dev, dtype=torch.float32) / (prep.box * optics.pixel_size)
    s_nyq = 0.5 / optics.pixel_size
    use = (s_bins >= prep.s_lo) & (cnt > 0)
    n_b = max(KNOTS_BACKGROUND, int(round(KNOTS_BACKGROUND * (s_nyq - prep.s_lo) / (prep.s_hi - prep.s_lo))))
    n_e = max(KNOTS_ENVELOPE, int(round(KNOTS_ENVELOPE * (s_nyq - prep.s_lo) / (prep.s_hi - prep.s_lo))))
    chi = chi_1d(s_bins, torch.tensor([x[0]], device=dev, dtype=torch.float32),
                  torch.tensor([x[3]], device=dev, dtype=torch.float32), optics)[0]
    fit = torch.sin(chi) ** 2
    _, bg, env = background_fit(prof[use], fit[use][None], hat_basis(s_bins[use], prep.s_lo, s_nyq, n_b),
                                hat_basis(s_bins[use], prep.s_lo, s_nyq, n_e))
    bg_all = _interp(s_bins, s_bins[use], bg[0])
    env_all = _interp(s_bins, s_bins[use], env[0]).clamp_min(0.05 * float(env.max().clamp_min(1e-30)))
    y = ((prof - bg_all) / env_all).cpu().numpy()
    f = fit.cpu().numpy()
    s = s_bins.cpu().numpy()
    dchi = np.abs(-2 * math.pi * optics.wavelength * x[0] * s + 4 * optics.cs_term * s ** 3)
    period_bins = math.pi / np.maximum(dchi, 1e-12) * prep.box * optics.pixel_size
    half = np.clip(np.round(period_bins), 3, nb // 4).astype(int)
    i0 = int(np.searchsorted(s, prep.s_lo))
    q = np.zeros(nb)
    q[i0:] = windowed_cc(y[i0:], f[i0:], half[i0:])  # windows stay above the low-resolution limit
    smooth = np.convolve(np.pad(q, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    s_alias = aliasing_frequency(max(x[0], 1.0), optics, prep.box)
    i_end = nb if s_alias is None else int(np.searchsorted(s, s_alias))
    below = np.nonzero(smooth[i0:i_end] < params.fit_threshold)[0]
    i_last = (i0 + below[0] - 1) if len(below) else i_end - 1
    i_last = max(i_last, i0)
    max_res = 1.0 / s[i_last] if s[i_last] > 0 else float("inf")
    return s_bins, bg_all, env_all, dict(freq=s, spectrum=y, fit=f, quality=q), max_res


def make_fit(x: np.ndarray, cc: float, max_res: float, prep: PreparedSpectrum, optics: Optics, params: CTFFitParams,
              s_bins: torch.Tensor, bg: torch.Tensor, env: torch.Tensor, curves: dict) -> CTFFit:
    """Assemble :class:`CTFFit`: parameters, warnings and the diagnostic images."""
    u, v, ang, ph = _to_uva(x)
    ph = ph % 180.0 if params.phase_shift else 0.0  # CTF² cannot tell φ from φ + 180°
    box, dev = prep.box, prep.amp.device
    s_alias = aliasing_frequency(u, optics, box)
    warnings = []
    if s_alias is not None and s_alias <= prep.s_hi:
        warnings.append(f"the CTF aliases from {1 / s_alias:.1f} Å, inside the fit range (to "
                        f"{1 / prep.s_hi:.1f} Å): use a larger box than {box} or a lower res_high_A")
    lo, hi = params.defocus_min_A, params.defocus_max_A
    if x[0] < lo + 0.5 * params.defocus_step_A or x[0] > hi - 0.5 * params.defocus_step_A:
        warnings.append(f"the mean defocus {x[0]:.0f} Å lies at the edge of the search range [{lo:.0f}, {hi:.0f}] Å")
    full = spectrum_grid(box, optics.pixel_size, mask_cross=False, half=False, device=dev)
    chi, _ = ctf_phase_and_envelope(optics.ctf_params(u, v, ang, ph if params.phase_shift else 0.0),
                                    full.s2[None], full.cos2, full.sin2)
    model = torch.zeros(box * box, device=dev)
    model[full.index] = (torch.sin(chi[0]) ** 2).to(dev)
    spec = torch.zeros(box * box, device=dev)
    spec[full.index] = ((prep.amp.reshape(-1)[full.index] - _interp(full.s, s_bins, bg))
                        / _interp(full.s, s_bins, env)).clamp(-3, 4)
    return CTFFit(defocus_u_A=u, defocus_v_A=v, angle_deg=ang, phase_shift_deg=ph, cc=cc,
                  max_resolution_A=float(max_res), astigmatism_A=u - v,
                  aliasing_resolution_A=None if s_alias is None else 1.0 / s_alias, warnings=warnings,
                  spectrum=spec.reshape(box, box), model=model.reshape(box, box), freq_1d=curves["freq"],
                  spectrum_1d=curves["spectrum"], fit_1d=curves["fit"], quality_1d=curves["quality"])
