"""3D classification's expectation step, per batch and per chunk of particles (for any compute backend).

:func:`classify_batch` scores one batch of one half set against every class map of the *other* half
(:func:`search_class` per class), turns the class log-likelihoods into posteriors and adds each image,
weighted by its posterior, into its class's back-projector of its own half; the residuals at the best
class and pose feed the noise accumulator. In-process, :mod:`cryolens.class3d.engine` calls it batch
after batch. Distributed, a chunk of particles (:class:`cryolens.refine.estep.ParticleChunk`) goes to a
worker with the iteration's :class:`Class3DShared` (class maps, noise spectrum, priors, search
settings; sent once per worker) and :func:`class3d_chunk` returns the chunk's sums (back-projectors
on their support, residual power) and the per-particle posteriors, classes, poses and pose widths.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cryolens.abinitio.search import limited_grid
from cryolens.core.worker import SharedOnce
from cryolens.core.projector import BackProjector, SliceGrid, prepare_volume
from cryolens.core.so3_grid import healpix_step_deg
from cryolens.refine.estep import ParticleChunk, accumulator_support
from cryolens.refine.images import prepared_batches
from cryolens.refine.noise import NoiseModel, ShellAccumulator
from cryolens.refine.pose_search import (BandProjector, Candidates, FrequencyBand, SearchData, best_projections,
                                         global_search, local_search, local_search_many,
                                         shift_grid)

__all__ = ["ClassSetup", "ClassSums", "Class3DShared", "pose_width", "search_class", "local_first_pass",
           "narrow_pass", "local_second_pass", "skip_scores", "classify_batch", "class3d_chunk"]


def pose_width(score: torch.Tensor, log_evidence: torch.Tensor) -> torch.Tensor:
    """Width of a pose posterior in grid steps from its maximum on a 5-D grid (3 angles, 2 shifts).

    A Gaussian of standard deviation ``s`` steps peaks at ``p = ((2π)^½·s)^-5`` on the grid, so
    ``s = p^(-1/5) / (2π)^½``, floored at 0.3 (a posterior narrower than the grid).
    """
    p = torch.exp(score - log_evidence).clamp(1e-30, 1)
    return (p ** (-0.2) / math.sqrt(2 * math.pi)).clamp_min(0.3)


@dataclass
class ClassSetup:
    """What one iteration's search needs: ``projs[h]`` the band projectors of half ``h``'s class maps,
    ``inv`` ``1/sigma²`` on the band, ``log_prior (K,)``, the search ``mode`` (skip/local/global), the global
    ``grid`` or None, ``score`` (ml/cc), ``hard`` assignment, symmetry matrices ``sym``; ``narrow``: local
    searches start from :func:`narrow_pass` (the poses have settled) instead of :func:`local_first_pass`."""

    params: Any
    mode: str
    band: FrequencyBand
    projs: dict[int, list[BandProjector]]
    inv: torch.Tensor
    log_prior: torch.Tensor
    grid: torch.Tensor | None
    score: str
    hard: bool
    has_poses: bool
    sym: torch.Tensor
    device: torch.device
    narrow: bool = False


class ClassSums:
    """Back-projectors ``bps[k][h-1]`` (class ``k``, half ``h``) inserting below ``r_insert`` and the residual power."""

    def __init__(self, K: int, n: int, device: torch.device, r_insert: float, full_grid: SliceGrid | None = None):
        self.K, self.n, self.r_insert = K, n, r_insert
        grid = limited_grid(full_grid if full_grid is not None else SliceGrid.build(n, device), r_insert)
        self.bps = [[BackProjector(n, pad=2, device=device) for _ in (1, 2)] for _ in range(K)]
        for pair in self.bps:
            for bp in pair:
                bp.grid = grid
        self.resid = ShellAccumulator(n, device)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """CPU tensors: complex sums ``data (K, 2, S)`` and weights ``weight (K, 2, S)`` on
        :func:`~cryolens.refine.estep.accumulator_support`, counts and residual sums."""
        sup = accumulator_support(self.n, 2, self.r_insert, self.bps[0][0].device)
        sums = [[bp.sums_at(sup) for bp in pair] for pair in self.bps]
        return {"data": torch.stack([torch.stack([d for d, _ in pair]) for pair in sums]).cpu(),
                "weight": torch.stack([torch.stack([w for _, w in pair]) for pair in sums]).cpu(),
                "count": torch.tensor([[bp.count for bp in pair] for pair in self.bps]),
                "rsum": self.resid.sum.cpu(), "rcount": self.resid.count.cpu()}

    def add_tensors(self, t: dict[str, torch.Tensor], support: torch.Tensor) -> None:
        """Add a chunk's :meth:`to_tensors`."""
        for k, pair in enumerate(self.bps):
            for h, bp in enumerate(pair):
                bp.add_at(support, t["data"][k, h], t["weight"][k, h])
                bp.count += int(t["count"][k, h])
        self.resid.sum += t["rsum"].to(self.resid.sum.device)
        self.resid.count += t["rcount"].to(self.resid.count.device)


def search_class(s: ClassSetup, proj: BandProjector, data: SearchData, rot0: torch.Tensor, shift0: torch.Tensor
                 ) -> tuple[torch.Tensor, Candidates, torch.Tensor]:
    """``(class log-likelihood (B,), best pose, pose width in grid steps (B,))`` of one class for a batch
    whose current poses are ``rot0 (B, 3, 3)``, ``shift0 (B, 2)`` px."""
    p, dev, score = s.params, s.device, s.score
    current = Candidates(torch.zeros(len(rot0), 1, device=dev), rot0[:, None], shift0[:, None])
    nan = torch.full((len(rot0),), math.nan, device=dev)
    if s.mode == "skip":
        c = local_search(proj, data, current, angular_step=1.0, angular_range=0.0, offset_step=1.0,
                         offset_range=0.0, mode=score, max_block=p.max_block)
        return c.score[:, 0], c, nan
    if s.mode == "local":
        c1 = local_first_pass(s, proj, data, current)
        c2 = local_second_pass(s, proj, data, c1)
        ll = c1.log_evidence if score == "ml" else c2.score[:, 0]
        return ll, c2, pose_width(c1.score[:, 0], c1.log_evidence)
    g = healpix_step_deg(p.healpix_order)
    centre = shift0 if s.has_poses else torch.zeros_like(shift0)
    cand = global_search(proj, data, s.grid, shift_grid(p.offset_step, p.offset_range, device=dev),
                         top_k=p.global_top_k, mode=score, centre=centre, max_block=p.max_block)
    a, o = g / 2, p.offset_step / 2
    while True:
        cand = local_search(proj, data, cand, angular_step=a, angular_range=2 * a, offset_step=o,
                            offset_range=2 * o, mode=score, max_block=p.max_block)
        if a <= p.angular_step / 2 + 1e-9:
            break
        a, o = max(a / 2, p.angular_step / 2), max(o / 2, 0.25)
    return cand.score[:, 0], cand, pose_width(cand.score[:, 0], cand.log_evidence) * a / p.angular_step


def local_first_pass(s: ClassSetup, proj: BandProjector, data: SearchData, current: Candidates) -> Candidates:
    """Local search of ``local_range`` degrees in steps of ``angular_step`` × shifts within ``offset_range`` px
    around the current poses; its ``log_evidence`` is the class log-likelihood (ML score)."""
    p = s.params
    return local_search(proj, data, current, angular_step=p.angular_step, angular_range=p.local_range,
                        offset_step=p.offset_step, offset_range=p.offset_range, mode=s.score, max_block=p.max_block)


def narrow_pass(s: ClassSetup, projs: list[BandProjector], data: SearchData, current: Candidates
                ) -> list[Candidates]:
    """The first local pass of every class once the poses have settled: the current pose and its nearest
    lattice neighbours only (rotations within one ``angular_step``, shifts within one ``offset_step``: 7 × 5
    poses instead of :func:`local_first_pass`'s ``local_range`` ball × ``offset_range`` disc, 33 × 29 at the
    defaults); its ``log_evidence`` is the class log-likelihood (the same poses for every class)."""
    p = s.params
    return local_search_many(projs, data, current, angular_step=p.angular_step, angular_range=p.angular_step,
                             offset_step=p.offset_step, offset_range=p.offset_step, mode=s.score,
                             max_block=p.max_block)


def local_second_pass(s: ClassSetup, proj: BandProjector, data: SearchData, c1: Candidates) -> Candidates:
    """The best pose of :func:`local_first_pass` refined at half its steps (one step around it: 33 rotations ×
    13 shifts); after :func:`narrow_pass`, half a step around it (its 7 × 5 nearest half-step neighbours)."""
    p = s.params
    a, o = p.angular_step, p.offset_step
    f = 0.5 if s.narrow else 1.0
    return local_search(proj, data, c1, angular_step=a / 2, angular_range=f * a, offset_step=o / 2,
                        offset_range=f * o, mode=s.score, max_block=p.max_block)


def _local_classes(s: ClassSetup, projs: list[BandProjector], data: SearchData, rot0: torch.Tensor,
                   shift0: torch.Tensor, need: Callable[[torch.Tensor], torch.Tensor]):
    """Local searches (ML score) of every class: the first pass for all (:func:`local_first_pass` of every
    class at once, or :func:`narrow_pass` when ``s.narrow``), the second only where ``need(ll)``
    (``(B, K)`` bool from the class log-likelihoods) says the class's pose is used (a posterior weight
    worth inserting or the best class); elsewhere the first pass's pose stays. Returns
    ``(ll, rots, shifts, width)`` as :func:`search_class` per class, stacked on axis 1."""
    dev, B = s.device, len(rot0)
    current = Candidates(torch.zeros(B, 1, device=dev), rot0[:, None], shift0[:, None])
    p = s.params
    # every class's first pass at once: what does not depend on the map is computed once
    firsts = narrow_pass(s, projs, data, current) if s.narrow else local_search_many(
        projs, data, current, angular_step=p.angular_step, angular_range=p.local_range, offset_step=p.offset_step,
        offset_range=p.offset_range, mode=s.score, max_block=p.max_block)
    ll = torch.stack([c.log_evidence for c in firsts], 1)
    width = torch.stack([pose_width(c.score[:, 0], c.log_evidence) for c in firsts], 1)
    rots = torch.stack([c.rotations[:, 0] for c in firsts], 1)
    shs = torch.stack([c.shifts[:, 0] for c in firsts], 1)
    use = need(ll)
    for k, (pj, c1) in enumerate(zip(projs, firsts)):
        rows = torch.nonzero(use[:, k]).squeeze(1)
        if len(rows):
            c2 = local_second_pass(s, pj, data.select(rows), Candidates(c1.score[rows], c1.rotations[rows],
                                                                        c1.shifts[rows]))
            rots[rows, k], shs[rows, k] = c2.rotations[:, 0], c2.shifts[:, 0]
    return ll, rots, shs, width


def skip_scores(s: ClassSetup, projs: list[BandProjector], data: SearchData, rot0: torch.Tensor,
                shift0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Skip-align scores of every class at the input poses: ``(log-likelihood (B, K), models (K, B, M))``.

    ``models[k]`` is ``CTF·P_k(A)·e(+t)`` on the band, in the image frame (the residuals reuse it), from one
    projection per class and image; the score is :func:`~cryolens.refine.pose_search.local_search`'s at
    a zero search range (ML or CC), computed without shifting the images.
    """
    wv = s.band.weight * data.inv_sigma2
    models = torch.stack([data.ctf * best_projections(p, rot0, shift0) for p in projs])  # (K, B, M)
    cross = (data.x[None] * models.conj()).real.mul_(wv).sum(-1)  # (K, B)
    quad = (models.real ** 2 + models.imag ** 2).mul_(wv).sum(-1)
    ll = 2.0 * cross - quad if s.score == "ml" else cross / quad.clamp_min(1e-30).sqrt()
    return ll.T.contiguous(), models


def classify_batch(s: ClassSetup, sums: ClassSums, h: int, masked: torch.Tensor, raw: torch.Tensor,
                   ctf: torch.Tensor, rot0: torch.Tensor, shift0: torch.Tensor, *,
                   start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """E-step of one batch of half set ``h`` against the other half's class maps; sums into half ``h``'s
    back-projectors. ``start (B,)``: the starting classes, taken (hard) instead of the best. Returns per image ``prob (B, K)``, ``cls (B,)``, ``loglik (B,)``, ``rot (B, 3, 3)``,
    ``shift (B, 2)`` px and ``width (B,)`` (pose posterior width in grid steps)."""
    projs, band, inv, dev = s.projs[3 - h], s.band, s.inv, s.device
    K = len(projs)
    x, c = band.gather(masked), band.gather(ctf)
    data = SearchData(x, c, inv)
    B = len(x)
    models = None
    if s.mode == "skip":  # one projection per class at the fixed poses, for the score and the residuals
        ll, models = skip_scores(s, projs, data, rot0, shift0)
        rots, shs = rot0[:, None].expand(B, K, 3, 3), shift0[:, None].expand(B, K, 2)
        width = torch.full((B, K), math.nan, device=dev)
    elif s.mode == "local" and s.score == "ml":  # second passes only where the pose is used (as below)
        def need(ll: torch.Tensor) -> torch.Tensor:
            logits = ll + s.log_prior
            best = torch.nn.functional.one_hot(logits.argmax(1) if start is None else start.to(dev), K).bool()
            return best if s.hard or start is not None else best | (torch.softmax(logits, 1) > 1e-3)
        ll, rots, shs, width = _local_classes(s, projs, data, rot0, shift0, need)
    else:
        ll = torch.empty(B, K, device=dev)
        rots = torch.empty(B, K, 3, 3, device=dev)
        shs = torch.empty(B, K, 2, device=dev)
        width = torch.empty(B, K, device=dev)
        for k in range(K):
            ll[:, k], cand, width[:, k] = search_class(s, projs[k], data, rot0, shift0)
            rots[:, k], shs[:, k] = cand.rotations[:, 0], cand.shifts[:, 0]
    logits = ll + s.log_prior
    best, hard = logits.argmax(1), s.hard
    if start is not None:
        best, hard = start.to(dev), True
    gamma = torch.nn.functional.one_hot(best, K).float() if hard else torch.softmax(logits, 1)
    ar = torch.arange(B, device=dev)
    for k in range(K):
        sel = best == k
        if sel.any():
            model = models[k, sel] if models is not None else \
                c[sel] * best_projections(projs[k], rots[sel, k], shs[sel, k])
            if s.score == "cc":  # fit each image's scale before taking residuals (as refine's first iteration)
                wv = band.weight * inv
                a = ((x[sel] * model.conj()).real * wv).sum(1) / ((model.abs() ** 2) * wv).sum(1).clamp_min(1e-30)
                model = model * a[:, None]
            sums.resid.add(x[sel] - model, band)
        keep = gamma[:, k] > 1e-3
        if keep.any():
            sw = gamma[keep, k].sqrt()[:, None, None]
            sums.bps[k][h - 1].insert(raw[keep] * sw, rots[keep, k], shs[keep, k], ctf[keep] * sw, symmetry=s.sym)
    return {"prob": gamma, "cls": best, "loglik": torch.logsumexp(logits, 1), "rot": rots[ar, best],
            "shift": shs[ar, best], "width": width[ar, best]}


@dataclass
class Class3DShared(SharedOnce):
    """An iteration's data shared by every chunk (CPU tensors): ``volumes (2, K, n, n, n)`` the masked class maps
    per half, ``sigma2 (n//2+1,)``, ``log_prior (K,)``, band and insertion radii (cycles per box), search settings,
    the ``(n, n)`` image mask, pixel size (Å), the workers' device, the image ``reader`` (or None) and the first
    iteration's ``start_labels (N,)`` (or None) and whether local searches are ``narrow``."""

    params: Any
    mode: str
    score: str
    hard: bool
    has_poses: bool
    r_max: float
    r_insert: float
    volumes: torch.Tensor
    sigma2: torch.Tensor
    log_prior: torch.Tensor
    grid: torch.Tensor | None
    sym: torch.Tensor
    image_mask: torch.Tensor
    use_ctf: bool
    pixel_size: float
    device: str
    reader: Any = None
    start_labels: torch.Tensor | None = None
    narrow: bool = False

    def setup(self) -> ClassSetup:
        """The iteration's :class:`ClassSetup`, built once per copy."""
        def build() -> ClassSetup:
            dev = torch.device(self.device)
            n = self.volumes.shape[-1]
            band = FrequencyBand.build(n, self.r_max, dev)
            projs = {h: [BandProjector(prepare_volume(v.to(dev), pad=2), band) for v in self.volumes[h - 1]]
                     for h in (1, 2)}
            noise = NoiseModel(self.sigma2.to(dev))
            noise.sigma2 = self.sigma2.to(dev)
            return ClassSetup(self.params, self.mode, band, projs, noise.inverse_on(band), self.log_prior.to(dev),
                              None if self.grid is None else self.grid.to(dev), self.score, self.hard,
                              self.has_poses, self.sym.to(dev), dev, self.narrow)
        return self.cached("setup", build)


def class3d_chunk(shared: Class3DShared, chunk: ParticleChunk) -> dict[str, Any]:
    """The expectation step of one chunk in batches of ``params.batch_size``: ``rows``, ``sums``
    (:meth:`ClassSums.to_tensors`), per particle ``prob``, ``cls``, ``loglik``, ``rot``, ``shift``, ``width`` (CPU,
    chunk order) and ``seconds`` of compute."""
    t0 = time.perf_counter()
    s = shared.setup()
    dev = s.device
    n = shared.image_mask.shape[-1]
    K = shared.volumes.shape[1]
    rows = np.asarray(chunk.rows)
    bs = shared.params.batch_size

    def batches():
        for a in range(0, len(rows), bs):
            local = np.arange(a, min(len(rows), a + bs))
            yield local, chunk.images[local] if chunk.images is not None else shared.reader(rows[local])

    sums = ClassSums(K, n, dev, shared.r_insert)
    half = chunk.half.to(dev)
    out = {"prob": torch.zeros(len(rows), K, device=dev), "cls": torch.zeros(len(rows), dtype=torch.long, device=dev),
           "loglik": torch.zeros(len(rows), device=dev), "rot": chunk.rotations.to(dev).clone(),
           "shift": chunk.shifts.to(dev).clone(), "width": torch.full((len(rows),), math.nan, device=dev)}
    for local, masked, raw, ctf in prepared_batches(batches, chunk.table.reset_index(drop=True),
                                                    pixel_size=shared.pixel_size, image_mask=shared.image_mask.to(dev),
                                                    use_ctf=shared.use_ctf, device=dev):
        for h in (1, 2):
            sel = half[local] == h
            if sel.any():
                r = local[sel]
                start = None if shared.start_labels is None else shared.start_labels[rows[r]]
                got = classify_batch(s, sums, h, masked[sel], raw[sel], ctf[sel], out["rot"][r], out["shift"][r],
                                     start=start)
                for key, v in got.items():
                    out[key][r] = v
    return {"rows": rows, "sums": sums.to_tensors(), **{k: v.cpu() for k, v in out.items()},
            "seconds": time.perf_counter() - t0}
