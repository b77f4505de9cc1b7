"""Maximum-likelihood 3D classification (RELION's ``relion_refine --K``), on the refine pose-search engine.

Model (RELION's, :mod:`cryolens.refine.pose_search`): an image is ``X = CTF·P_k(A)·e(−t) + N`` for one of
``K`` class maps, ``N`` Gaussian with a per-shell variance ``sigma²`` (one spectrum for all particles,
from the residuals at the best class and pose). Per iteration:

1. **E-step** over the alignment band (the best class's resolution + ``band_margin`` shells): for each
   particle and class ``k`` the log-likelihood ``L_k`` of the class, marginalised over the poses searched:

   * ``skip``: the input pose only;
   * ``local``: rotations ``A·exp(ω)``, ``|ω| <= local_range`` on a lattice of ``angular_step`` × shifts
     within ``offset_range`` of the current origin (``L_k`` = log-sum-exp of the scores, the same grid for
     every class), then a second pass at half the steps around the best pose. Once the poses have settled
     (``narrow``: an iteration from the last hard one on whose median angle change is below half
     ``angular_step`` and rms shift change below half ``offset_step``), every later iteration searches only
     the nearest lattice neighbours (:func:`~cryolens.class3d.estep.narrow_pass`, 7 × 5 poses instead of
     33 × 29 at the defaults, and half a step in the second pass; mode ``local-narrow`` in the log);
   * ``global``: the HEALPix grid × shifts, ``global_top_k`` best refined by local passes (``L_k`` = the best
     score); a first global iteration without input poses uses the scale-free CC score and hard assignment.

   Class posteriors ``γ_k = softmax(L_k + log π_k)`` (the first ``hard_iterations``: all weight on the most
   probable class, as K-means does, which separates classes that start from one map); the particle's pose
   is that of its most probable class.
2. **M-step**: each class's images are inserted at the class's best pose with weight ``γ_k`` into one of
   two back-projectors by ``rlnRandomSubset``; the FSC of the two halves (soft sphere) gives the class's
   resolution. The references of the next E-step are, per half set, the consensus of all classes
   (Wiener-filtered with ``tau2_fudge·SSNR`` from the consensus halves' FSC) plus each class's deviation
   from it, shrunk per shell by the deviation's half-set FSC and per voxel by the local correlation of the
   two half deviations (:mod:`cryolens.class3d.references`: a class filtered on its own differs from the
   others mostly by its reconstruction noise, which then decides the assignments and favours the larger
   class). The class priors are ``π_k = mean γ_k`` once assignments are soft (uniform before); the noise
   spectrum takes the residuals' power.

Convergence: once fewer than ``stop_change`` of the particles change class in an iteration after the hard
ones, the next iteration is the last (measured: 3 000 particles, a 60 Å lobe, skip-align: 0.3 % changed at
iteration 5, the last at 6 reached 91.9 %, as 8 iterations did); so is it after ``plateau`` iterations in a
row in which fewer than ``plateau_change`` changed (:func:`plateau_reached`): with classes that overlap, the
changes settle at a floor of ambiguous particles trading places (measured: a 40 Å lobe with local
searches stayed near 0.9 % for all 25 iterations, 79.6 %). RELION runs all ``--iter`` iterations.

The E-step of an iteration (:mod:`cryolens.class3d.estep`) runs here batch by batch, or with a
``distributor`` in chunks of particles on any compute backend, whose sums the driver adds before the M-step.

The particles of each half set are scored against the *other* half's class maps, so that no particle's
own noise is in the maps it is scored against: with a single starting map, classes scored against maps
that contain their own members lock onto noise (measured: 600 particles stayed at 50 % accuracy). The
output maps combine both halves (Wiener filter of the full-map SSNR).

Starting classes: with input poses (skip-align and local searches), the first iteration takes the
K-means clusters of the particles' coordinates along the ``K − 1`` principal directions of
heterogeneity at those poses (:mod:`cryolens.class3d.variability`, ``init = variability``); starting from
one map with random subsets or perturbed copies lets the classes lock onto noise (measured: 3 000
particles, a 60 Å lobe: 52-60 % after 12 iterations, RELION 61.5 %). Otherwise (``init = perturb`` or a
global search without poses) the starting references are ``K`` maps, or one map copied ``K`` times with
per-shell noise of ``perturb`` times its power added (seeded), low-passed to ``ini_high``; when the
particles carry poses, each reference is first scaled per shell to the data at those poses (so that the
first iteration can use the ML score). The last iteration inserts the full box, earlier ones up to
6 shells past the band (enough for the FSC that sets the next band).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from cryolens.class3d.estep import Class3DShared, ClassSetup, ClassSums, class3d_chunk, classify_batch
from cryolens.class3d.params import Class3DParams
from cryolens.class3d.references import shrunk_deviations
from cryolens.class3d.result import Class3DIteration, Class3DResult
from cryolens.class3d.variability import kmeans, variability_coordinates
from cryolens.core.worker import ChunkMapper
from cryolens.core.fourier import bandpass, ft3, ift3, radius_3d, shell_index
from cryolens.core.fsc import fsc, fsc_to_ssnr
from cryolens.core.masks import soft_sphere
from cryolens.core.projector import BackProjector, SliceGrid, prepare_volume
from cryolens.core.so3_grid import so3_grid
from cryolens.core.symmetry import symmetry_matrices
from cryolens.particles import POSE_COLUMNS, has_ctf, origins_px_from_table, rotations_from_table
from cryolens.refine.gold_standard import pose_change
from cryolens.refine.images import prepared_batches
from cryolens.refine.noise import NoiseModel, ShellAccumulator
from cryolens.refine.estep import accumulator_support, chunk_items
from cryolens.refine.pose_search import BandProjector, FrequencyBand, best_projections

__all__ = ["classify_3d", "starting_references", "plateau_reached", "poses_settled"]

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
Progress = Callable[[int, int, int, float], None]


def starting_references(maps: torch.Tensor, k: int, *, pixel_size: float, ini_high: float, perturb: float,
                        seed: int) -> torch.Tensor:
    """``(K, n, n, n)`` starting references from ``maps (M, n, n, n)`` (``M`` = 1 or ``K``), low-passed to ``ini_high`` Å.

    One map is copied ``K`` times, each copy with complex Gaussian noise of ``perturb`` times the map's
    power per shell added (generator seeded with ``seed``) before the low-pass.
    """
    if maps.shape[0] not in (1, k):
        raise ValueError(f"{maps.shape[0]} references for {k} classes; give one reference or one per class")
    n = maps.shape[-1]
    out = []
    gen = torch.Generator().manual_seed(seed)
    sh = shell_index(radius_3d(n, device=maps.device)).clamp_max(n // 2)
    for i in range(k):
        vol = maps[min(i, maps.shape[0] - 1)].float()
        if maps.shape[0] == 1 and perturb > 0:
            f = ft3(vol)
            power = torch.zeros(n // 2 + 1, device=vol.device).index_add_(0, sh.reshape(-1), (f.abs() ** 2).reshape(-1))
            count = torch.zeros(n // 2 + 1, device=vol.device).index_add_(0, sh.reshape(-1),
                                                                            torch.ones(sh.numel(), device=vol.device))
            amp = (perturb * power / count.clamp_min(1)).sqrt()[sh]
            noise = torch.complex(torch.randn(f.shape, generator=gen), torch.randn(f.shape, generator=gen))
            vol = ift3(f + noise.to(vol.device) * amp / math.sqrt(2), n)
        out.append(bandpass(vol, pixel_size=pixel_size, high_res=ini_high, ndim=3))
    return torch.stack(out)


def plateau_reached(changes: list[float], *, hard_iterations: int, iterations: int, fraction: float) -> bool:
    """Whether each of the last ``iterations`` class changes (fractions of the particles, one per iteration
    from the first) after the first ``hard_iterations`` was below ``fraction`` (never when ``iterations`` is 0)."""
    soft = changes[hard_iterations:]
    return iterations > 0 and len(soft) >= iterations and all(c < fraction for c in soft[-iterations:])


def poses_settled(h: Class3DIteration, params: Class3DParams) -> bool:
    """Whether an iteration's poses moved less than half a step of the local search (median angle, rms shift)."""
    return h.median_angle_change < params.angular_step / 2 and h.rms_shift_change < params.offset_step / 2


class _Classifier:
    def __init__(self, batches: Batches, table: pd.DataFrame, refs: torch.Tensor, *, pixel_size: float,
                 params: Class3DParams, mask: torch.Tensor | None, device: torch.device, progress: Progress | None,
                 distributor: ChunkMapper | None = None):
        p = params
        self.dist = distributor
        self.batches, self.table, self.p, self.apix, self.dev, self.progress = batches, table, p, pixel_size, device, \
            progress
        self.K, self.n, self.N = p.classes, refs.shape[-1], len(table)
        n = self.n
        self.has_poses = all(c in table.columns for c in POSE_COLUMNS)
        self.mode = p.mode(self.has_poses)
        self.use_ctf = p.ctf and has_ctf(table)
        self.sym = symmetry_matrices(p.symmetry, device=device)
        self.rot = rotations_from_table(table, device)
        self.shift = origins_px_from_table(table, device)
        self.subset = torch.as_tensor(table["rlnRandomSubset"].to_numpy().astype(np.int64), device=device)
        self.diameter = p.particle_diameter or 0.9 * n * pixel_size
        radius_px = min(self.diameter / 2 / pixel_size, n / 2 - 1)
        self.image_mask = soft_sphere(n, radius=max(radius_px - 3, 1), edge_width=5, ndim=2, device=device)
        self.sphere = soft_sphere(n, radius=max(radius_px - 3, 1), edge_width=5, ndim=3, device=device)
        self.ref_mask = mask.to(device) if mask is not None else self.sphere
        self.refs = [r.to(device) for r in starting_references(refs.cpu(), self.K, pixel_size=pixel_size,
                                                               ini_high=p.ini_high, perturb=p.perturb, seed=p.seed)]
        self.log_prior = torch.full((self.K,), -math.log(self.K), device=device)
        self.prob = torch.zeros(self.N, self.K, device=device)
        self.cls = torch.full((self.N,), -1, dtype=torch.long, device=device)
        self.loglik = torch.zeros(self.N, device=device)
        self.width = torch.full((self.N,), math.nan, device=device)
        self.full_grid = SliceGrid.build(n, device)
        self.grid = so3_grid(p.healpix_order, sym=p.symmetry, device=device).matrices if self.mode == "global" \
            else None
        self.history: list[Class3DIteration] = []
        self.start_labels: torch.Tensor | None = None
        self.narrow = False  # local searches: the narrow window once the poses have settled
        self._cache: list | None = None

    def _batches(self):
        """Prepared batches; kept in memory after the first pass when they fit in ``cache_mb``."""
        if self._cache is not None:
            yield from self._cache
            return
        per_image = self.n * (self.n // 2 + 1) * 20  # two complex64 transforms and a float32 CTF
        keep = self.N * per_image <= self.p.cache_mb * 2**20
        cache = []
        for item in prepared_batches(self.batches, self.table, pixel_size=self.apix, image_mask=self.image_mask,
                                     use_ctf=self.use_ctf, device=self.dev):
            if keep:
                cache.append(item)
            yield item
        if keep:
            self._cache = cache

    # -- before the first iteration --------------------------------------------------------------------
    def _prepass(self) -> None:
        """Noise from the images' power; with input poses, each reference scaled per shell to the data."""
        n, dev = self.n, self.dev
        full = FrequencyBand.build(n, n / 2, dev)
        band = FrequencyBand.build(n, min(n / 2, n * self.apix / self.p.ini_high + self.p.band_margin), dev)
        projs = [BandProjector(prepare_volume(r * self.ref_mask, pad=2), band) for r in self.refs]
        acc = ShellAccumulator(n, dev)
        nsh = n // 2 + 1
        num = torch.zeros(self.K, nsh, dtype=torch.float64, device=dev)
        den = torch.zeros(self.K, nsh, dtype=torch.float64, device=dev)
        for rows, masked, _, ctf in self._batches():
            acc.add(full.gather(masked), full)
            if not self.has_poses:
                continue
            x, c = band.gather(masked), band.gather(ctf)
            for k, proj in enumerate(projs):
                m = c * best_projections(proj, self.rot[rows], self.shift[rows])
                num[k].index_add_(0, band.shell, ((x * m.conj()).real * band.weight).sum(0).double())
                den[k].index_add_(0, band.shell, ((m.abs() ** 2) * band.weight).sum(0).double())
        self.noise = NoiseModel(acc.mean())
        self.scaled = self.has_poses
        if not self.has_poses:
            return
        sh = shell_index(radius_3d(n, device=dev)).clamp_max(n // 2)
        for k in range(self.K):
            ok = den[k] > 1e-12 * den[k].max().clamp_min(1e-30)
            ok[0] = False
            s = torch.where(ok, num[k] / den[k].clamp_min(1e-30), torch.zeros_like(num[k])).clamp_min(0).float()
            last = int(torch.nonzero(ok).max()) if ok.any() else 1
            s[last + 1:] = s[last]
            s[0] = s[1]
            self.refs[k] = ift3(ft3(self.refs[k]) * s[sh], n)

    # -- one iteration ---------------------------------------------------------------------------------
    def _take(self, rows: torch.Tensor, got: dict[str, torch.Tensor]) -> None:
        """Per-particle results of :func:`~cryolens.class3d.estep.classify_batch` (or a chunk) into the state."""
        self.prob[rows], self.cls[rows], self.loglik[rows] = got["prob"], got["cls"], got["loglik"]
        self.rot[rows], self.shift[rows], self.width[rows] = got["rot"], got["shift"], got["width"]

    def _expect_distributed(self, it: int, resolution: float, score: str, hard: bool, r_max: float,
                            sums: ClassSums) -> None:
        """The E-step in chunks of particles through the distributor; their sums added into ``sums``."""
        dev, n = self.dev, self.n
        shared = Class3DShared(
            params=self.p, mode=self.mode, score=score, hard=hard, has_poses=self.has_poses, r_max=r_max,
            r_insert=sums.r_insert, volumes=torch.stack([torch.stack([r * self.ref_mask for r in self.refs[h]])
                                                         for h in (1, 2)]).cpu(),
            sigma2=self.noise.sigma2.cpu(), log_prior=self.log_prior.cpu(),
            grid=None if self.grid is None else self.grid.cpu(), sym=self.sym.cpu(), image_mask=self.image_mask.cpu(),
            use_ctf=self.use_ctf, pixel_size=self.apix, device=str(dev), reader=self.dist.reader,
            start_labels=None if self.start_labels is None else self.start_labels.cpu(), narrow=self.narrow)
        items = chunk_items(self.dist, self.batches, self.table, self.rot, self.shift, self.subset, n=n,
                            batch_size=self.p.batch_size)
        cb = self.progress
        progress = None if cb is None else (  # chunks done -> particles done
            lambda done, total: cb(it, round(self.N * done / total), self.N, resolution))
        support = accumulator_support(n, 2, sums.r_insert, dev)
        for out in self.dist.map(class3d_chunk, shared, items, desc=f"class3d iteration {it}", progress=progress):
            sums.add_tensors(out["sums"], support)
            self._take(torch.as_tensor(out["rows"], device=dev), {k: out[k].to(dev) for k in
                                                                   ("prob", "cls", "loglik", "rot", "shift", "width")})

    def iterate(self, it: int, resolution: float, final: bool) -> float:
        t0 = time.perf_counter()
        p, n, dev, K = self.p, self.n, self.dev, self.K
        r_max = min(n / 2, n * self.apix / resolution + p.band_margin)
        band = FrequencyBand.build(n, r_max, dev)
        r_insert = n / 2 if final else min(n / 2, r_max + 6)  # FSC 6 shells past the band
        sums = ClassSums(K, n, dev, r_insert, self.full_grid)
        score = "ml" if self.scaled or it > 1 else "cc"
        hard = score == "cc" or it <= p.hard_iterations
        old_rot, old_shift, old_cls = self.rot.clone(), self.shift.clone(), self.cls.clone()
        if self.dist is not None:
            self._expect_distributed(it, resolution, score, hard, r_max, sums)
        else:
            setup = ClassSetup(p, self.mode, band, {h: [BandProjector(prepare_volume(r * self.ref_mask, pad=2), band)
                                                        for r in self.refs[h]] for h in (1, 2)},
                               self.noise.inverse_on(band), self.log_prior, self.grid, score, hard, self.has_poses,
                               self.sym, dev, self.narrow)
            done = 0
            for rows, masked, raw, ctf in self._batches():
                for h in (1, 2):  # each half set is classified against the other half's maps (no self-reference)
                    sel = self.subset[rows] == h
                    if sel.any():
                        r = rows[sel]
                        self._take(r, classify_batch(setup, sums, h, masked[sel], raw[sel], ctf[sel], self.rot[r],
                                                     self.shift[r], start=None if self.start_labels is None
                                                     else self.start_labels[r]))
                done += len(rows)
                if self.progress is not None:
                    self.progress(it, done, self.N, resolution)
        bps = sums.bps
        self.noise.update(sums.resid.mean())
        mass = self.prob.sum(0)
        if it >= p.hard_iterations:  # uniform priors while assignments are hard (they would favour the larger class)
            self.log_prior = torch.log((mass / self.N).clamp_min(1e-6))
            self.log_prior -= torch.logsumexp(self.log_prior, 0)
        self.curves, self.unfiltered = [], []
        halves = [[bps[k][h].reconstruct(mask_corners=False) for h in (0, 1)] for k in range(K)]  # the FSC masks them
        self.curves = [fsc(a, b, pixel_size=self.apix, mask=self.sphere) for a, b in halves]
        cons = []  # per half set: the consensus of all classes, (Wiener-filtered, unfiltered)
        for h in (0, 1):
            c = BackProjector(n, pad=2, device=dev)
            for k in range(K):
                c.add(bps[k][h])
            cons.append(c)
        plain = [c.reconstruct(mask_corners=False) for c in cons]
        common = fsc(plain[0], plain[1], pixel_size=self.apix, mask=self.sphere)
        ssnr = p.tau2_fudge * fsc_to_ssnr(np.nan_to_num(common.fsc), full_map=False)
        cons = [(c.reconstruct(ssnr=ssnr, mask_corners=False), r) for c, r in zip(cons, plain)]
        for k in range(K):
            if float(mass[k]) >= 2:  # an (almost) empty class keeps its maps
                dk, _ = shrunk_deviations(halves[k], [c[1] for c in cons], pixel_size=self.apix,
                                          mask=self.ref_mask, local_sigma=p.local_sigma)
                for h in (1, 2):
                    self.refs[h][k] = cons[h - 1][0] + dk[h - 1]
        for k in range(K):
            if final:
                bps[k][0].add(bps[k][1])
                self.unfiltered.append(bps[k][0].reconstruct().cpu())
                self.maps.append(bps[k][0].reconstruct(ssnr=p.tau2_fudge * fsc_to_ssnr(
                    np.nan_to_num(self.curves[k].fsc), full_map=True)).cpu())
        res = [c.resolution_at(0.143) for c in self.curves]
        sizes = torch.bincount(self.cls, minlength=K).cpu().tolist()
        dang = pose_change(old_rot, self.rot, self.sym) if self.mode != "skip" else torch.zeros(1)
        label = ("cc-" if score == "cc" else "") + self.mode + ("-narrow" if self.narrow else "")
        self.history.append(Class3DIteration(
            iteration=it, resolution_limit=n * self.apix / r_max, mode=label,
            class_sizes=sizes, distribution=[round(float(v), 5) for v in self.log_prior.exp()],
            class_change=float((self.cls != old_cls).float().mean()), resolutions=res,
            mean_log_likelihood=float(self.loglik.mean()), median_angle_change=float(dang.median()),
            rms_shift_change=float(((self.shift - old_shift) ** 2).sum(1).mean().sqrt()),
            seconds=time.perf_counter() - t0))
        populated = [r for r, s in zip(res, sizes) if s > 0 and math.isfinite(r)]
        return max(min(populated) if populated else resolution, 2 * self.apix)

    def run(self) -> Class3DResult:
        self._prepass()
        self.refs = {1: self.refs, 2: [r.clone() for r in self.refs]}
        self.maps: list[torch.Tensor] = []
        resolution = self.p.ini_high
        if self.has_poses and self.p.init == "variability":
            z = variability_coordinates(self._batches, self.rot, self.shift, n=self.n, pixel_size=self.apix,
                                        mask=self.ref_mask, components=self.p.init_components or self.K - 1,
                                        resolution=self.p.init_resolution, iterations=self.p.init_iterations,
                                        seed=self.p.seed, device=self.dev)
            self.start_labels = kmeans(z, self.K, seed=self.p.seed)
        p, stop = self.p, "iterations"
        for it in range(1, p.iterations + 1):
            final = it == p.iterations or stop != "iterations"
            new = self.iterate(it, resolution, final)
            self.start_labels = None
            resolution = min(resolution, new) if it > 1 else new
            if final:
                break
            last = self.history[-1]
            if it > p.hard_iterations and last.class_change < p.stop_change:
                stop = "converged"
            elif plateau_reached([h.class_change for h in self.history], hard_iterations=p.hard_iterations,
                                 iterations=p.plateau, fraction=p.plateau_change):
                stop = "plateau"
            if self.mode == "local" and p.narrow and it >= p.hard_iterations and poses_settled(last, p):
                self.narrow = True
        acc_rot = np.full(self.K, np.nan)
        acc_shift = np.full(self.K, np.nan)
        if self.mode != "skip":
            w = self.width.cpu().numpy()
            cls = self.cls.cpu().numpy()
            for k in range(self.K):
                if (cls == k).any():
                    acc_rot[k] = float(np.mean(w[cls == k])) * self.p.angular_step
                    acc_shift[k] = float(np.mean(w[cls == k])) * self.p.offset_step
        return Class3DResult(
            maps=torch.stack(self.maps), unfiltered=torch.stack(self.unfiltered), fsc=self.curves,
            probabilities=self.prob.cpu().numpy(), particle_class=self.cls.cpu().numpy(),
            max_probability=self.prob.max(1).values.cpu().numpy(), rotations=self.rot.cpu().numpy(),
            shifts=self.shift.cpu().numpy(), log_likelihood=self.loglik.cpu().numpy(),
            distribution=self.log_prior.exp().cpu().numpy(), accuracy_rotations=acc_rot, accuracy_shifts=acc_shift,
            history=self.history, stop=stop)


def classify_3d(batches: Batches, particles: pd.DataFrame, references: torch.Tensor, *, pixel_size: float,
                params: Class3DParams, mask: torch.Tensor | None = None, device: torch.device | str = "cpu",
                progress: Progress | None = None, distributor: ChunkMapper | None = None) -> Class3DResult:
    """Classify particles into ``params.classes`` 3D classes.

    Args:
        batches: called once per pass; returns an iterable of ``(row_indices, images)``, images ``(b, n, n)``
            float32 (white on black), row indices into ``particles``.
        particles: table with optics merged in, ``rlnRandomSubset`` (1/2) for the per-class FSC, CTF columns
            (used when present and ``params.ctf``) and, for skip-align and local searches, the poses
            (``rlnAngleRot/Tilt/Psi``, origins in Å).
        references: ``(M, n, n, n)`` starting maps on the particles' grid, ``M`` = 1 (perturbed per class)
            or ``params.classes``.
        pixel_size: Å per pixel of images and references.
        params: :class:`~cryolens.class3d.params.Class3DParams`.
        mask: optional ``(n, n, n)`` soft mask (0..1) applied to the references (focused classification);
            default a soft sphere of the particle diameter.
        progress: ``progress(iteration, done, total, resolution_A)`` after each batch.
        distributor: send each iteration's E-step, in chunks of particles, through a compute backend
            (:class:`cryolens.compute.estep.Distributor`); None (default) computes it here. The pass before the
            first iteration (noise spectrum, reference scaling) stays here. Results equal the in-process ones
            to float tolerance.

    Returns:
        :class:`~cryolens.class3d.result.Class3DResult`.
    """
    params.validate()
    n = references.shape[-1]
    if references.ndim != 4 or references.shape[1:] != (n, n, n):
        raise ValueError(f"references must be (M, n, n, n), got {tuple(references.shape)}")
    if "rlnRandomSubset" not in particles.columns or not particles["rlnRandomSubset"].isin([1, 2]).all():
        raise ValueError("particles need rlnRandomSubset 1/2 for every row (see cryolens.particles.assign_half_sets)")
    if params.mode(all(c in particles.columns for c in POSE_COLUMNS)) in ("skip", "local") and \
            not all(c in particles.columns for c in POSE_COLUMNS):
        raise ValueError("skip-align and local searches need the particles' poses (rlnAngleRot/Tilt/Psi)")
    if mask is not None and mask.shape != (n, n, n):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the references' {(n, n, n)}")
    if len(particles) < params.classes:
        raise ValueError(f"{len(particles)} particles cannot make {params.classes} classes")
    return _Classifier(batches, particles.reset_index(drop=True), references, pixel_size=pixel_size, params=params,
                       mask=mask, device=torch.device(device), progress=progress, distributor=distributor).run()
