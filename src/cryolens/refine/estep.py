"""Refinement's expectation step, per batch and per chunk of particles (for any compute backend).

One batch (:func:`expect_batch`): each half set's images are searched against that half's
reference (global grid or local passes, :func:`search`), their residuals feed the half's noise
accumulator and the best poses are inserted into the half's back-projector (:class:`HalfSums`).
In-process, :mod:`cryolens.refine.gold_standard` calls it batch after batch. Distributed, a
chunk of particles (:class:`ParticleChunk`: row indices, CTF columns, current poses and, unless
the workers read them, the images) goes to a worker with the iteration's :class:`RefineShared`
(references, noise spectra, search settings; sent once per worker), and :func:`refine_chunk`
returns the chunk's sufficient statistics: the back-projector sums within the inserted radius,
the residual power per shell, and the new pose, log-likelihood and posterior of every particle.
The driver adds them (:meth:`HalfSums.add_tensors`) and maximises as in-process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryolens.core.worker import ChunkMapper, SharedOnce
from cryolens.core.projector import BackProjector, SliceGrid, prepare_volume
from cryolens.core.so3_grid import healpix_step_deg
from cryolens.refine.images import prepared_batches
from cryolens.refine.noise import NoiseModel, ShellAccumulator
from cryolens.refine.params import RefineParams
from cryolens.refine.pose_search import (BandProjector, Candidates, FrequencyBand, SearchData, best_projections,
                                         global_search, local_search, shift_grid)

__all__ = ["SearchSetup", "HalfSums", "RefineShared", "ParticleChunk", "band_backprojector", "search",
           "expect_batch", "image_power_batch", "refine_chunk", "accumulator_support", "ParticleChunk",
           "chunk_items"]


def band_backprojector(n: int, pad: int, device: torch.device, r_insert: float) -> BackProjector:
    """A back-projector that inserts only frequencies with radius < ``r_insert`` (cycles per box).

    During iterations nothing beyond the alignment band's reach is needed, and insertion cost
    scales with the coefficients inserted; the final iteration inserts the full box.
    """
    bp = BackProjector(n, pad=pad, device=device)
    g = bp.grid
    keep = g.k.norm(dim=1) < r_insert
    bp.grid = SliceGrid(n, g.k[keep], g.flat[keep], g.column_weight[keep])
    return bp


def accumulator_support(n: int, pad: int, r_insert: float, device=None) -> torch.Tensor:
    """Flat indices of a :class:`BackProjector` accumulator row that insertions below ``r_insert``
    (cycles per box) can reach: padded radius up to ``pad·r_insert + 2`` (trilinear corners). A chunk
    returns its sums on these entries only."""
    P = pad * n
    c = torch.arange(P + 1, dtype=torch.float32, device=device) - P // 2
    x = torch.arange(P // 2 + 1, dtype=torch.float32, device=device)
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + x[None, None, :] ** 2
    return torch.nonzero((r2 <= (pad * r_insert + 2) ** 2).reshape(-1)).squeeze(1)


@dataclass
class SearchSetup:
    """What the search of one iteration needs, fixed during the iteration.

    ``projs``/``inv``: per half (1, 2) the band projector of the masked reference and ``1/sigma²`` on the
    band; ``grid``: the global SO(3) grid ``(R, 3, 3)``; ``sym``: symmetry matrices ``(G, 3, 3)``;
    ``step``/``ostep``: the local angular step (degrees) and offset step (px).
    """

    params: RefineParams
    it: int
    step: float
    ostep: float
    band: FrequencyBand
    projs: dict[int, BandProjector]
    inv: dict[int, torch.Tensor]
    grid: torch.Tensor
    sym: torch.Tensor
    use_ctf: bool
    device: torch.device


class HalfSums:
    """The sums an expectation pass adds up per half set: back-projectors and residual power per shell."""

    def __init__(self, n: int, pad: int, device: torch.device, r_insert: float):
        self.n, self.pad, self.r_insert = n, pad, r_insert
        self.bps = {h: band_backprojector(n, pad, device, r_insert) for h in (1, 2)}
        self.resid = {h: ShellAccumulator(n, device) for h in (1, 2)}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The sums as CPU tensors (back-projector rows on :func:`accumulator_support` only)."""
        sup = accumulator_support(self.n, self.pad, self.r_insert, self.bps[1].device)
        out: dict[str, torch.Tensor] = {}
        for h in (1, 2):
            out[f"data{h}"], out[f"weight{h}"] = (x.cpu() for x in self.bps[h].sums_at(sup))
            out[f"count{h}"] = torch.tensor(self.bps[h].count)
            out[f"rsum{h}"], out[f"rcount{h}"] = self.resid[h].sum.cpu(), self.resid[h].count.cpu()
        return out

    def add_tensors(self, t: dict[str, torch.Tensor], support: torch.Tensor) -> None:
        """Add a chunk's :meth:`to_tensors` (``support``: its :func:`accumulator_support`)."""
        for h in (1, 2):
            self.bps[h].add_at(support, t[f"data{h}"], t[f"weight{h}"])
            self.bps[h].count += int(t[f"count{h}"])
            r = self.resid[h]
            r.sum += t[f"rsum{h}"].to(r.sum.device)
            r.count += t[f"rcount{h}"].to(r.count.device)


def search(s: SearchSetup, proj: BandProjector, data: SearchData, rot0: torch.Tensor,
           shift0: torch.Tensor) -> Candidates:
    """Global (first ``global_iterations``) or local search of one half's batch; best pose per image.

    ``rot0 (B, 3, 3)``/``shift0 (B, 2)`` px: the images' current poses.
    """
    p, dev = s.params, s.device
    mode = "cc" if s.it == 1 else "ml"
    current = Candidates(torch.zeros(len(rot0), 1, device=dev), rot0[:, None], shift0[:, None])
    if s.it <= p.global_iterations:
        g = healpix_step_deg(p.global_order)
        centre = torch.zeros_like(shift0) if s.it == 1 else shift0
        cand = global_search(proj, data, s.grid, shift_grid(p.offset_step, p.offset_range, device=dev),
                             top_k=p.global_top_k, mode=mode, centre=centre, max_block=p.max_block)
        if s.it > 1:  # the current pose competes too, so a good pose is never lost
            cand = Candidates(torch.cat([cand.score, current.score], 1),
                              torch.cat([cand.rotations, current.rotations], 1),
                              torch.cat([cand.shifts, current.shifts], 1))
        passes, a, o = [], g / 2, p.offset_step / 2
        while True:  # halve from the grid's step down to the current sampling
            passes.append((a, 2 * a, o, 2 * o))
            if a <= s.step / 2 + 1e-9 or len(passes) >= 4:
                break
            a, o = max(a / 2, s.step / 2), max(o / 2, s.ostep / 2)
    else:
        cand = current
        passes = [(s.step, 2 * s.step, s.ostep, 2 * s.ostep), (s.step / 2, s.step, s.ostep / 2, s.ostep)]
    for a_step, a_range, o_step, o_range in passes:
        cand = local_search(proj, data, cand, angular_step=a_step, angular_range=a_range,
                            offset_step=o_step, offset_range=o_range, mode=mode, max_block=p.max_block)
    return cand


def expect_batch(s: SearchSetup, sums: HalfSums, masked: torch.Tensor, raw: torch.Tensor, ctf: torch.Tensor,
                 half: torch.Tensor, rot0: torch.Tensor, shift0: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Search, residuals and insertion of one batch; returns its new ``(rotations (B, 3, 3), shifts (B, 2) px,
    log-likelihoods (B,), max probabilities (B,))``, rows of half sets absent from the batch left as given.

    ``masked``/``raw``/``ctf``: :func:`cryolens.refine.images.prepared_batches` output; ``half (B,)``: 1/2.
    """
    band = s.band
    rot, shift = rot0.clone(), shift0.clone()
    loglik = torch.zeros(len(rot0), device=s.device)
    maxprob = torch.zeros(len(rot0), device=s.device)
    for h in (1, 2):
        sel = half == h
        if not sel.any():
            continue
        x, c = band.gather(masked[sel]), band.gather(ctf[sel])
        data = SearchData(x, c, s.inv[h])
        cand = search(s, s.projs[h], data, rot0[sel], shift0[sel])
        r, sh = cand.rotations[:, 0], cand.shifts[:, 0]
        model = c * best_projections(s.projs[h], r, sh)
        if s.it == 1:  # CC mode: fit each image's scale to the reference before taking residuals
            wv = band.weight * s.inv[h]
            a = ((x * model.conj()).real * wv).sum(1) / ((model.abs() ** 2) * wv).sum(1).clamp_min(1e-30)
            model = model * a[:, None]
        res = x - model
        sums.resid[h].add(res, band)
        loglik[sel] = -((res.abs() ** 2) * band.weight * s.inv[h]).sum(1)
        maxprob[sel] = torch.exp(cand.score[:, 0] - cand.log_evidence).clamp(0, 1)
        rot[sel], shift[sel] = r, sh
        sums.bps[h].insert(raw[sel], r, sh, ctf[sel] if s.use_ctf else None, symmetry=s.sym)
    return rot, shift, loglik, maxprob


def image_power_batch(acc: dict[int, ShellAccumulator], full: FrequencyBand, masked: torch.Tensor,
                      half: torch.Tensor) -> None:
    """Add one batch's masked image power per shell to its half set's accumulator (the first noise model)."""
    for h in (1, 2):
        sel = half == h
        if sel.any():
            acc[h].add(full.gather(masked[sel]), full)


@dataclass
class RefineShared(SharedOnce):
    """An iteration's data shared by every chunk (CPU tensors; sent once per worker where the backend allows).

    Attributes:
        kind: ``"search"`` (an iteration) or ``"power"`` (the images' power spectrum before iteration 1).
        volumes: ``(2, n, n, n)`` the half sets' masked references; sigma2: ``(2, n//2+1)`` noise spectra.
        r_max, r_insert: alignment band and insertion radius (cycles per box).
        image_mask: ``(n, n)`` soft disc; grid ``(R, 3, 3)``; sym ``(G, 3, 3)``; pixel_size in Å;
        device: where the workers compute; reader: picklable ``rows -> images`` or None (images in the chunks).
    """

    kind: str
    params: RefineParams
    it: int
    step: float
    ostep: float
    r_max: float
    r_insert: float
    volumes: torch.Tensor | None
    sigma2: torch.Tensor | None
    image_mask: torch.Tensor
    grid: torch.Tensor | None
    sym: torch.Tensor
    use_ctf: bool
    pixel_size: float
    device: str
    reader: Any = None

    def setup(self) -> SearchSetup:
        """The :class:`SearchSetup` of this iteration, built once per copy (projectors are the costly part)."""
        def build() -> SearchSetup:
            dev = torch.device(self.device)
            n = self.volumes.shape[-1]
            band = FrequencyBand.build(n, self.r_max, dev)
            projs = {h: BandProjector(prepare_volume(self.volumes[h - 1].to(dev), pad=self.params.pad), band)
                     for h in (1, 2)}
            inv = {}
            for h in (1, 2):
                noise = NoiseModel(self.sigma2[h - 1].to(dev))
                noise.sigma2 = self.sigma2[h - 1].to(dev)  # exactly the driver's spectrum
                inv[h] = noise.inverse_on(band)
            return SearchSetup(self.params, self.it, self.step, self.ostep, band, projs, inv,
                               self.grid.to(dev), self.sym.to(dev), self.use_ctf, dev)
        return self.cached("setup", build)


@dataclass
class ParticleChunk:
    """One work unit of a particle stage's expectation step: ``rows (b,)`` into the particle table, its
    numeric columns ``table`` (CTF), the current ``rotations (b, 3, 3)`` and ``shifts (b, 2)`` px, half sets
    ``half (b,)`` and the ``images`` ``(b, n, n)`` float32 (None when the workers read them)."""

    rows: np.ndarray
    table: pd.DataFrame
    rotations: torch.Tensor
    shifts: torch.Tensor
    half: torch.Tensor
    images: np.ndarray | None = None


def chunk_items(dist: ChunkMapper, batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
                table: pd.DataFrame, rotations: torch.Tensor, shifts: torch.Tensor, half: torch.Tensor, *, n: int,
                batch_size: int) -> list[ParticleChunk]:
    """The work units of one distributed pass over ``table``'s particles: contiguous rows sized by
    :meth:`~cryolens.core.worker.ChunkMapper.chunks` (a multiple of ``batch_size``, so that a chunk's batches are the in-process
    batches), the table's numeric columns, the current ``rotations (N, 3, 3)``, ``shifts (N, 2)`` px and half
    sets ``half (N,)``; when ``dist`` has no reader the images (box ``n``) are read here from ``batches()``
    and travel with the chunks."""
    N = len(table)
    chunks = dist.chunks(N, bytes_per_item=4 * n * n, multiple=batch_size)
    images = None
    if dist.reader is None:
        images = np.empty((N, n, n), dtype=np.float32)
        for idx, imgs in batches():
            images[np.asarray(idx)] = imgs
    numeric = table.select_dtypes("number")
    rot, shift, half = rotations.cpu(), shifts.cpu(), half.cpu()
    return [ParticleChunk(rows=c, table=numeric.iloc[c], rotations=rot[c], shifts=shift[c], half=half[c],
                          images=None if images is None else images[c]) for c in chunks]


def refine_chunk(shared: RefineShared, chunk: ParticleChunk) -> dict[str, Any]:
    """The expectation step (or the image power pass) of one chunk, in batches of ``params.batch_size``.

    Returns ``rows``, ``sums`` (:meth:`HalfSums.to_tensors`), ``rotations``, ``shifts``, ``log_likelihood``,
    ``max_probability`` (CPU, chunk order; absent for ``"power"``) and ``seconds`` of compute.
    """
    t0 = time.perf_counter()
    dev = torch.device(shared.device)
    n = shared.image_mask.shape[-1]
    bs = shared.params.batch_size
    mask = shared.image_mask.to(dev)
    rows = np.asarray(chunk.rows)
    table = chunk.table.reset_index(drop=True)

    def batches():
        for a in range(0, len(rows), bs):
            local = np.arange(a, min(len(rows), a + bs))
            imgs = chunk.images[local] if chunk.images is not None else shared.reader(rows[local])
            yield local, imgs

    prepared = prepared_batches(batches, table, pixel_size=shared.pixel_size, image_mask=mask,
                                use_ctf=shared.use_ctf, device=dev)
    half = chunk.half.to(dev)
    if shared.kind == "power":
        full = FrequencyBand.build(n, n / 2, dev)
        acc = {h: ShellAccumulator(n, dev) for h in (1, 2)}
        for local, masked, _, _ in prepared:
            image_power_batch(acc, full, masked, half[local])
        return {"rows": rows, "seconds": time.perf_counter() - t0,
                "sums": {f"{k}{h}": getattr(acc[h], a).cpu() for h in (1, 2)
                         for k, a in (("rsum", "sum"), ("rcount", "count"))}}
    s = shared.setup()
    sums = HalfSums(n, shared.params.pad, dev, shared.r_insert)
    rot, shift = chunk.rotations.to(dev).clone(), chunk.shifts.to(dev).clone()
    loglik = torch.zeros(len(rows), device=dev)
    maxprob = torch.zeros(len(rows), device=dev)
    for local, masked, raw, ctf in prepared:
        r, sh, ll, mp = expect_batch(s, sums, masked, raw, ctf, half[local], rot[local], shift[local])
        rot[local], shift[local], loglik[local], maxprob[local] = r, sh, ll, mp
    return {"rows": rows, "sums": sums.to_tensors(), "rotations": rot.cpu(), "shifts": shift.cpu(),
            "log_likelihood": loglik.cpu(), "max_probability": maxprob.cpu(), "seconds": time.perf_counter() - t0}
