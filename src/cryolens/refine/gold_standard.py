"""Gold-standard 3D auto-refinement (RELION's ``--auto_refine`` scheme, hard assignment).

Each half set (``rlnRandomSubset`` 1/2) is aligned only against its own reference and
reconstructed into its own accumulator; the halves meet only in the FSC, which sets the
resolution, the next band limit, the Wiener filter of the references and the sampling.

Per iteration, for every batch of images and each half:

1. the first ``global_iterations``: exhaustive search over a HEALPix grid (order ``global_order``,
   reduced by the symmetry) × shifts within ``offset_range`` (step ``offset_step``), the best
   ``global_top_k`` candidates (plus the current pose after iteration 1) refined by local passes
   at halving steps down to the current sampling (as RELION keeps searching globally until its
   ``auto_local_healpix_order``); iteration 1 uses the scale-free CC score;
2. later iterations: two local passes around the current pose (step ``s``, range ``2s``;
   then ``s/2``, range ``s``; shifts likewise) with the ML score under the per-shell noise
   model; ``s`` follows the resolution: ``s = degrees(resolution / diameter)``;
3. the best pose is inserted (CTF-weighted, symmetry-expanded) into the half's back-projector
   and the residual power feeds the half's noise spectrum.

After the pass: unfiltered half maps -> FSC (soft spherical mask) -> resolution (0.143);
references = half maps Wiener-filtered with ``SSNR = FSC/(1-FSC)``, masked by the user's mask,
or by a sphere and, below ``auto_mask_resolution``, by a dynamic mask from each half's own map.
Converged when, for two iterations, the resolution has not improved by 1 %, the sampling is the
finest the resolution asks for and the median pose change is within the angular step (and
``min_iterations`` and the global iterations are done); one final iteration then inserts the
full box (earlier ones insert only up to 1.5 × the alignment band).

After every iteration but the final one, ``on_iteration`` receives a
:class:`~cryolens.refine.state.RefineState`; passed back as ``resume``, the refinement continues
after that iteration exactly as the uninterrupted run would have (``cryolens refine --continue``).

The expectation step of an iteration (search, residuals, insertion; :mod:`cryolens.refine.estep`)
runs here batch by batch, or with a ``distributor`` in chunks of particles on any compute backend,
whose sums the driver adds before the maximisation.

Noise model vs weighted CC: we use a per-shell Gaussian noise model (ML score, sigma² from the
residuals per half), which weights every shell by its actual noise power, makes scores
log-likelihoods (so a best-pose posterior probability per particle is available), and keeps
the CTF and the reference's amplitude in the model; the first iteration uses the whitened,
scale-free CC because the user's reference is not on the data's scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cryolens.core.worker import ChunkMapper
from cryolens.core.fourier import bandpass, radius_3d, shell_index
from cryolens.core.fsc import FSCResult, fsc, fsc_to_ssnr
from cryolens.core.masks import mask_from_map, soft_sphere
from cryolens.core.projector import prepare_volume
from cryolens.core.rotations import geodesic_distance
from cryolens.core.so3_grid import healpix_step_deg, so3_grid
from cryolens.core.symmetry import symmetry_matrices
from cryolens.particles import has_ctf, origins_px_from_table, rotations_from_table
from cryolens.refine.images import prepared_batches
from cryolens.refine.noise import NoiseModel, ShellAccumulator
from cryolens.refine.params import RefineParams
from cryolens.refine.estep import (HalfSums, RefineShared, SearchSetup, accumulator_support, chunk_items,
                                   expect_batch, image_power_batch, refine_chunk)
from cryolens.refine.pose_search import BandProjector, FrequencyBand
from cryolens.refine.state import IterationStats, RefineState, Schedule

__all__ = ["RefineResult", "auto_refine", "fsc_weight", "pose_change"]

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
Progress = Callable[[int, int, int, float], None]
OnIteration = Callable[[RefineState], None]


@dataclass
class RefineResult:
    """Refined maps (CPU tensors), FSC, poses and per-particle scores (NumPy, table row order).

    ``full`` is the map from both halves weighted per shell by ``sqrt(2·FSC/(1+FSC))``;
    ``full_unweighted`` the plain ``ΣCTF·X / ΣCTF²`` map. ``shifts`` are origins in px.
    """

    half1: torch.Tensor
    half2: torch.Tensor
    full: torch.Tensor
    full_unweighted: torch.Tensor
    fsc: FSCResult
    rotations: np.ndarray
    shifts: np.ndarray
    log_likelihood: np.ndarray
    max_probability: np.ndarray
    history: list[IterationStats] = field(default_factory=list)
    converged: bool = False

    @property
    def resolution(self) -> float:
        return self.fsc.resolution_at(0.143)


def fsc_weight(volume: torch.Tensor, curve: np.ndarray) -> torch.Tensor:
    """Multiply a map per shell by ``sqrt(2·FSC/(1+FSC))`` (the full map's expected correlation with the truth)."""
    from cryolens.core.fourier import ft3, ift3
    n = volume.shape[-1]
    c = torch.as_tensor(np.clip(curve, 0, 1), dtype=torch.float32, device=volume.device)
    w = torch.sqrt(2 * c / (1 + c))
    sh = shell_index(radius_3d(n, device=volume.device)).clamp_max(n // 2)
    return ift3(ft3(volume) * w[sh], n)


def pose_change(r_old: torch.Tensor, r_new: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (degrees) between poses ``(N, 3, 3)``, minimised over the symmetry group ``sym (G, 3, 3)``."""
    return geodesic_distance((r_old[:, None] @ sym[None]), r_new[:, None]).amin(1)


class _Refiner:
    """State of one refinement (kept small: poses, per-half maps, noise spectra)."""

    def __init__(self, batches: Batches, particles: pd.DataFrame, reference: torch.Tensor, *, pixel_size: float,
                 params: RefineParams, mask: torch.Tensor | None, device: torch.device, progress: Progress | None,
                 distributor: ChunkMapper | None = None):
        self.batches, self.p, self.apix, self.dev, self.progress = batches, params, pixel_size, device, progress
        self.dist = distributor
        self.n = n = reference.shape[-1]
        self.N = len(particles)
        self.table = particles
        self.subset = torch.as_tensor(particles["rlnRandomSubset"].to_numpy().astype(np.int64))
        self.use_ctf = params.ctf and has_ctf(particles)
        self.sym = symmetry_matrices(params.symmetry, device=device)
        self.rot = rotations_from_table(particles, device)
        self.shift = origins_px_from_table(particles, device)
        self.loglik = torch.zeros(self.N, device=device)
        self.maxprob = torch.zeros(self.N, device=device)
        diameter = params.particle_diameter or 0.9 * n * pixel_size
        self.diameter = diameter
        radius_px = min(diameter / 2 / pixel_size, n / 2 - 1)
        self.image_mask = soft_sphere(n, radius=max(radius_px - 3, 1), edge_width=5, ndim=2, device=device)
        self.sphere = soft_sphere(n, radius=max(radius_px - 3, 1), edge_width=5, ndim=3, device=device)
        self.user_mask = mask.to(device) if mask is not None else None
        ref = bandpass(reference.to(device).float(), pixel_size=pixel_size, high_res=params.ini_high, ndim=3)
        self.refs = {1: ref, 2: ref.clone()}
        self.masks = {h: self.user_mask if self.user_mask is not None else self.sphere for h in (1, 2)}
        self.noise: dict[int, NoiseModel] = {}
        self.history: list[IterationStats] = []

    # -- data -------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(rows, masked image transforms, raw transforms, CTF)`` per batch, on the device."""
        return prepared_batches(self.batches, self.table, pixel_size=self.apix, image_mask=self.image_mask,
                                use_ctf=self.use_ctf, device=self.dev)

    def _image_power(self) -> None:
        n = self.n
        acc = {h: ShellAccumulator(n, self.dev) for h in (1, 2)}
        if self.dist is not None:
            shared = self._shared("power", 0, 0.0, 0.0, n / 2, n / 2)
            for out in self._map(shared, "refine image power"):
                for h in (1, 2):
                    acc[h].sum += out["sums"][f"rsum{h}"].to(self.dev)
                    acc[h].count += out["sums"][f"rcount{h}"].to(self.dev)
        else:
            full = FrequencyBand.build(n, n / 2, self.dev)
            subset = self.subset.to(self.dev)
            for rows, masked, _, _ in self._batches():
                image_power_batch(acc, full, masked, subset[rows])
        self.noise = {h: NoiseModel(acc[h].mean()) for h in (1, 2)}

    # -- distributed expectation --------------------------------------------------------------
    def _shared(self, kind: str, it: int, step: float, ostep: float, r_max: float, r_insert: float) -> RefineShared:
        search = kind == "search"
        return RefineShared(
            kind=kind, params=self.p, it=it, step=step, ostep=ostep, r_max=r_max, r_insert=r_insert,
            volumes=torch.stack([self.refs[h] * self.masks[h] for h in (1, 2)]).cpu() if search else None,
            sigma2=torch.stack([self.noise[h].sigma2 for h in (1, 2)]).cpu() if search else None,
            image_mask=self.image_mask.cpu(), grid=self._grid.cpu() if search else None, sym=self.sym.cpu(),
            use_ctf=self.use_ctf, pixel_size=self.apix, device=str(self.dev), reader=self.dist.reader)

    def _map(self, shared: RefineShared, desc: str, progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """Chunks of particles through the distributor (images read by the workers or sent from here)."""
        items = chunk_items(self.dist, self.batches, self.table, self.rot, self.shift, self.subset, n=self.n,
                            batch_size=self.p.batch_size)
        return self.dist.map(refine_chunk, shared, items, desc=desc, progress=progress)

    def _expect_distributed(self, it: int, resolution: float, step: float, ostep: float, r_max: float,
                            sums: HalfSums) -> None:
        shared = self._shared("search", it, step, ostep, r_max, sums.r_insert)
        support = accumulator_support(self.n, self.p.pad, sums.r_insert, self.dev)
        cb = self.progress
        progress = None if cb is None else (  # chunks done -> particles done
            lambda done, total: cb(it, round(self.N * done / total), self.N, resolution))
        for out in self._map(shared, f"refine iteration {it}", progress):
            r = torch.as_tensor(out["rows"], device=self.dev)
            sums.add_tensors(out["sums"], support)
            self.rot[r], self.shift[r] = out["rotations"].to(self.dev), out["shifts"].to(self.dev)
            self.loglik[r], self.maxprob[r] = out["log_likelihood"].to(self.dev), out["max_probability"].to(self.dev)

    # -- one iteration ----------------------------------------------------------------------
    def iterate(self, it: int, resolution: float, step: float, ostep: float, *,
                final: bool = False) -> tuple[dict, FSCResult]:
        import time
        t0 = time.perf_counter()
        p, n, dev = self.p, self.n, self.dev
        r_max = min(n / 2, n * self.apix / resolution + p.band_margin)
        r_insert = n / 2 if final else min(n / 2, 1.5 * r_max + 4)
        sums = HalfSums(n, p.pad, dev, r_insert)
        old_rot, old_shift = self.rot.clone(), self.shift.clone()
        if self.dist is not None:
            self._expect_distributed(it, resolution, step, ostep, r_max, sums)
        else:
            band = FrequencyBand.build(n, r_max, dev)
            setup = SearchSetup(p, it, step, ostep, band,
                                {h: BandProjector(prepare_volume(self.refs[h] * self.masks[h], pad=p.pad), band)
                                 for h in (1, 2)},
                                {h: self.noise[h].inverse_on(band) for h in (1, 2)}, self._grid, self.sym,
                                self.use_ctf, dev)
            subset = self.subset.to(dev)
            done = 0
            for rows, masked, raw, ctf in self._batches():
                r, sh, ll, mp = expect_batch(setup, sums, masked, raw, ctf, subset[rows], self.rot[rows],
                                             self.shift[rows])
                self.rot[rows], self.shift[rows], self.loglik[rows], self.maxprob[rows] = r, sh, ll, mp
                done += len(rows)
                if self.progress is not None:
                    self.progress(it, done, self.N, resolution)
        bps, resid = sums.bps, sums.resid
        for h in (1, 2):
            self.noise[h].update(resid[h].mean())
        half = {h: bps[h].reconstruct() for h in (1, 2)}
        curve = fsc(half[1], half[2], pixel_size=self.apix, mask=self.sphere)
        ssnr = fsc_to_ssnr(curve.fsc, full_map=False)
        self.refs = {h: bps[h].reconstruct(ssnr=ssnr) for h in (1, 2)}
        new_res = curve.resolution_at(0.143)
        if self.user_mask is None and p.auto_mask and new_res < p.auto_mask_resolution:
            self.masks = {h: self._auto_mask(self.refs[h], new_res) for h in (1, 2)}
        dang = pose_change(old_rot, self.rot, self.sym)
        dsh = (self.shift - old_shift).norm(dim=1)
        stats = dict(resolution=new_res, band_limit=n * self.apix / r_max, mean_angle_change=float(dang.mean()),
                     median_angle_change=float(dang.median()), rms_shift_change=float(dsh.pow(2).mean().sqrt()),
                     mode=("cc" if it == 1 else "ml") + ("-global" if it <= p.global_iterations else "-local"),
                     seconds=time.perf_counter() - t0)
        self._bps, self._half = bps, half
        return stats, curve

    def _auto_mask(self, ref: torch.Tensor, resolution: float) -> torch.Tensor:
        """Dynamic mask from a half's own map: low-passed, thresholded at 20 % of its max, dilated, soft edge.

        The recipe of ``cryolens.postprocess.auto_mask`` (both call ``core.masks.mask_from_map``), with the
        low-pass, dilation and edge following the current resolution, as cryoSPARC's dynamic mask does.
        """
        lp = max(resolution, 2.5 * self.apix, 12.0)
        m = mask_from_map(ref, pixel_size=self.apix, threshold_fraction=0.2, dilate_angstrom=max(6.0, lp / 2),
                          soft_edge_angstrom=max(12.0, lp), lowpass_angstrom=lp).to(self.dev)
        return m * self.sphere

    # -- the loop ---------------------------------------------------------------------------
    def state(self, it: int, schedule: Schedule) -> RefineState:
        """The state after finished iteration ``it`` (CPU copies), to continue with ``schedule``."""
        auto = self.masks[1] is not self.masks[2]  # dynamic masks, one per half; else the shared initial one
        return RefineState(
            iteration=it, rotations=self.rot.cpu().clone(), shifts=self.shift.cpu().clone(),
            log_likelihood=self.loglik.cpu().clone(), max_probability=self.maxprob.cpu().clone(),
            subset=self.subset.clone(), references=torch.stack([self.refs[1], self.refs[2]]).cpu(),
            masks=torch.stack([self.masks[1], self.masks[2]]).cpu() if auto else None,
            sigma2=torch.stack([self.noise[1].sigma2, self.noise[2].sigma2]).cpu(),
            schedule=dataclasses.replace(schedule), history=list(self.history),
            half1=self._half[1].cpu(), half2=self._half[2].cpu())

    def restore(self, state: RefineState) -> Schedule:
        """Take up a saved state (the images' power spectrum is not needed then); returns its schedule.

        Raises:
            ValueError: the state does not belong to these particles or this box.
        """
        if state.rotations.shape != (self.N, 3, 3) or state.references.shape[-1] != self.n:
            raise ValueError(f"the saved state holds {state.rotations.shape[0]} particles and box "
                             f"{state.references.shape[-1]}, these are {self.N} particles and box {self.n}")
        if not torch.equal(state.subset.to(torch.int64), self.subset):
            raise ValueError("the saved state's half sets differ from these particles' rlnRandomSubset")
        dev = self.dev
        self.rot, self.shift = state.rotations.to(dev).clone(), state.shifts.to(dev).clone()
        self.loglik, self.maxprob = state.log_likelihood.to(dev).clone(), state.max_probability.to(dev).clone()
        self.refs = {h: state.references[h - 1].to(dev).clone() for h in (1, 2)}
        if state.masks is not None:
            self.masks = {h: state.masks[h - 1].to(dev).clone() for h in (1, 2)}
        self.noise = {h: NoiseModel(state.sigma2[h - 1].to(dev)) for h in (1, 2)}
        for h in (1, 2):
            self.noise[h].sigma2 = state.sigma2[h - 1].to(dev).clone()  # exactly as saved
        self.history = list(state.history)
        return dataclasses.replace(state.schedule)

    def run(self, resume: RefineState | None = None, on_iteration: OnIteration | None = None) -> RefineResult:
        p = self.p
        self._grid = so3_grid(p.global_order, sym=p.symmetry, device=self.dev).matrices
        if resume is None:
            self._image_power()
            sched = Schedule(resolution=p.ini_high, step=healpix_step_deg(p.global_order) / 4,
                             offset_step=p.offset_step / 4)
            first = 1
        else:
            sched, first = self.restore(resume), resume.iteration + 1
        curve = None
        for it in range(first, p.max_iterations + 1):
            final = sched.converged or it == p.max_iterations
            step, ostep = sched.step, sched.offset_step
            st, curve = self.iterate(it, sched.resolution, step, ostep, final=final)
            self.history.append(IterationStats(iteration=it, angular_step=step if it > 1 else healpix_step_deg(
                p.global_order), offset_step=ostep if it > 1 else p.offset_step, **st))
            if final:
                break
            resolution = sched.resolution = st["resolution"]
            # RELION-like auto-sampling: halve the steps until they match the resolution
            target = max(2 * p.min_angular_step, 0.5 * math.degrees(resolution / self.diameter))
            otarget = max(2 * p.min_offset_step, resolution / (4 * self.apix))
            # (steps change only when the target is 20 % finer, so that the sampling settles)
            new_step = step if target > 0.8 * step else max(target, step / 2)
            new_ostep = ostep if otarget > 0.8 * ostep else max(otarget, ostep / 2)
            finest = new_step >= step - 1e-9 and new_ostep >= ostep - 1e-9
            settled = st["median_angle_change"] <= step and st["rms_shift_change"] <= 2 * ostep
            sched.stall = sched.stall + 1 if (resolution > 0.99 * sched.best and finest and settled) else 0
            sched.best = min(sched.best, resolution)
            sched.step, sched.offset_step = new_step, new_ostep
            # converged: one more (final) iteration inserts the full box with these poses' sampling
            sched.converged = it + 1 >= max(2, p.min_iterations) and it >= p.global_iterations and sched.stall >= 2
            if on_iteration is not None:
                on_iteration(self.state(it, sched))
        if curve is None:
            raise ValueError(f"the saved state is at iteration {first - 1}, the last of --max-iter "
                             f"{p.max_iterations}: nothing is left to run")
        bps = self._bps
        half1, half2 = bps[1].reconstruct(), bps[2].reconstruct()
        bps[1].add(bps[2])
        full = bps[1].reconstruct()
        return RefineResult(half1.cpu(), half2.cpu(), fsc_weight(full, curve.fsc).cpu(), full.cpu(), curve,
                            self.rot.cpu().numpy(), self.shift.cpu().numpy(), self.loglik.cpu().numpy(),
                            self.maxprob.cpu().numpy(), self.history, sched.converged)


def auto_refine(batches: Batches, particles: pd.DataFrame, reference: torch.Tensor, *, pixel_size: float,
                params: RefineParams, mask: torch.Tensor | None = None, device: torch.device | str = "cpu",
                progress: Progress | None = None, on_iteration: OnIteration | None = None,
                resume: RefineState | None = None, distributor: ChunkMapper | None = None) -> RefineResult:
    """Refine poses and reconstruct gold-standard half maps.

    Args:
        batches: called once per pass, returns an iterable of ``(row_indices, images)`` with
            images ``(b, n, n)`` float32 (white on black) and row indices into ``particles``.
        particles: table with optics merged in, CTF columns and ``rlnRandomSubset`` (1/2).
            Existing poses are ignored by the global first iteration.
        reference: ``(n, n, n)`` starting map on the particles' grid (low-passed to ``ini_high`` here).
        pixel_size: Å per pixel of images and reference.
        params: :class:`RefineParams`.
        mask: optional ``(n, n, n)`` soft reference mask (0..1) used instead of the automatic one.
        progress: ``progress(iteration, done, total, resolution_A)`` after each batch.
        on_iteration: called with the :class:`~cryolens.refine.state.RefineState` after every iteration
            but the final one (the job saves it, so that a killed run can continue).
        resume: a state from ``on_iteration`` of an earlier run on the same particles, reference,
            mask and params: the refinement continues after its iteration and gives the same result
            as the uninterrupted run (bitwise on the CPU with the same thread count; on a GPU to float
            tolerance, its atomic additions being unordered).
        distributor: send each iteration's expectation step, in chunks of particles, through a compute
            backend (:class:`cryolens.compute.estep.Distributor`); None (default) computes it here, batch
            by batch. The result equals the in-process one to float tolerance (sums in another order).

    Returns:
        :class:`RefineResult`.
    """
    params.validate()
    n = reference.shape[-1]
    if reference.shape != (n, n, n):
        raise ValueError(f"the reference must be a cubic map, got {tuple(reference.shape)}")
    if "rlnRandomSubset" not in particles.columns or not particles["rlnRandomSubset"].isin([1, 2]).all():
        raise ValueError("particles need rlnRandomSubset 1/2 for every row (see cryolens.particles.assign_half_sets)")
    if mask is not None and mask.shape != reference.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the reference's {tuple(reference.shape)}")
    dev = torch.device(device)
    return _Refiner(batches, particles.reset_index(drop=True), reference, pixel_size=pixel_size, params=params,
                    mask=mask, device=dev, progress=progress, distributor=distributor).run(resume, on_iteration)
