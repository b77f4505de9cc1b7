"""One iteration of 2D classification (E-step over the particles used, then M-step).

See :mod:`cryolens.class2d.engine` for the algorithm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cryolens.class2d.data import ImageStore, particles_per_iteration, psi_grid, resolution_schedule
from cryolens.class2d.expectation import Accumulator, circular_deviation, posterior, score_batch
from cryolens.class2d.maximisation import band_to_images, images_to_band, recentre, shell_mean, update_classes
from cryolens.class2d.params import Class2DParams
from cryolens.class2d.rotation import BandRotator, inplane_matrices
from cryolens.class2d.state import Class2DState, IterationStats
from cryolens.refine.noise import NoiseModel, ShellAccumulator
from cryolens.refine.pose_search import FrequencyBand, phase_ramps, shift_grid

__all__ = ["Setup", "Sampling", "sampling_for", "run_iteration", "initial_classes"]

#: From iteration LOCAL_FROM on, shifts are searched within this many steps of each particle's current origin.
LOCAL_SHIFT_STEPS = 1.5
LOCAL_FROM = 3
#: Classes whose share falls below this fraction of the average share are reseeded.
RESEED_FRACTION = 0.2
#: Reseeding runs in the iterations before this fraction of the run (later ones settle the assignments). Stopping
#: at 70 % let one class absorb most particles of a small protein in the free iterations (haemoglobin, 1 000
#: particles, K 20: 875 of 1 000 in one class, 7 populated); at 90 % (two or three free iterations) 17 classes stay
#: populated and the median best NCC of the good classes with the truth's projections is 0.90.
RESEED_UNTIL = 0.9


@dataclass
class Setup:
    """What stays fixed over a run: the table, pixel size (Å), box (px), params, device, image mask and store."""

    table: pd.DataFrame
    pixel_size: float
    box: int
    params: Class2DParams
    device: torch.device
    mask: torch.Tensor
    images: ImageStore
    radius_a: float
    use_ctf: bool


@dataclass
class Sampling:
    """One iteration's band, rotator, psi grid (°) and matrices, shifts (px) and their phase ramps."""

    resolution: float
    band: FrequencyBand
    rotator: BandRotator
    sub: torch.Tensor
    psi: torch.Tensor
    matrices: torch.Tensor
    shifts: torch.Tensor
    ramps: torch.Tensor
    shift_step: float


def sampling_for(res: float, setup: Setup, rng: np.random.Generator, *, shifts: bool = True,
                 local: bool = False) -> Sampling:
    """Band (Fourier crop) at ``res`` Å, psi grid with a random offset, and the shift grid: within ``offset_range``,
    or within 1.5 steps when ``local`` (offsets from each particle's current origin), or just 0 if not ``shifts``."""
    p, dev = setup.params, setup.device
    band = FrequencyBand.build(setup.box, setup.box * setup.pixel_size / res, device=dev)
    sub = torch.searchsorted(setup.images.band.flat, band.flat)
    psi = psi_grid(res, setup.radius_a, p, rng).to(dev)
    step = max(p.shift_step_min, res / (6.0 * setup.pixel_size))
    radius = p.offset_range / setup.pixel_size
    if local:
        radius = min(radius, LOCAL_SHIFT_STEPS * step)
    grid = shift_grid(step, radius, device=dev) if shifts else torch.zeros(1, 2, device=dev)
    return Sampling(res, band, BandRotator(band, device=dev), sub, psi, inplane_matrices(psi).to(dev), grid,
                    phase_ramps(band, grid), step)


def _finish_classes(acc: Accumulator, smp: Sampling, setup: Setup, state: Class2DState, sigma2: torch.Tensor) -> None:
    """M-step: class averages into ``state`` (masked, recentred), their resolution, and the class weights."""
    p = setup.params
    upd = update_classes(acc.g, acc.d, smp.matrices, smp.rotator, sigma2, tau2_fudge=p.tau2_fudge,
                         pixel_size=setup.pixel_size)
    classes = band_to_images(upd.averages, smp.band) * setup.mask
    if p.center:
        classes, _ = recentre(classes, setup.mask)
        classes = classes * setup.mask
    state.classes = classes
    state.class_resolution = upd.resolution.cpu().numpy()
    mass = acc.class_mass.float()
    state.class_weights = (mass / mass.sum()).clamp_min(1e-8) if mass.sum() > 0 else state.class_weights
    state.class_weights = state.class_weights / state.class_weights.sum()
    state.sigma2 = sigma2


def initial_classes(state: Class2DState, setup: Setup, rng: np.random.Generator, assign: np.ndarray) -> None:
    """Iteration 0: read every image once (filling the cache and the images' power spectrum, the first noise model);
    class ``assign[i]`` (-1: none) is the average of its particles, each at a random in-plane angle, no shift."""
    p, dev = setup.params, setup.device
    smp = sampling_for(resolution_schedule(1, p, pixel_size=setup.pixel_size), setup, rng, shifts=False)
    k, j = p.classes, len(smp.psi)
    acc = Accumulator(k, j, len(smp.band), device=dev)
    power = ShellAccumulator(setup.box, device=dev)
    full = FrequencyBand.build(setup.box, setup.box / 2, device=dev)
    for rows, xb, cb in setup.images.first_pass(power, full):
        a = assign[rows]
        use = np.flatnonzero(a >= 0)
        if not use.size:
            continue
        r = rows[use]
        keep = torch.as_tensor(use, device=dev)
        x, ctf = xb[keep][:, smp.sub], cb[keep][:, smp.sub]
        gamma = torch.zeros(len(r), 1, k * j, device=dev)
        col = torch.as_tensor(a[use] * j + rng.integers(0, j, size=len(r)), device=dev)
        gamma[torch.arange(len(r), device=dev), 0, col] = 1.0
        acc.add(x, ctf, smp.ramps, gamma)
    sigma2 = NoiseModel(power.mean()).sigma2
    _finish_classes(acc, smp, setup, state, sigma2)
    state.class_weights = torch.full((k,), 1.0 / k, device=dev)


def _rows_for(it: int, state: Class2DState, setup: Setup, rng: np.random.Generator) -> np.ndarray:
    n = len(setup.table)
    m = particles_per_iteration(it, n, setup.params)
    rows = np.arange(n) if m >= n else rng.choice(n, m, replace=False)
    if state.seeds:
        rows = np.union1d(rows, np.fromiter(state.seeds, dtype=np.int64))
    return np.sort(rows)


def run_iteration(state: Class2DState, it: int, setup: Setup, rng: np.random.Generator,
                  progress: Callable[[int, int, int, float], None] | None = None) -> IterationStats:
    """Iteration ``it`` (1-based): E-step over this iteration's particles, M-step; updates ``state`` in place."""
    t0 = time.perf_counter()
    p, dev, apix = setup.params, setup.device, setup.pixel_size
    res = resolution_schedule(it, p, pixel_size=apix)
    smp = sampling_for(res, setup, rng, local=it >= LOCAL_FROM)
    local = it >= LOCAL_FROM
    range_px = p.offset_range / apix
    k, j, t = p.classes, len(smp.psi), len(smp.shifts)
    band = smp.band
    refs = smp.rotator.rotate(images_to_band(state.classes, band),
                              smp.matrices.transpose(-1, -2)[None].expand(k, j, 2, 2))  # (K, J, M)
    refs_flat = refs.reshape(k * j, -1)
    noise = NoiseModel(state.sigma2.clone())
    inv_w = noise.inverse_on(band) * band.weight
    seeded = sorted(set(state.seeds.values()))
    log_pi = torch.zeros(k, device=dev) if p.uniform_prior else torch.log(state.class_weights.clamp_min(1e-12))
    if seeded:
        log_pi[seeded] = -float("inf")
    log_prior = log_pi.repeat_interleave(j)
    rows_all = _rows_for(it, state, setup, rng)
    acc = Accumulator(k, j, len(band), device=dev)
    prev_class = state.particle_class[rows_all].copy()
    prev_psi, prev_shift = state.particle_psi[rows_all].copy(), state.particle_shift[rows_all].copy()
    loglik_sum, done = 0.0, 0
    for rows, xb, cb in setup.images.select(rows_all):
        x, ctf = xb[:, smp.sub], cb[:, smp.sub]
        centre = torch.as_tensor(state.particle_shift[rows] if local else np.zeros((len(rows), 2)), device=dev,
                                 dtype=torch.float32)
        if local:
            x = x * phase_ramps(band, centre)
        scores = score_batch(x, ctf, refs_flat, smp.ramps, inv_w)
        if local:  # the origin stays within the search range
            outside = (centre[:, None, :] + smp.shifts[None]).norm(dim=-1) > range_px + 1e-3
            outside[:, 0] = False
            scores = scores.masked_fill(outside[:, :, None], -float("inf"))
        post = posterior(scores, log_prior, significance=p.significance)
        gamma = post.gamma
        forced = [(i, state.seeds[int(r)]) for i, r in enumerate(rows) if int(r) in state.seeds]
        for i, c in forced:
            ti = int(torch.argmin((smp.shifts + centre[i] - torch.as_tensor(
                state.particle_shift[rows[i]], device=dev, dtype=torch.float32)).norm(dim=1)))
            ji = int(torch.argmin(circular_deviation(smp.psi, torch.tensor(float(state.particle_psi[rows[i]]),
                                                                           device=dev))))
            gamma[i].zero_()
            gamma[i, ti, c * j + ji] = 1.0
            post.best[i] = ti * k * j + c * j + ji
            post.max_prob[i], post.n_significant[i] = 1.0, 1
        acc.add(x, ctf, smp.ramps, gamma)
        best = post.best
        tb, kj = best // (k * j), best % (k * j)
        kb, jb = kj // j, kj % j
        ar = torch.arange(len(rows), device=dev)
        g3 = gamma.reshape(len(rows), t, k, j)[ar, :, kb, :]  # (B, T, J) within the best class
        pj = g3.sum(1)
        pj = pj / pj.sum(1, keepdim=True)
        dpsi = torch.remainder(smp.psi[None, :] - smp.psi[jb][:, None] + 180.0, 360.0) - 180.0
        pt = g3.sum(2)
        pt = pt / pt.sum(1, keepdim=True)
        dsh = ((smp.shifts[None] - smp.shifts[tb][:, None]) ** 2).sum(-1)
        xpow = ((x.real ** 2 + x.imag ** 2) * inv_w).sum(1)
        ll = post.log_evidence - xpow - math.log(j * t)
        loglik_sum += float(ll.sum())
        state.particle_class[rows] = kb.cpu().numpy()
        state.particle_psi[rows] = smp.psi[jb].cpu().numpy()
        state.particle_shift[rows] = (smp.shifts[tb] + centre).cpu().numpy()
        state.particle_max_prob[rows] = post.max_prob.cpu().numpy()
        state.particle_loglik[rows] = ll.cpu().numpy()
        state.particle_n_significant[rows] = post.n_significant.cpu().numpy()
        state.particle_psi_sd[rows] = torch.sqrt((pj * dpsi ** 2).sum(1)).cpu().numpy()
        state.particle_shift_sd[rows] = torch.sqrt((pt * dsh).sum(1)).cpu().numpy()
        done += len(rows)
        if progress is not None:
            progress(it, done, len(rows_all), res)
    state.seeds = {}
    resid = acc.residual_power(refs) / max(acc.n_images, 1)
    shells = shell_mean(resid.float(), band, state.sigma2.numel())
    noise.update(shells)
    _finish_classes(acc, smp, setup, state, noise.sigma2)
    reseeded = _reseed(state, it, rows_all, setup) if p.reseed else 0
    new_class = state.particle_class[rows_all]
    seen = prev_class >= 0
    same = seen & (prev_class == new_class)
    dpsi = circular_deviation(torch.as_tensor(state.particle_psi[rows_all]), torch.as_tensor(prev_psi)).numpy()
    dshift = np.linalg.norm(state.particle_shift[rows_all] - prev_shift, axis=1) * apix
    sizes = np.bincount(state.particle_class[state.particle_class >= 0], minlength=k)
    state.iteration = it
    return IterationStats(
        iteration=it, resolution_limit=res, psi_step=float(360.0 / j), shift_step=smp.shift_step * apix,
        n_shifts=t, n_particles=len(rows_all), log_likelihood=loglik_sum / max(len(rows_all), 1),
        class_change=float((seen & ~same).sum() / seen.sum()) if seen.any() else float("nan"),
        psi_change=float(dpsi[same].mean()) if same.any() else float("nan"),
        shift_change=float(dshift[same].mean()) if same.any() else float("nan"),
        class_sizes=[int(s) for s in sizes], reseeded=reseeded, seconds=time.perf_counter() - t0)


def _reseed(state: Class2DState, it: int, rows: np.ndarray, setup: Setup) -> int:
    """Mark the worst-fitting members of the largest class as the seeds of each tiny class (iterations before
    ``RESEED_UNTIL`` of the run).

    A class is tiny when its weight or its share of best assignments is below ``RESEED_FRACTION`` of the average.
    """
    p = setup.params
    if it >= math.ceil(RESEED_UNTIL * p.iterations) or p.classes < 2:
        return 0
    w = state.class_weights.cpu().numpy()
    share = np.bincount(state.particle_class[rows], minlength=p.classes) / max(len(rows), 1)
    tiny = np.flatnonzero(np.minimum(w, share) < RESEED_FRACTION / p.classes)
    if not tiny.size:
        return 0
    largest = int(np.argmax(w))
    members = rows[state.particle_class[rows] == largest]
    per = len(members) // (2 * len(tiny))
    if per < 2:
        return 0
    worst = members[np.argsort(state.particle_loglik[members], kind="stable")]
    for n, c in enumerate(tiny):
        for r in worst[n * per:(n + 1) * per]:
            state.seeds[int(r)] = int(c)
    return int(tiny.size)
