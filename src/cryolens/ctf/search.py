"""The searches of the CTF fit (:func:`cryolens.ctf.fit_ctf`, steps 2-3 of :mod:`cryolens.ctf.fit`):
the 1-D mean-defocus search on the rotational average, the 2-D grid of candidate
``(mean, a1, a2, phase)`` and the L-BFGS refinement with the analytic gradient.

Defocus in Å, phase in radians, frequencies in 1/Å; candidates as in :mod:`cryolens.ctf.scoring`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize

from cryolens.ctf.optics import Optics, chi_1d
from cryolens.ctf.params import CTFFitParams
from cryolens.ctf.scoring import KNOTS_BACKGROUND, KNOTS_ENVELOPE, PreparedSpectrum, Target, weighted_cc
from cryolens.ctf.spectrum import SpectrumGrid, background_fit, hat_basis, radial_bins

__all__ = ["search_1d", "grid_candidates", "refine", "search_2d"]

_RESTRAINT_WEIGHT = 0.02
_RESCORE = 32  # exhaustive search: best coarse-level grid points rescored on every band pixel
_SAME_START_A = 250.0  # a refinement start this close (Å, each of mean, a1, a2) to a refined optimum is skipped


def _penalty(coef: torch.Tensor, params: CTFFitParams) -> torch.Tensor:
    r = params.astigmatism_restraint_A
    if r is None:
        return torch.zeros(len(coef), dtype=coef.dtype, device=coef.device)
    astig = 2 * torch.sqrt(coef[:, 1] ** 2 + coef[:, 2] ** 2)
    return _RESTRAINT_WEIGHT * ((astig - r).clamp_min(0) / r) ** 2


def search_1d(prep: PreparedSpectrum, optics: Optics, params: CTFFitParams):
    """Mean defocus (and phase) from the rotational average; returns (mean Å, phase rad, bins s, bg, env)."""
    dev = prep.amp.device
    nb = prep.box // 2 + 1
    prof, _ = radial_bins(prep.amp.reshape(-1)[prep.all_grid.index], prep.all_grid.radius, n_bins=nb)
    s_bins = torch.arange(nb, device=dev, dtype=torch.float32) / (prep.box * optics.pixel_size)
    band = (s_bins >= prep.s_lo) & (s_bins <= prep.s_hi)
    s, y = s_bins[band], prof[band]
    hb, he = hat_basis(s, prep.s_lo, prep.s_hi, KNOTS_BACKGROUND), hat_basis(s, prep.s_lo, prep.s_hi, KNOTS_ENVELOPE)
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


def grid_candidates(m: float, p: float, optics: Optics, params: CTFFitParams, dev) -> torch.Tensor:
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


def refine(x0: np.ndarray, grid: SpectrumGrid, target: Target, optics: Optics, params: CTFFitParams,
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


def _coarse(grid: SpectrumGrid, target: Target) -> tuple[SpectrumGrid, Target]:
    """Every other band pixel along kx and ky (a quarter of them) and the target re-centred on them."""
    row, col = grid.index // grid.box, grid.index % grid.box
    keep = ((row % 2) == 0) & ((col % 2) == 0)
    return grid.select(keep), Target.make(target.y[keep], target.w[keep])


def search_2d(prep: PreparedSpectrum, nc: Target, m: float, p: float, optics: Optics, params: CTFFitParams):
    """Grid search, then local refinement from the best grid points.

    ``exhaustive``: every candidate of the full grid (:func:`grid_candidates`) is scored on a
    quarter of the band pixels (every other pixel along kx and ky: the same rings, sampled at
    half the density); the best ``_RESCORE`` are rescored on all band pixels and the best 3
    refined. ``fast``: the coarse grid is scored on all band pixels and the best 2 refined.
    Starts that lie within ``_SAME_START_A`` of an already refined optimum are skipped (they
    would converge to it).
    """
    coef = grid_candidates(m, p, optics, params, prep.amp.device).float()
    if params.search == "exhaustive" and len(coef) > _RESCORE:
        grid_c, nc_c = _coarse(prep.grid, nc)
        score = weighted_cc(coef, grid_c, nc_c, optics) - _penalty(coef, params)
        coef = coef[torch.topk(score, _RESCORE).indices]
    score = weighted_cc(coef, prep.grid, nc, optics) - _penalty(coef, params)
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
        x, sc = refine(x0, prep.grid, nc, optics, params)
        done.append(x)
        if best is None or sc > best[1]:
            best = (x, sc)
    return best[0]
