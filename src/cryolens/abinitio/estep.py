"""Ab initio's expectation step in chunks of particles (for any compute backend).

Every pose search of ab initio (a mini-batch of one random start, or a block of a final pass) is
:meth:`cryolens.abinitio.search.PoseScorer.score` on some rows of the image bank. Distributed
(:func:`distributed_soft_poses`), the rows split into chunks (:class:`PoseChunk`: the rows'
masked transforms and CTFs on the working box, taken from the driver's bank) that go to workers
with an :class:`AbinitioShared` (the start's references, class priors, noise spectrum and the
search settings; sent once per worker); :func:`abinitio_chunk` returns each particle's posterior
over classes and poses and the chunk's residual power sums. The driver joins them into the
:class:`~cryolens.abinitio.search.Posterior` the in-process search gives (to float tolerance) and
goes on as in-process: insertion, noise update and priors stay here, in the same order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cryolens.abinitio.params import AbinitioParams
from cryolens.abinitio.search import Posterior, PoseScorer, Searcher
from cryolens.core.worker import ChunkMapper, SharedOnce
from cryolens.refine.noise import NoiseModel, ShellAccumulator

__all__ = ["AbinitioShared", "PoseChunk", "abinitio_chunk", "distributed_soft_poses"]


@dataclass
class AbinitioShared(SharedOnce):
    """One search's data shared by every chunk (CPU tensors): ``refs (K, n, n, n)`` the references, ``log_prior
    (K,)``, ``sigma2 (n//2+1,)`` the noise spectrum, the alignment ``resolution`` (Å), the working box ``n`` (px)
    and pixel (Å), the particle ``diameter`` (Å), the params and the workers' device."""

    params: AbinitioParams
    refs: torch.Tensor
    log_prior: torch.Tensor
    sigma2: torch.Tensor
    resolution: float
    n: int
    pixel_size: float
    diameter: float
    device: str

    def scorer(self) -> PoseScorer:
        """The :class:`PoseScorer` of this search (exactly the driver's noise spectrum), built once per copy."""
        def build() -> PoseScorer:
            dev = torch.device(self.device)
            noise = NoiseModel(self.sigma2.to(dev))
            noise.sigma2 = self.sigma2.to(dev)
            return PoseScorer(self.params, self.n, self.pixel_size, self.diameter, dev, noise)
        return self.cached("scorer", build)


@dataclass
class PoseChunk:
    """One work unit: ``rows (b,)`` bank rows, their masked transforms ``masked (b, n, n//2+1)`` complex64 and
    CTFs ``ctf`` (same shape, float32; None without CTF) on the working box."""

    rows: np.ndarray
    masked: torch.Tensor
    ctf: torch.Tensor | None


def abinitio_chunk(shared: AbinitioShared, chunk: PoseChunk) -> dict[str, Any]:
    """The pose search of one chunk: ``rows``, the posterior's ``weights (b, K, J)``, ``rotations (b, K, J, 3, 3)``,
    ``shifts (b, K, J, 2)`` px, ``log_likelihood (b,)``, the residual power sums ``rsum``/``rcount`` per shell
    (CPU) and ``seconds`` of compute."""
    t0 = time.perf_counter()
    s = shared.scorer()
    dev = s.dev
    xm = chunk.masked.to(dev)
    c = torch.ones(xm.shape, device=dev) if chunk.ctf is None else chunk.ctf.to(dev)
    refs = [r for r in shared.refs.to(dev)]
    post, resid = s.score(xm, c, refs, shared.log_prior.to(dev), shared.resolution)
    return {"rows": chunk.rows, "weights": post.weights.cpu(), "rotations": post.rotations.cpu(),
            "shifts": post.shifts.cpu(), "log_likelihood": post.log_likelihood.cpu(), "rsum": resid.sum.cpu(),
            "rcount": resid.count.cpu(), "seconds": time.perf_counter() - t0}


def distributed_soft_poses(dist: ChunkMapper, searcher: Searcher, rows: torch.Tensor, refs: list[torch.Tensor],
                           log_prior: torch.Tensor, resolution: float, *, desc: str) -> Posterior:
    """:meth:`Searcher.soft_poses` of ``rows`` in chunks through ``dist``: the same posterior (to float tolerance)."""
    bank, dev = searcher.bank, searcher.dev
    n = bank.n
    shared = AbinitioShared(params=searcher.p, refs=torch.stack([r.detach().cpu() for r in refs]),
                            log_prior=log_prior.detach().cpu(), sigma2=searcher.noise.sigma2.detach().cpu(),
                            resolution=resolution, n=n, pixel_size=searcher.pixel_size, diameter=searcher.diameter,
                            device=str(dev))
    rows_cpu = rows.cpu()
    per_item = n * (n // 2 + 1) * (8 + (4 if bank.ctf is not None else 0))
    items = []
    for c in dist.chunks(len(rows_cpu), bytes_per_item=per_item):
        r = rows_cpu[torch.as_tensor(c)].to(bank.raw.device)
        items.append(PoseChunk(rows=c, masked=bank.masked[r].cpu(),
                               ctf=None if bank.ctf is None else bank.ctf[r].cpu()))
    outs = dist.map(abinitio_chunk, shared, items, desc=desc)
    resid = ShellAccumulator(n, dev)
    for o in outs:
        resid.sum += o["rsum"].to(resid.sum.device)
        resid.count += o["rcount"].to(resid.count.device)
    cat = {k: torch.cat([o[k] for o in outs]).to(dev) for k in ("weights", "rotations", "shifts", "log_likelihood")}
    return Posterior(cat["weights"], cat["rotations"], cat["shifts"], cat["log_likelihood"], resid.mean())
