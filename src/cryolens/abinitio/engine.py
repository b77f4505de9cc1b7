"""Ab-initio 3D by stochastic expectation-maximisation from random maps, resolution annealed.

An equivalent of cryoSPARC's SGD (Punjani et al. 2017) in the form of online EM (Cappé & Moulines
2009), as RELION 4's gradient-driven initial model also is:

* **start**: for each of ``starts`` random starts and each of ``K`` classes, a mini-batch is
  back-projected at random poses (uniform on SO(3)); the reconstruction is a random map with the
  particles' size and power. All starts see the same mini-batches; after ``prune_after`` iterations
  the start with the highest likelihood goes on alone.
* **E-step** per mini-batch (random particles): the resolution limit falls geometrically from
  ``ini_resolution`` to ``final_resolution``. Every particle is scored against every class on a
  HEALPix grid × a shift grid (:func:`cryolens.refine.pose_search.global_search`, ML score under a
  per-shell Gaussian noise model, CTF in the model) at ``min(resolution, global limit)``; its
  ``top_k`` best poses are each refined by local searches at the current resolution; the posterior
  over classes × poses is their softmax (with the class priors).
* **M-step**: running sums of the whitened, CTF-weighted, posterior-weighted back-projections
  (``Σ w·CTF·X/σ²`` and ``Σ w·CTF²/σ²``) fade by ``1 − 1/memory`` per iteration (a constant step: a step
  that shrinks with ``t`` froze maps that mix both hands; the final passes average all particles) and take the new
  batch; the map is their MAP estimate with a per-shell prior of the current map's power
  (``τ²``, times ``tau2_fudge``). The alignment reference is the map low-passed to the current
  resolution, its negative density set to 0, multiplied by a soft spherical solvent mask and
  re-centred on its centre of mass (:func:`cryolens.abinitio.priors.enforce_priors`).
* **final passes** over all particles at the final resolution: best class and pose per particle
  (hard assignment), random half sets into two accumulators per class, half-map FSC, the maps
  Wiener-filtered by it.

Images are kept in memory as Fourier transforms on a working box whose Nyquist is about
``final_resolution / 1.5`` (Fourier-cropped when the particles are finer); outputs are resampled
back to the particles' box and pixel size. With a ``distributor`` every pose search (a start's
mini-batch, a block of a final pass) runs in chunks of particles on any compute backend
(:mod:`cryolens.abinitio.estep`); the rest stays here, in the same order, so the run ends with
what the in-process run gives, to float tolerance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from cryolens.abinitio.estep import distributed_soft_poses
from cryolens.abinitio.params import AbinitioParams
from cryolens.abinitio.search import ImageBank, Posterior, Searcher, limited_grid, power_spectrum, working_box
from cryolens.abinitio.priors import enforce_priors
from cryolens.abinitio.state import AbinitioState
from cryolens.core.fourier import fourier_resize
from cryolens.core.fsc import FSCResult, fsc, fsc_to_ssnr
from cryolens.core.masks import soft_sphere
from cryolens.core.projector import BackProjector, SliceGrid
from cryolens.core.rotations import random_rotations
from cryolens.core.symmetry import symmetry_matrices
from cryolens.core.worker import ChunkMapper

__all__ = ["IterationRecord", "AbinitioResult", "abinitio", "working_box"]

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
Progress = Callable[[str, int, int, float], None]
OnIteration = Callable[[AbinitioState], None]


@dataclass
class IterationRecord:
    """One mini-batch iteration: alignment limit (Å), mean log-likelihood per particle of each start
    still running (``starts``: their 0-based numbers), class fractions of the first of them
    (posterior sums), seconds."""

    iteration: int
    resolution: float
    log_likelihood: list[float]
    starts: list[int]
    class_fractions: list[float]
    seconds: float


@dataclass
class AbinitioResult:
    """Maps (CPU, particles' box), per-class half-map FSCs, per-particle class and pose (NumPy, table order).

    ``classes`` are 1-based; ``rotations (N, 3, 3)`` RELION matrices; ``shifts (N, 2)`` origins in px of
    the particles' box; ``probability``: posterior of the chosen class and pose among those scored.
    ``snapshots``: ``(label, map)`` of the best start's first class at stages of the run.
    """

    maps: torch.Tensor
    fscs: list[FSCResult]
    classes: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    probability: np.ndarray
    history: list[IterationRecord] = field(default_factory=list)
    snapshots: list[tuple[str, np.ndarray]] = field(default_factory=list)
    best_start: int = 0

    @property
    def class_sizes(self) -> np.ndarray:
        return np.bincount(self.classes - 1, minlength=self.maps.shape[0])

    @property
    def best_class(self) -> int:
        """0-based index of the largest class."""
        return int(np.argmax(self.class_sizes))


class _Start:
    """One random start: per-class running sums, references and class priors."""

    def __init__(self, number: int, K: int, n: int, device: torch.device):
        self.number = number
        self.bps = [BackProjector(n, pad=2, device=device) for _ in range(K)]
        self.refs: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []
        self.log_prior = torch.full((K,), -math.log(K), device=device)
        self.ll: list[float] = []


class _Abinitio:
    def __init__(self, bank: ImageBank, params: AbinitioParams, device: torch.device, progress: Progress | None,
                 distributor: ChunkMapper | None = None):
        self.bank, self.p, self.dev, self.progress = bank, params, device, progress
        self.dist = distributor
        self.n, self.apix = bank.n, bank.pixel_size
        n = self.n
        diameter = params.particle_diameter or 0.9 * bank.box * bank.particle_pixel_size
        radius = min(diameter / 2 / self.apix, n / 2 - 1)
        self.mask = soft_sphere(n, radius=max(radius - 2, 2), edge_width=3, device=device)
        self.diameter = diameter
        self.sym = symmetry_matrices(params.symmetry, device=device)
        self.full_grid = SliceGrid.build(n, device)
        self.gen = torch.Generator().manual_seed(params.seed)
        self.searcher = Searcher(bank, params, device, diameter)
        self.history: list[IterationRecord] = []
        self.snapshots: list[tuple[str, np.ndarray]] = []

    # -- helpers ------------------------------------------------------------------------------
    def _rows(self, b: int) -> torch.Tensor:
        return torch.randperm(len(self.bank), generator=self.gen)[:min(b, len(self.bank))]

    def _soft_poses(self, rows: torch.Tensor, st: _Start, resolution: float, desc: str) -> Posterior:
        """The pose search of ``rows`` against ``st``'s references, here or in chunks through the distributor."""
        if self.dist is None:
            return self.searcher.soft_poses(rows, st.refs, st.log_prior, resolution)
        return distributed_soft_poses(self.dist, self.searcher, rows, st.refs, st.log_prior, resolution, desc=desc)

    def _limit(self, bp: BackProjector, r_max: float) -> None:
        bp.grid = limited_grid(self.full_grid, r_max)

    def _reconstruct(self, bp: BackProjector, ref: torch.Tensor | None) -> torch.Tensor:
        if ref is None:
            return bp.reconstruct()
        tau2 = power_spectrum(ref) * self.p.tau2_fudge
        return bp.reconstruct(ssnr=(bp.shell_weights() * tau2).clamp_min(1e-12))

    def _reference(self, vol: torch.Tensor, resolution: float) -> torch.Tensor:
        return enforce_priors(vol, pixel_size=self.apix, resolution=resolution, mask=self.mask)

    # -- the run --------------------------------------------------------------------------------
    def _init_start(self, s: int, resolution: float) -> _Start:
        p, K = self.p, self.p.classes
        st = _Start(s, K, self.n, self.dev)
        r_max = self.searcher.r_max(resolution)
        for k in range(K):
            rows = self._rows(p.batch_size)
            rot = random_rotations(len(rows), generator=self.gen).to(self.dev)
            x, c = self.bank.whitened(rows, self.searcher.inv_sigma_grid())
            self._limit(st.bps[k], r_max + 2)
            st.bps[k].insert(x, rot, None, c, symmetry=self.sym)
            vol = st.bps[k].reconstruct()
            st.maps.append(vol)
            st.refs.append(self._reference(vol, resolution))
        return st

    def _iterate(self, t: int, starts: list[_Start], resolution: float) -> None:
        p = self.p
        t0 = time.perf_counter()
        rows = self._rows(p.batch_size)
        r_max = self.searcher.r_max(resolution)
        decay = 1.0 - 1.0 / p.memory
        lls = []
        fractions: list[float] = []
        for si, st in enumerate(starts):
            post = self._soft_poses(rows, st, resolution, f"abinitio iteration {t + 1} start {st.number + 1}")
            lls.append(float(post.log_likelihood.mean()))
            st.ll.append(lls[-1])
            w = post.weights  # (B, K, J)
            st.log_prior = torch.log((0.8 * st.log_prior.exp() + 0.2 * w.sum((0, 2)) / len(rows)).clamp_min(1e-6))
            st.log_prior = st.log_prior - torch.logsumexp(st.log_prior, 0)
            for k in range(p.classes):
                bp = st.bps[k]
                bp.acc *= decay
                self._limit(bp, r_max + 2)
                wk = w[:, k]  # (B, J)
                keep = wk > 1e-3
                if keep.any():
                    b_idx, j_idx = torch.nonzero(keep, as_tuple=True)
                    x, c = self.bank.whitened(rows[b_idx.cpu()], self.searcher.inv_sigma_grid(),
                                              weights=wk[b_idx, j_idx])
                    bp.insert(x, post.rotations[b_idx, k, j_idx], post.shifts[b_idx, k, j_idx], c,
                              symmetry=self.sym)
                st.maps[k] = self._reconstruct(bp, st.maps[k])
                st.refs[k] = self._reference(st.maps[k], resolution)
            if si == 0:
                fractions = [float(f) for f in w.sum((0, 2)) / len(rows)]
            if si == 0 or len(starts) == 1:
                self.searcher.update_noise(post.residual_power)
        self.history.append(IterationRecord(t + 1, resolution, lls, [st.number for st in starts], fractions,
                                            time.perf_counter() - t0))
        if self.progress is not None:
            self.progress("iterations", t + 1, p.iterations, resolution)

    def _final_pass(self, st: _Start, resolution: float, label: str):
        p, K, N = self.p, self.p.classes, len(self.bank)
        halves = [[BackProjector(self.n, pad=2, device=self.dev) for _ in range(2)] for _ in range(K)]
        half_of = torch.randint(0, 2, (N,), generator=self.gen)
        cls = torch.zeros(N, dtype=torch.long)
        rots = torch.zeros(N, 3, 3)
        shifts = torch.zeros(N, 2)
        prob = torch.zeros(N)
        chunk = max(p.batch_size, 256)
        for b0 in range(0, N, chunk):
            rows = torch.arange(b0, min(N, b0 + chunk))
            post = self._soft_poses(rows, st, resolution, f"abinitio {label} rows {b0 + 1}-{int(rows[-1]) + 1}")
            flat = post.weights.reshape(len(rows), -1)
            best = flat.argmax(1)
            k, j = best // post.weights.shape[2], best % post.weights.shape[2]
            ar = torch.arange(len(rows), device=self.dev)
            R, sh = post.rotations[ar, k, j], post.shifts[ar, k, j]
            cls[rows], rots[rows], shifts[rows] = k.cpu(), R.cpu(), sh.cpu()
            prob[rows] = flat[ar, best].cpu()
            x, c = self.bank.whitened(rows, self.searcher.inv_sigma_grid())
            for kk in range(K):
                for h in range(2):
                    sel = ((k.cpu() == kk) & (half_of[rows] == h)).to(self.dev)
                    if sel.any():
                        halves[kk][h].insert(x[sel], R[sel], sh[sel], c[sel], symmetry=self.sym)
            self.searcher.update_noise(post.residual_power)
            if self.progress is not None:
                self.progress(label, int(rows[-1]) + 1, N, resolution)
        maps, curves = [], []
        for kk in range(K):
            h1, h2 = (halves[kk][h].reconstruct() for h in range(2))
            curve = fsc(h1, h2, pixel_size=self.apix, mask=self.mask)
            halves[kk][0].add(halves[kk][1])
            full = halves[kk][0].reconstruct(ssnr=fsc_to_ssnr(curve.fsc, full_map=True))
            maps.append(full)
            curves.append(curve)
        return maps, curves, cls, rots, shifts, prob

    def state(self, step: int, starts: list[_Start], best: int) -> AbinitioState:
        """The run after finished ``step`` (CPU copies), to continue from it."""
        cpu = lambda x: x.detach().cpu().clone()  # noqa: E731
        return AbinitioState(
            iteration=step, starts=[st.number for st in starts], best_start=best,
            sums=torch.stack([torch.stack([cpu(bp.acc) for bp in st.bps]) for st in starts]),
            maps=torch.stack([torch.stack([cpu(m) for m in st.maps]) for st in starts]),
            references=torch.stack([torch.stack([cpu(r) for r in st.refs]) for st in starts]),
            log_prior=torch.stack([cpu(st.log_prior) for st in starts]),
            log_likelihood=[list(st.ll) for st in starts], sigma2=cpu(self.searcher.noise.sigma2),
            generator=self.gen.get_state(), history=[asdict(h) for h in self.history],
            snapshot_labels=[label for label, _ in self.snapshots],
            snapshots=torch.stack([torch.as_tensor(v) for _, v in self.snapshots]), pixel_size=self.apix)

    def restore(self, state: AbinitioState) -> tuple[list[_Start], int]:
        """Starts, kept start, noise, generator, history and snapshots from ``state``."""
        K, n = self.p.classes, self.n
        S = len(state.starts)
        if tuple(state.maps.shape) != (S, K, n, n, n) or state.sums.shape[:2] != (S, K):
            raise ValueError(f"the saved state has maps {tuple(state.maps.shape)}, this run needs "
                             f"({S}, {K}, {n}, {n}, {n})")
        starts = []
        for i, number in enumerate(state.starts):
            st = _Start(number, K, n, self.dev)
            for k, bp in enumerate(st.bps):
                bp.acc = state.sums[i, k].to(self.dev).clone()
            st.maps = [state.maps[i, k].to(self.dev).clone() for k in range(K)]
            st.refs = [state.references[i, k].to(self.dev).clone() for k in range(K)]
            st.log_prior = state.log_prior[i].to(self.dev).clone()
            st.ll = list(state.log_likelihood[i])
            starts.append(st)
        self.searcher.noise.sigma2 = state.sigma2.clone()
        self.gen.set_state(state.generator.clone())
        self.history = [IterationRecord(**h) for h in state.history]
        self.snapshots = [(label, v.numpy().copy()) for label, v in zip(state.snapshot_labels, state.snapshots)]
        return starts, state.best_start

    def run(self, resume: AbinitioState | None = None, on_iteration: OnIteration | None = None) -> AbinitioResult:
        p = self.p
        T = p.iterations
        schedule = [p.ini_resolution * (p.final_resolution / p.ini_resolution) ** (t / (T - 1)) for t in range(T)]
        if resume is None:
            starts = [self._init_start(s, schedule[0]) for s in range(p.starts)]
            self.snapshots.append(("random start", starts[0].refs[0].cpu().numpy()))
            best, done = 0, 0
        else:
            (starts, best), done = self.restore(resume), resume.iteration
        for t in range(done, T):
            self._iterate(t, starts, schedule[t])
            if len(starts) > 1 and t + 1 == p.prune_after:
                window = min(3, t + 1)
                scores = [float(np.mean(s.ll[-window:])) for s in starts]
                starts = [starts[int(np.argmax(scores))]]
                best = starts[0].number
            if t + 1 == max(1, T // 3):
                self.snapshots.append((f"iteration {t + 1} ({schedule[t]:.0f} Å)", starts[0].refs[0].cpu().numpy()))
            if t + 1 == T:
                self.snapshots.append((f"iteration {T} ({schedule[-1]:.0f} Å)", starts[0].refs[0].cpu().numpy()))
            if on_iteration is not None:
                on_iteration(self.state(t + 1, starts, best))
        st = starts[0]
        for i in range(max(0, done - T), p.final_passes):
            maps, curves, cls, rots, shifts, prob = self._final_pass(st, p.final_resolution, f"final pass {i + 1}")
            if i + 1 < p.final_passes:
                st.maps = maps
                st.refs = [self._reference(m, p.final_resolution) for m in maps]
                if on_iteration is not None:
                    on_iteration(self.state(T + i + 1, starts, best))
        n_out = self.bank.box
        out = torch.stack([fourier_resize(m.cpu(), n_out, ndim=3) for m in maps])
        self.snapshots.append(("final map", out[0].numpy()))
        scale = self.apix / self.bank.particle_pixel_size
        curves_out = [FSCResult(c.shell, c.frequency, c.resolution, c.fsc, c.pixel_size, c.n) for c in curves]
        return AbinitioResult(out, curves_out, cls.numpy() + 1, rots.numpy(), shifts.numpy() * scale, prob.numpy(),
                              self.history, self.snapshots, best)


def abinitio(batches: Batches, particles: pd.DataFrame, *, pixel_size: float, params: AbinitioParams,
             device: torch.device | str = "cpu", progress: Progress | None = None,
             on_iteration: OnIteration | None = None, resume: AbinitioState | None = None,
             distributor: ChunkMapper | None = None) -> AbinitioResult:
    """Initial maps and poses from particles without poses.

    Args:
        batches: called once; returns an iterable of ``(row_indices, images)`` with images ``(b, n, n)``
            float32 (white on black) and row indices into ``particles``. All images are held in memory
            (Fourier transforms on the working box, about ``8·N·w²/2`` bytes for ``N`` particles, box ``w``).
        particles: table with optics merged in; CTF columns used when present (and ``params.ctf``).
            Poses in the table are ignored.
        pixel_size: Å per pixel of the images.
        params: :class:`AbinitioParams` (unset resolution limits follow :meth:`AbinitioParams.with_limits`).
        progress: ``progress(stage, done, total, resolution_A)``.
        on_iteration: called with an :class:`AbinitioState` after every step (mini-batch iteration or
            final pass) but the last one (the job saves it, so that a killed run can continue).
        resume: a state from ``on_iteration`` of an earlier run on the same particles and params: the
            run continues after its step and gives the same result as the uninterrupted run.
        distributor: run every pose search in chunks of particles through a compute backend
            (:class:`cryolens.compute.estep.Distributor`; the chunks carry the images' transforms from here);
            None computes here.

    Returns:
        :class:`AbinitioResult`.
    """
    params.validate()
    if len(particles) < params.classes:
        raise ValueError(f"{len(particles)} particles cannot make {params.classes} classes")
    dev = torch.device(device)
    bank = ImageBank.load(batches, particles.reset_index(drop=True), pixel_size=pixel_size, n_work=None,
                          params=replace(params, final_resolution=params.final_limit(pixel_size)), device=dev)
    params = params.with_limits(pixel_size, bank.box)
    return _Abinitio(bank, params, dev, progress, distributor).run(resume, on_iteration)
