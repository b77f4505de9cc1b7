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
from cryolens.class2d.estep import (Class2DShared, SearchGrid, chunk_items, class2d_chunk, class_references,
                                    expect_batch, initial_batch, take_results)
from cryolens.class2d.expectation import Accumulator, circular_deviation
from cryolens.class2d.maximisation import band_to_images, recentre, shell_mean, update_classes, zero_mean
from cryolens.class2d.params import Class2DParams
from cryolens.class2d.rotation import BandRotator, inplane_matrices
from cryolens.class2d.state import Class2DState, IterationStats
from cryolens.core.worker import ChunkMapper
from cryolens.refine.noise import NoiseModel, ShellAccumulator
from cryolens.refine.pose_search import FrequencyBand, phase_ramps, shift_grid

__all__ = ["Setup", "Sampling", "sampling_for", "run_iteration", "initial_classes", "mask_temperature",
           "offset_variance", "normalise_scales", "scored_classes", "class_log_prior"]

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
#: With ``match_power``, the classes scored from this fraction of the run on (and never before the third
#: iteration) are power-matched (:func:`scored_classes`). From the third iteration on, the three-view test's least
#: pure class read 0.78 over data seeds 0-15 (0.82 without the match; from half the run 0.81), for the same gain on
#: the haemoglobin set (particles in pure classes 0.95 both).
MATCH_FRACTION = 0.5
MATCH_FROM = 3
#: The prior on the origins never gets narrower than this variance (px² per axis).
MIN_OFFSET_VAR = 0.25
#: With ``particle_scale``, each particle's amplitude scale is refitted from this iteration on (the first
#: iteration's classes are random-subset averages, too unlike any particle to fit a scale against).
SCALE_FROM = 2


@dataclass
class Setup:
    """What stays fixed over a run: the table, pixel size (Å), box (px), params, device, image mask and store, the
    mask diameter (Å), and the ``distributor`` that runs the E-steps in chunks of particles (None: here, batch by
    batch)."""

    table: pd.DataFrame
    pixel_size: float
    box: int
    params: Class2DParams
    device: torch.device
    mask: torch.Tensor
    images: ImageStore
    diameter_a: float
    use_ctf: bool
    distributor: ChunkMapper | None = None


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
    psi = psi_grid(res, setup.diameter_a, p, rng).to(dev)
    step = max(p.shift_step_min, res / (6.0 * setup.pixel_size))
    radius = p.offset_range / setup.pixel_size
    if local:
        radius = min(radius, LOCAL_SHIFT_STEPS * step)
    grid = shift_grid(step, radius, device=dev) if shifts else torch.zeros(1, 2, device=dev)
    return Sampling(res, band, BandRotator(band, device=dev), sub, psi, inplane_matrices(psi).to(dev), grid,
                    phase_ramps(band, grid), step)


def mask_temperature(mask: torch.Tensor) -> float:
    """``1 / mean(mask²)`` over the box: how many times the likelihood of masked images over-counts its independent
    coefficients (the mask's transform correlates neighbouring ones; for white noise the masked image's power per
    coefficient is ``mean(mask²)`` of the unmasked one, which is what RELION's noise model, estimated on unmasked
    images, scores with).

    Dividing the scores and the log prior of the last iteration by it (``temper_last``) leaves every particle's best
    pose as it is and softens the posteriors. Measured 2026-12-04 (haemoglobin, box 64, mask 80 Å: temperature 1.6;
    SNR 0.05, 20 % junk, K 20; one thread): the class average of a class's members at our poses matched the average
    of their clean projections at the same poses at NCC 0.78, at their true poses 0.92, although the two sets of
    clean projections agree at 0.98: the poses align noise to the previous averages' noise (reference bias). With
    the last iteration tempered, the median best NCC (15 Å) of the good classes with the truth's projections went
    0.890 -> 0.904 (1 000 particles, seed 1; 0.884 -> 0.899 with ``--seed 2``) and 0.895 -> 0.911 (3 000, seed 11).
    Tempering every iteration (0.927) or the last two (0.914) let one class gather up to 900 of 1 000 particles or
    moved good particles into junk-rich classes (``select classes --auto`` kept 70-80 % of the good particles of
    seed 11); a higher temperature in the last iteration (2.6) read 0.920 but its smoother averages lowered the
    particles' fit z-scores of ``select`` (good kept 82.8 -> 78.7 %). With ``tau2_fudge`` 4 (purer classes, more good
    particles kept) the last iteration runs at ``last_temperature`` (1.6) times this, 2.6 for haemoglobin (issue 15,
    measured 2026-12-04 over ``--seed`` 0-4 and data seeds 1-2; see the README's class2d section).
    """
    return 1.0 / float((mask.float() ** 2).mean())


def offset_variance(state: Class2DState, setup: Setup) -> float:
    """The variance (px² per axis) of the Gaussian prior on the particles' origins (RELION's ``sigma2_offset``),
    from the current origins: the mean over the particles assigned so far of ``|origin|² + shift_sd²`` (the best
    origin and the posterior spread about it), halved; before any is assigned, ``offset_range²``."""
    seen = state.particle_class >= 0
    if not seen.any():
        return (setup.params.offset_range / setup.pixel_size) ** 2
    o2 = (state.particle_shift[seen] ** 2).sum(1) + state.particle_shift_sd[seen] ** 2
    return max(float(o2.mean()) / 2.0, MIN_OFFSET_VAR)


def scored_classes(state: Class2DState, params: Class2DParams, it: int) -> torch.Tensor:
    """The class averages iteration ``it`` scores the images against: ``state.classes`` with, when ``match_power``
    (from :data:`MATCH_FRACTION` of the run), each live class (weight at least ``RESEED_FRACTION`` of the average;
    the empty class aside) weaker than the median live class scaled up to the median's power (sum of squares).

    Under the likelihood an image of little signal (an empty box, an edge-cut or a faint particle) fits a weak
    average best, and a class holding such images averages weaker still: without the match (and the empty class),
    one or two weak classes gathered the empty boxes and edge-cut particles together with 50-150 good particles
    that fitted worst by chance (a different set of good particles in each run). Measured 2026-12-05 on 1 000
    haemoglobin particles (box 64, 1.5 Å/px, SNR 0.05, 20 % junk; K 20, ``--seed`` 0-9; the README's class2d
    section): particles in classes of > 80 % or < 20 % junk 0.83 -> 0.95 (RELION 3.1: 0.94), good particles in
    classes of >= 20 % junk 0.12 -> 0.05. The match alone (from the third iteration, ``--seed`` 0-4) read 0.88, the
    empty class alone 0.83.
    """
    classes = state.classes
    if not params.match_power or it < max(MATCH_FROM, math.ceil(MATCH_FRACTION * params.iterations)):
        return classes
    k = params.classes
    power = (classes[:k].float() ** 2).sum((-2, -1))
    live = state.class_weights[:k] >= RESEED_FRACTION / k
    if int(live.sum()) < 2:
        return classes
    target = power[live].median()
    scale = torch.where(live & (power > 0), (target / power.clamp_min(1e-30)).sqrt().clamp_min(1.0),
                        torch.ones_like(power))
    out = classes.clone()
    out[:k] *= scale[:, None, None].to(out.dtype)
    return out


def class_log_prior(state: Class2DState, params: Class2DParams) -> torch.Tensor:
    """``(K,)`` the log prior probability of each class in the E-step: the class weights (RELION), zeros with
    ``uniform_prior``; the empty class's weight capped at the mean weight of the K classes.

    The cap stops the empty class from drawing images in by its own size (a mixture weight grows with the images it
    holds, and a larger weight draws in more). Measured 2026-12-05 on 242 real beta-galactosidase particles (K 5,
    their CTF fitted, ``--seed`` 0-5): with the weight uncapped the empty class took 27-137 of them, capped 27-42;
    on the benchmark's 1 000 haemoglobin particles (``--seed`` 0-9) pure 0.951 -> 0.965, ``select`` junk dropped /
    good kept 86.1 / 91.9 -> 85.0 / 92.7 %.
    """
    w = state.class_weights
    if params.uniform_prior:
        return torch.zeros_like(w)
    if params.empty_class:
        k = params.classes
        w = w.clone()
        w[k] = torch.minimum(w[k], w[:k].mean())
    return torch.log(w.clamp_min(1e-12))


def normalise_scales(state: Class2DState) -> None:
    """Divide the amplitude scales of the particles seen by their mean (the scale of the class averages is free:
    this keeps it that of an average particle)."""
    seen = state.particle_class >= 0
    if seen.any():
        state.particle_scale[seen] /= float(state.particle_scale[seen].mean())


def _finish_classes(acc: Accumulator, smp: Sampling, setup: Setup, state: Class2DState, sigma2: torch.Tensor) -> None:
    """M-step: class averages into ``state`` (masked, recentred), their resolution, and the class weights."""
    p = setup.params
    upd = update_classes(acc.g, acc.d, smp.matrices, smp.rotator, sigma2, tau2_fudge=p.tau2_fudge,
                         pixel_size=setup.pixel_size)
    classes = band_to_images(upd.averages, smp.band) * setup.mask
    if p.empty_class:
        classes[p.classes:] = 0.0
    if p.center:
        classes, _ = recentre(classes, setup.mask)
        classes = classes * setup.mask
    state.classes = zero_mean(classes, setup.mask)
    state.class_resolution = upd.resolution.cpu().numpy()
    state.class_resolution[p.classes:] = np.inf
    mass = acc.class_mass.float()
    state.class_weights = (mass / mass.sum()).clamp_min(1e-8) if mass.sum() > 0 else state.class_weights
    state.class_weights = state.class_weights / state.class_weights.sum()
    state.sigma2 = sigma2


def initial_classes(state: Class2DState, setup: Setup, rng: np.random.Generator, assign: np.ndarray) -> None:
    """Iteration 0: read every image once (filling the cache and the images' power spectrum, the first noise model);
    class ``assign[i]`` (-1: none) is the average of its particles, each at a random in-plane angle, no shift.

    The angles are drawn batch by batch (``batch_size`` contiguous rows, as the image batches come), so that a run
    through a distributor draws the same ones."""
    p, dev = setup.params, setup.device
    smp = sampling_for(resolution_schedule(1, p, pixel_size=setup.pixel_size), setup, rng, shifts=False)
    k, j = p.model_classes(), len(smp.psi)
    acc = Accumulator(k, j, len(smp.band), device=dev)
    power = ShellAccumulator(setup.box, device=dev)
    full = FrequencyBand.build(setup.box, setup.box / 2, device=dev)

    def columns(rows: np.ndarray) -> np.ndarray:
        a = assign[rows]
        use = a >= 0
        cols = np.full(len(rows), -1, dtype=np.int64)
        if use.any():
            cols[use] = a[use] * j + rng.integers(0, j, size=int(use.sum()))
        return cols

    if setup.distributor is not None:
        n = len(setup.table)
        cols = np.concatenate([columns(np.arange(a, min(n, a + p.batch_size))) for a in range(0, n, p.batch_size)])
        for out in _map(setup, state, "first", smp, np.arange(n), cols, desc="class2d initial classes"):
            acc.add_tensors(out["sums"])
            power.sum += out["power_sum"].to(power.sum.device)
            power.count += out["power_count"].to(power.count.device)
    else:
        for rows, xb, cb in setup.images.first_pass(power, full):
            cols = columns(rows)
            if (cols >= 0).any():
                initial_batch(acc, xb[:, smp.sub], cb[:, smp.sub], smp.ramps, torch.as_tensor(cols, device=dev), k * j)
    sigma2 = NoiseModel(power.mean()).sigma2
    _finish_classes(acc, smp, setup, state, sigma2)
    state.class_weights = torch.full((k,), 1.0 / k, device=dev)


def _map(setup: Setup, state: Class2DState, kind: str, smp: Sampling, rows: np.ndarray, labels: np.ndarray, *,
         grid: SearchGrid | None = None, classes: torch.Tensor | None = None, desc: str,
         progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """A pass (``kind`` of :class:`Class2DShared`) over the particles ``rows`` in chunks through the distributor;
    the chunks' :func:`class2d_chunk` results in order. ``grid``: the iteration's search and ``classes`` the averages
    it scores (for ``"expect"``)."""
    p, dist = setup.params, setup.distributor
    expect = grid is not None
    shared = Class2DShared(
        kind=kind, box=setup.box, pixel_size=setup.pixel_size, resolution=smp.resolution, n_classes=p.model_classes(),
        psi=smp.psi.cpu(), shifts=smp.shifts.cpu(), classes=classes.cpu() if expect else None,
        inv_w=grid.inv_w.cpu() if expect else None, log_prior=grid.log_prior.cpu() if expect else None,
        local=grid.local if expect else False, range_px=p.offset_range / setup.pixel_size,
        significance=p.significance, mask=setup.mask.cpu(), use_ctf=setup.use_ctf, batch_size=p.batch_size,
        device=str(setup.device), reader=getattr(dist, "reader", None), offset_var=grid.offset_var if expect else None,
        fit_scale=grid.fit_scale if expect else False)
    items = chunk_items(dist, setup.images.batches, setup.table, rows, state, labels, n=setup.box,
                        batch_size=p.batch_size)
    return dist.map(class2d_chunk, shared, items, desc=desc, progress=progress)


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
    k, j, t = p.model_classes(), len(smp.psi), len(smp.shifts)
    band = smp.band
    scored = scored_classes(state, p, it)
    refs = class_references(scored, band, smp.rotator, smp.matrices)  # (K, J, M)
    noise = NoiseModel(state.sigma2.clone())
    last = p.temper_last and it == p.iterations
    temperature = p.last_temperature * mask_temperature(setup.mask) if last else 1.0
    inv_w = noise.inverse_on(band) * band.weight / temperature
    seeded = sorted(set(state.seeds.values()))
    log_pi = class_log_prior(state, p) / temperature
    if seeded:
        log_pi[seeded] = -float("inf")
    offset_var = offset_variance(state, setup) * temperature if p.offset_prior else None
    grid = SearchGrid(band, refs.reshape(k * j, -1), smp.psi, smp.shifts, smp.ramps, inv_w, log_pi.repeat_interleave(j),
                      k, local, range_px, p.significance, offset_var, p.particle_scale and it >= SCALE_FROM)
    rows_all = _rows_for(it, state, setup, rng)
    acc = Accumulator(k, j, len(band), device=dev)
    prev_class = state.particle_class[rows_all].copy()
    prev_psi, prev_shift = state.particle_psi[rows_all].copy(), state.particle_shift[rows_all].copy()
    forced = np.array([state.seeds.get(int(r), -1) for r in rows_all], dtype=np.int64)
    loglik_sum, done = 0.0, 0
    if setup.distributor is not None:
        chunks_done = None if progress is None else (  # chunks done -> particles done
            lambda d, total: progress(it, round(len(rows_all) * d / total), len(rows_all), res))
        for out in _map(setup, state, "expect", smp, rows_all, forced, grid=grid, classes=scored,
                        desc=f"class2d iteration {it}",
                        progress=chunks_done):
            acc.add_tensors(out["sums"])
            take_results(state, out["rows"], out)
            loglik_sum += out["loglik_sum"]
    else:
        for rows, xb, cb in setup.images.select(rows_all):
            pos = np.searchsorted(rows_all, rows)
            got = expect_batch(grid, acc, xb[:, smp.sub], cb[:, smp.sub],
                               torch.as_tensor(state.particle_shift[rows], device=dev, dtype=torch.float32),
                               torch.as_tensor(state.particle_psi[rows], device=dev, dtype=torch.float32),
                               torch.as_tensor(forced[pos], device=dev),
                               torch.as_tensor(state.particle_scale[rows], device=dev, dtype=torch.float32))
            loglik_sum += float(got["loglik"].sum())
            take_results(state, rows, got)
            done += len(rows)
            if progress is not None:
                progress(it, done, len(rows_all), res)
    if grid.fit_scale:
        normalise_scales(state)
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
    Worst-fitting means the least log-likelihood gained over an empty image model
    (:attr:`Class2DState.particle_gain`), not the least log-likelihood: the latter ranks images by their power
    (blobs, carbon) and leaves the empty boxes and edge-cut particles, which carry little power, in the largest
    class, where they stay hidden. Measured 2026-12-04 (haemoglobin, 3 000 particles, box 64, SNR 0.05, 20 % junk,
    K 20, select --auto; seed 5, the one tuned on): largest class 1 199 -> 832, junk dropped / good kept
    81.0 / 91.2 -> 83.0 / 90.0 %.
    """
    p = setup.params
    k = p.classes  # the empty class (last, with empty_class) is neither reseeded nor split
    if it >= math.ceil(RESEED_UNTIL * p.iterations) or k < 2:
        return 0
    w = state.class_weights.cpu().numpy()[:k]
    share = np.bincount(state.particle_class[rows], minlength=p.model_classes())[:k] / max(len(rows), 1)
    tiny = np.flatnonzero(np.minimum(w, share) < RESEED_FRACTION / k)
    if not tiny.size:
        return 0
    largest = int(np.argmax(w))
    members = rows[state.particle_class[rows] == largest]
    per = len(members) // (2 * len(tiny))
    if per < 2:
        return 0
    worst = members[np.argsort(state.particle_gain[members], kind="stable")]
    for n, c in enumerate(tiny):
        for r in worst[n * per:(n + 1) * per]:
            state.seeds[int(r)] = int(c)
    return int(tiny.size)
