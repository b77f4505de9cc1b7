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
which runs on one intra-op thread (:func:`one_cpu_thread`); the power spectrum before it is
an FFT of the tiles and scales with the micrograph.

The CTF is :mod:`cryolens.core.ctf`'s (RELION ``ctf.h``): angles in degrees, defocus in Å
(underfocus positive), ``φ = atan2(ky, kx)``; U ≥ V and the angle is in (−90°, 90°].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.optimize import minimize

from cryolens.core.ctf import ctf_phase_and_envelope
from cryolens.ctf.diagnostics import aliasing_frequency, corrected_radius, windowed_cc
from cryolens.ctf.optics import Optics, chi_1d, ctf_phase_linear
from cryolens.ctf.params import CTFFitParams
from cryolens.ctf.spectrum import SpectrumGrid, background_fit, hat_basis, radial_bins, spectrum_grid

__all__ = ["CTFFit", "fit_ctf", "evaluate_ctf"]

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20  # candidate × pixel elements per batch (4 MB float32 temporaries: cache-sized, faster than larger)
_KNOTS_B, _KNOTS_E = 5, 3  # hat knots of background and envelope over the fit band
_RESTRAINT_WEIGHT = 0.02
_WEIGHT_POWER = 2.0  # pixel weights (e/σ)^p: p = 2 is the SNR (least-squares) weighting
_RESCORE = 32  # exhaustive search: best coarse-level grid points rescored on every band pixel
_SAME_START_A = 250.0  # a refinement start this close (Å, each of mean, a1, a2) to a refined optimum is skipped


@dataclass
class CTFFit:
    """Result of :func:`fit_ctf` (RELION conventions; see the module docstring).

    Attributes:
        defocus_u_A, defocus_v_A: Å, U ≥ V (``rlnDefocusU/V``); angle_deg: ``rlnDefocusAngle``.
        phase_shift_deg: degrees (``rlnPhaseShift``, 0 unless searched).
        cc: normalised cross-correlation of the normalised spectrum and CTF² over the band,
            each pixel weighted by its expected SNR (``rlnCtfFigureOfMerit``); max_resolution_A: Å up to which the rings fit
            (``rlnCtfMaxResolution``).
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
class _Target:
    """What candidates are scored against: the normalised spectrum ``y = (A − b)/e`` on the band
    pixels, centred with the weights ``w ∝ (e/σ)²`` (each pixel's expected SNR)."""

    y: torch.Tensor  # (P,) weighted-mean-free
    w: torch.Tensor  # (P,) weights, max 1

    @staticmethod
    def make(y: torch.Tensor, w: torch.Tensor) -> "_Target":
        w = w / w.max().clamp_min(1e-30)
        return _Target(y - (w * y).sum() / w.sum(), w)


def _cc(coef: torch.Tensor, grid: SpectrumGrid, target: _Target, optics: Optics) -> torch.Tensor:
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


def _penalty(coef: torch.Tensor, params: CTFFitParams) -> torch.Tensor:
    r = params.astigmatism_restraint_A
    if r is None:
        return torch.zeros(len(coef), dtype=coef.dtype, device=coef.device)
    astig = 2 * torch.sqrt(coef[:, 1] ** 2 + coef[:, 2] ** 2)
    return _RESTRAINT_WEIGHT * ((astig - r).clamp_min(0) / r) ** 2


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


# ------------------------------------------------------------------------------------ stages


@dataclass
class _Prepared:
    """Amplitude spectrum and its band geometry."""

    amp: torch.Tensor  # (box, box) centred amplitude
    grid: SpectrumGrid  # band pixels
    all_grid: SpectrumGrid  # every pixel of the half plane up to the corners
    s_lo: float
    s_hi: float
    box: int
    shell_s: torch.Tensor  # (box//2+1,) 1/Å
    shell_sd: torch.Tensor  # standard deviation of A within each shell


def _prepare(spectrum: torch.Tensor, optics: Optics, params: CTFFitParams) -> _Prepared:
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
    return _Prepared(amp, grid, all_grid, s_lo, s_hi, box, shell_s, sd)


def _search_1d(prep: _Prepared, optics: Optics, params: CTFFitParams):
    """Mean defocus (and phase) from the rotational average; returns (mean Å, phase rad, bins s, bg, env)."""
    dev = prep.amp.device
    nb = prep.box // 2 + 1
    prof, _ = radial_bins(prep.amp.reshape(-1)[prep.all_grid.index], prep.all_grid.radius, n_bins=nb)
    s_bins = torch.arange(nb, device=dev, dtype=torch.float32) / (prep.box * optics.pixel_size)
    band = (s_bins >= prep.s_lo) & (s_bins <= prep.s_hi)
    s, y = s_bins[band], prof[band]
    hb, he = hat_basis(s, prep.s_lo, prep.s_hi, _KNOTS_B), hat_basis(s, prep.s_lo, prep.s_hi, _KNOTS_E)
    phases = (torch.arange(params.phase_min_deg, params.phase_max_deg + 1e-6, params.phase_step_deg)
              if params.phase_shift else torch.zeros(1))
    dfs = torch.arange(params.defocus_min_A, params.defocus_max_A + 1e-6, params.defocus_step_A)

    def best_of(means: torch.Tensor, phs: torch.Tensor):
        mm, pp = torch.meshgrid(means, torch.deg2rad(phs), indexing="ij")
        mm, pp = mm.reshape(-1).to(dev), pp.reshape(-1).to(dev)
        models = torch.sin(chi_1d(s, mm, pp, optics)) ** 2
        score, bg, env = background_fit(y, models, hb, he)
        i = int(torch.argmax(score))
        return float(mm[i]), float(pp[i]), bg[i], env[i], float(score[i])

    m, p, *_ = best_of(dfs, phases)
    fine_m = m + torch.linspace(-params.defocus_step_A, params.defocus_step_A, 41)
    fine_p = (math.degrees(p) + torch.linspace(-params.phase_step_deg, params.phase_step_deg, 11)
              if params.phase_shift else phases)
    m, p, bg, env, _ = best_of(fine_m.clamp_min(1.0), fine_p)
    return m, p, s, bg, env


def _normalise(prep: _Prepared, grid: SpectrumGrid, s_bins: torch.Tensor, bg: torch.Tensor,
               env: torch.Tensor) -> _Target:
    """``y = (A − b(s)) / e(s)`` on ``grid``'s pixels (``e`` kept above 5 % of its maximum) and the
    SNR weights ``(e/σ)²``, σ(s) being the spread of ``A`` within its shell."""
    a = prep.amp.reshape(-1)[grid.index]
    e_raw = _interp(grid.s, s_bins, env)
    e = e_raw.clamp_min(0.05 * float(env.max().clamp_min(1e-30)))
    sigma = _interp(grid.s, prep.shell_s, prep.shell_sd)
    w = (e_raw.clamp_min(0) / sigma.clamp_min(1e-30)) ** _WEIGHT_POWER
    return _Target.make((a - _interp(grid.s, s_bins, bg)) / e, w)


def _grid_candidates(m: float, p: float, optics: Optics, params: CTFFitParams, dev) -> torch.Tensor:
    """Candidate (mean, a1, a2, phase) for the 2-D search around the 1-D answer ``m`` Å, ``p`` rad.

    ``exhaustive``: mean defocus ``m ± 2·defocus_step`` in steps of ``defocus_step / 2`` (9) ×
    astigmatism 0..astigmatism_max_A in ~200 Å steps × angle 0..170° in 10° steps (× phase
    ``p ± phase_step`` when searched): ~1 600 candidates at the defaults. ``fast``: the 1-D mean
    × astigmatism {0, 250, 500, 1000} Å × angle in 22.5° steps (25 candidates). Astigmatism 0
    enters once (its angle is undefined).
    """
    f64 = dict(dtype=torch.float64)
    if params.search == "exhaustive":
        means = m + 0.5 * params.defocus_step_A * torch.arange(-4, 5, **f64)
        n_a = max(2, int(round(params.astigmatism_max_A / 200.0)) + 1)
        astig = torch.linspace(0, params.astigmatism_max_A, n_a, **f64)[1:]
        angles = torch.deg2rad(torch.arange(0, 180, 10, **f64))
        phases = (p + torch.deg2rad(torch.tensor([-1.0, 0.0, 1.0], **f64)) * params.phase_step_deg
                  if params.phase_shift else torch.tensor([p], **f64))
    else:
        means = torch.tensor([m], **f64)
        astig = torch.tensor([250.0, 500.0, 1000.0], **f64).clamp(max=max(params.astigmatism_max_A, 1))
        angles = torch.deg2rad(torch.arange(0, 180, 22.5, **f64))
        phases = torch.tensor([p], **f64)
    astig = torch.unique(astig[astig > 0])
    mm, aa, tt, pp = torch.meshgrid(means, astig, angles, phases, indexing="ij")
    half = aa / 2
    coef = torch.stack([mm, half * torch.cos(2 * tt), half * torch.sin(2 * tt), pp], -1).reshape(-1, 4)
    m0, p0 = torch.meshgrid(means, phases, indexing="ij")  # astigmatism 0
    zero = torch.stack([m0, torch.zeros_like(m0), torch.zeros_like(m0), p0], -1).reshape(-1, 4)
    return torch.cat([zero, coef]).to(dev)


def _refine(x0: np.ndarray, grid: SpectrumGrid, target: _Target, optics: Optics, params: CTFFitParams,
            ) -> tuple[np.ndarray, float]:
    """L-BFGS on (mean, a1, a2[, phase]) maximising CC − restraint penalty, with the analytic gradient.

    Runs in NumPy float64 on the CPU: one candidate at a time is latency-bound, and small
    torch ops pay thread-pool (CPU) or launch (GPU) overheads that cost 10-100× more here.
    The products use ``einsum`` (NumPy's own loops), not BLAS: BLAS would wake its thread
    pool for every call, and on a shared machine waiting for it costs more than the work.
    """
    basis = grid.basis(torch.float64).cpu().numpy()
    y = target.y.double().cpu().numpy()
    wt = target.w.double().cpu().numpy()
    wy = wt * y
    ny = math.sqrt(float(np.einsum("p,p->", wy, y)))
    sw = float(wt.sum())
    free = 4 if params.phase_shift else 3
    r = params.astigmatism_restraint_A
    k_lin = -math.pi * optics.wavelength
    scale = np.array([100.0, 100.0, 100.0, math.radians(10.0)])[:free]  # optimiser units
    weights = np.empty((3, len(y)))

    def neg_score(z: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.concatenate([z * scale, x0[free:]])
        lin = np.array([k_lin * x[0], k_lin * x[1], k_lin * x[2], optics.cs_term])
        chi = np.einsum("k,kp->p", lin, basis)
        chi -= x[3] + optics.amp_phase
        chi *= 2
        m = np.cos(chi)
        g = np.sin(chi)
        g *= -2  # dm/dχ
        mw = m * wt
        a, sm, q = float(np.einsum("p,p->", m, wy)), float(mw.sum()), float(np.einsum("p,p->", mw, m))
        var = max(q - sm * sm / sw, 1e-12)
        sd = math.sqrt(var)
        cc = -a / (ny * sd)
        np.multiply(g, wy, out=weights[0])
        np.multiply(g, wt, out=weights[1])
        np.multiply(g, mw, out=weights[2])  # d(a, sm, q/2)/dχ per pixel
        dchi = np.concatenate([k_lin * np.einsum("kp,jp->kj", weights, basis[:3]), -weights.sum(1)[:, None]], 1)
        da, dsm, dq = dchi[0], dchi[1], 2 * dchi[2]
        dvar = dq - 2 * sm * dsm / sw
        dcc = -(da * sd - a * dvar / (2 * sd)) / (ny * var)
        if r is not None:
            astig = 2 * math.hypot(x[1], x[2])
            if astig > r:
                cc -= _RESTRAINT_WEIGHT * ((astig - r) / r) ** 2
                dpen = 2 * _RESTRAINT_WEIGHT * (astig - r) / r ** 2 * 4 / astig
                dcc[1] -= dpen * x[1]
                dcc[2] -= dpen * x[2]
        return -cc, -dcc[:free] * scale

    res = minimize(neg_score, x0[:free] / scale, jac=True, method="L-BFGS-B",
                   options=dict(maxiter=200, ftol=1e-10, gtol=1e-8))
    return np.concatenate([res.x * scale, x0[free:]]), -float(res.fun)


def _coarse(grid: SpectrumGrid, target: _Target) -> tuple[SpectrumGrid, _Target]:
    """Every other band pixel along kx and ky (a quarter of them) and the target re-centred on them."""
    row, col = grid.index // grid.box, grid.index % grid.box
    keep = ((row % 2) == 0) & ((col % 2) == 0)
    return grid.select(keep), _Target.make(target.y[keep], target.w[keep])


def _search_2d(prep: _Prepared, nc: _Target, m: float, p: float, optics: Optics, params: CTFFitParams):
    """Grid search, then local refinement from the best grid points.

    ``exhaustive``: every candidate of the full grid (:func:`_grid_candidates`) is scored on a
    quarter of the band pixels (every other pixel along kx and ky: the same rings, sampled at
    half the density); the best ``_RESCORE`` are rescored on all band pixels and the best 3
    refined. ``fast``: the coarse grid is scored on all band pixels and the best 2 refined.
    Starts that lie within ``_SAME_START_A`` of an already refined optimum are skipped (they
    would converge to it).
    """
    coef = _grid_candidates(m, p, optics, params, prep.amp.device).float()
    if params.search == "exhaustive" and len(coef) > _RESCORE:
        grid_c, nc_c = _coarse(prep.grid, nc)
        score = _cc(coef, grid_c, nc_c, optics) - _penalty(coef, params)
        coef = coef[torch.topk(score, _RESCORE).indices]
    score = _cc(coef, prep.grid, nc, optics) - _penalty(coef, params)
    top = torch.argsort(score, descending=True)[: (3 if params.search == "exhaustive" else 2)]
    starts = [coef[i].double().cpu().numpy() for i in top.tolist()]
    if params.phase_shift:  # phase and defocus trade off along a long valley: start along it
        for dp in (-30.0, -15.0, 15.0, 30.0):
            x = starts[0].copy()
            x[3] += math.radians(dp)
            starts.append(x)
    best, done = None, []
    for x0 in starts:
        if any(np.abs(x0[:3] - d[:3]).max() < _SAME_START_A and abs(x0[3] - d[3]) < 1e-6 for d in done):
            continue
        x, sc = _refine(x0, prep.grid, nc, optics, params)
        done.append(x)
        if best is None or sc > best[1]:
            best = (x, sc)
    return best[0]


def _fit_resolution(x: np.ndarray, prep: _Prepared, optics: Optics, params: CTFFitParams):
    """Astigmatism-corrected 1-D spectrum, background, envelope, fit, per-shell CC and fit resolution."""
    dev = prep.amp.device
    nb = prep.box // 2 + 1
    r_eq = corrected_radius(prep.all_grid, x, optics)
    prof, cnt = radial_bins(prep.amp.reshape(-1)[prep.all_grid.index], r_eq, n_bins=nb)
    s_bins = torch.arange(nb, device=dev, dtype=torch.float32) / (prep.box * optics.pixel_size)
    s_nyq = 0.5 / optics.pixel_size
    use = (s_bins >= prep.s_lo) & (cnt > 0)
    n_b = max(_KNOTS_B, int(round(_KNOTS_B * (s_nyq - prep.s_lo) / (prep.s_hi - prep.s_lo))))
    n_e = max(_KNOTS_E, int(round(_KNOTS_E * (s_nyq - prep.s_lo) / (prep.s_hi - prep.s_lo))))
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
        see :func:`one_cpu_thread`).
    """
    params.validate()
    with one_cpu_thread(torch.as_tensor(spectrum).device):
        return _fit_ctf(spectrum, Optics(float(pixel_size), float(voltage), float(cs_mm), float(amplitude_contrast)),
                        params, progress)


def _fit_ctf(spectrum: torch.Tensor, optics: Optics, params: CTFFitParams, progress: Progress | None) -> CTFFit:
    prep = _prepare(spectrum, optics, params)
    total = 4
    step = lambda i: progress(i, total) if progress is not None else None  # noqa: E731

    m, p, s_band, bg, env = _search_1d(prep, optics, params)
    step(1)
    x = _search_2d(prep, _normalise(prep, prep.grid, s_band, bg, env), m, p, optics, params)
    step(2)
    s_bins, bg_all, env_all, _, _ = _fit_resolution(x, prep, optics, params)
    x, _ = _refine(x, prep.grid, _normalise(prep, prep.grid, s_bins, bg_all, env_all), optics, params)
    step(3)
    s_bins, bg_all, env_all, curves, max_res = _fit_resolution(x, prep, optics, params)
    target = _normalise(prep, prep.grid, s_bins, bg_all, env_all)
    xt = torch.as_tensor(x, dtype=torch.float64, device=target.y.device)[None]
    cc = float(_cc(xt, prep.grid, target, optics)[0])
    fit = _make_fit(x, cc, max_res, prep, optics, params, s_bins, bg_all, env_all, curves)
    step(4)
    return fit


def _make_fit(x: np.ndarray, cc: float, max_res: float, prep: _Prepared, optics: Optics, params: CTFFitParams,
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
        prep = _prepare(spectrum, optics, params)
        half = 0.5 * (defocus_u_A - defocus_v_A)
        a = math.radians(angle_deg)
        x = np.array([0.5 * (defocus_u_A + defocus_v_A), half * math.cos(2 * a), half * math.sin(2 * a),
                      math.radians(phase_shift_deg)])
        s_bins, bg, env, curves, max_res = _fit_resolution(x, prep, optics, params)
        target = _normalise(prep, prep.grid, s_bins, bg, env)
        xt = torch.as_tensor(x, dtype=torch.float64, device=target.y.device)[None]
        cc = float(_cc(xt, prep.grid, target, optics)[0])
        return _make_fit(x, cc, max_res, prep, optics, replace(params, phase_shift=phase_shift_deg != 0), s_bins, bg,
                         env, curves)
