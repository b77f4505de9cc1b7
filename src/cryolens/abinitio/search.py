"""The ab-initio E-step: images in memory, the noise model, and soft pose/class posteriors per mini-batch.

Scores are the ML scores of :mod:`cryolens.refine.pose_search` (Gaussian log-likelihoods up to a
per-image constant), so posteriors over classes and poses are their softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cryolens.abinitio.params import AbinitioParams
from cryolens.core.ctf import ctf_2d
from cryolens.core.fourier import fourier_resize, ft2, ft3, radius_2d, radius_3d, shell_average, shell_index
from cryolens.core.masks import soft_sphere
from cryolens.core.projector import SliceGrid, prepare_volume
from cryolens.core.so3_grid import healpix_step_deg, so3_grid
from cryolens.particles import ctf_params_from_table, has_ctf
from cryolens.refine.noise import NoiseModel, ShellAccumulator
from cryolens.refine.pose_search import (BandProjector, Candidates, FrequencyBand, SearchData, best_projections,
                                         global_search, local_search, shift_grid)

__all__ = ["ImageBank", "Posterior", "PoseScorer", "Searcher", "limited_grid", "power_spectrum", "working_box", "GLOBAL_RESOLUTION"]

#: The global grid search never aligns finer than this (Å); finer limits are reached by local searches.
GLOBAL_RESOLUTION = 25.0


def working_box(n: int, pixel_size: float, final_resolution: float) -> int:
    """Even box whose pixel is about ``final_resolution / 3`` Å (never larger than ``n``, at least 32 when possible)."""
    target = final_resolution / 3.0
    if pixel_size >= target:
        return n
    nw = int(round(n * pixel_size / target / 2)) * 2
    return min(n, max(nw, min(n, 32)))


def limited_grid(grid: SliceGrid, r_max: float) -> SliceGrid:
    """The coefficients of ``grid`` with radius < ``r_max`` (cycles per box): insertion costs follow the band."""
    keep = grid.k.norm(dim=1) < r_max
    return SliceGrid(grid.n, grid.k[keep], grid.flat[keep], grid.column_weight[keep])


def power_spectrum(volume: torch.Tensor) -> torch.Tensor:
    """Mean ``|F|²`` per shell ``0..n//2`` of a cubic volume's transform (the scale of its central slices)."""
    n = volume.shape[-1]
    f = ft3(volume.float())
    return shell_average(f.abs() ** 2, shell_index(radius_3d(n, device=volume.device)), n // 2 + 1)


@dataclass
class ImageBank:
    """All particles' transforms on the working box, raw and masked by a soft disc, and their CTFs.

    Attributes:
        raw, masked: ``(N, n, n//2+1)`` complex64; ctf: ``(N, n, n//2+1)`` or None (no CTF);
        n: working box; pixel_size: working pixel (Å); box, particle_pixel_size: the particles'.
    """

    raw: torch.Tensor
    masked: torch.Tensor
    ctf: torch.Tensor | None
    n: int
    pixel_size: float
    box: int
    particle_pixel_size: float

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    @classmethod
    def load(cls, batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], table: pd.DataFrame, *,
             pixel_size: float, n_work: int | None, params: AbinitioParams, device: torch.device) -> "ImageBank":
        raw, masked, ctf, order = [], [], [], []
        use_ctf = params.ctf and has_ctf(table)
        box = nw = 0
        disc = None
        for idx, images in batches():
            img = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32, device=device)
            if not box:
                box = img.shape[-1]
                nw = n_work or working_box(box, pixel_size, params.final_resolution)
                apix_w = pixel_size * box / nw
                diameter = params.particle_diameter or 0.9 * box * pixel_size
                radius = min(diameter / 2 / apix_w, nw / 2 - 1)
                disc = soft_sphere(nw, radius=max(radius - 1, 2), edge_width=3, ndim=2, device=device)
            if nw < box:
                img = fourier_resize(img, nw, ndim=2)
            raw.append(ft2(img))
            masked.append(ft2(img * disc))
            if use_ctf:
                ctf.append(ctf_2d(ctf_params_from_table(table.iloc[np.asarray(idx)], device), box=nw,
                                  pixel_size=pixel_size * box / nw, device=device))
            order.append(torch.as_tensor(np.asarray(idx), dtype=torch.long))
        perm = torch.argsort(torch.cat(order)).to(device)
        return cls(torch.cat(raw)[perm], torch.cat(masked)[perm], torch.cat(ctf)[perm] if use_ctf else None, nw,
                   pixel_size * box / nw, box, pixel_size)

    def ctf_of(self, rows: torch.Tensor) -> torch.Tensor:
        if self.ctf is None:
            return torch.ones(len(rows), self.n, self.n // 2 + 1, device=self.raw.device)
        return self.ctf[rows.to(self.raw.device)]

    def whitened(self, rows: torch.Tensor, inv_sigma: torch.Tensor,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X·√w/σ, CTF·√w/σ)`` for insertion: the back-projector then sums ``w·CTF·X/σ²`` and ``w·CTF²/σ²``."""
        rows = rows.to(self.raw.device)
        scale = inv_sigma[None]
        if weights is not None:
            scale = scale * weights.sqrt()[:, None, None]
        return self.raw[rows] * scale, self.ctf_of(rows) * scale


@dataclass
class Posterior:
    """Scored poses of a mini-batch: ``weights (B, K, J)`` (sum 1 per image), ``rotations (B, K, J, 3, 3)``,
    ``shifts (B, K, J, 2)`` px, ``log_likelihood (B,)`` (log of the summed likelihoods with the class priors,
    up to a per-image constant), ``residual_power`` per shell at the best pose (NaN outside the band)."""

    weights: torch.Tensor
    rotations: torch.Tensor
    shifts: torch.Tensor
    log_likelihood: torch.Tensor
    residual_power: torch.Tensor


class PoseScorer:
    """Pose search of images against K references under a noise model, without the images' store (what a
    worker of a distributed E-step needs; :class:`Searcher` adds the store).

    Args:
        params: the run's params; n: working box (px); pixel_size: working pixel (Å); diameter: particle (Å);
        noise: the noise model (per-shell ``sigma²`` of the working box).
    """

    def __init__(self, params: AbinitioParams, n: int, pixel_size: float, diameter: float, device: torch.device,
                 noise: NoiseModel):
        self.p, self.n, self.pixel_size, self.dev, self.diameter = params, n, pixel_size, device, diameter
        self.noise = noise
        self.grid = so3_grid(params.healpix_order, sym=params.symmetry, device=device).matrices
        self.step = healpix_step_deg(params.healpix_order)
        self.global_resolution = min(GLOBAL_RESOLUTION, params.ini_resolution)

    def r_max(self, resolution: float) -> float:
        """Band limit (cycles per working box) of an alignment at ``resolution`` Å."""
        return min(self.n / 2 - 1, self.n * self.pixel_size / resolution)

    def _passes(self, resolution: float, ostep: float) -> list[tuple[float, float, float, float]]:
        """Local passes (angular step, range in °; offset step, range in px), halving to the resolution's step."""
        needed = math.degrees(resolution / self.diameter)
        passes, a, o = [], self.step / 2, ostep / 2
        while len(passes) < 3:
            passes.append((a, 1.5 * a, o, 1.5 * o))
            if a <= 1.5 * needed:
                break
            a, o = a / 2, max(o / 2, 0.25)
        return passes

    def score(self, xm: torch.Tensor, c: torch.Tensor, refs: list[torch.Tensor], log_prior: torch.Tensor,
              resolution: float) -> tuple[Posterior, ShellAccumulator]:
        """Score masked image transforms ``xm`` with CTFs ``c`` (both ``(B, n, n//2+1)``) against each reference;
        ``top_k`` global candidates per class, each refined locally. Returns the posterior and the residual power
        at the best poses as sums (its mean is the posterior's ``residual_power``)."""
        p, dev = self.p, self.dev
        n = self.n
        band = FrequencyBand.build(n, self.r_max(resolution), dev)
        g_res = max(resolution, self.global_resolution)
        gband = FrequencyBand.build(n, self.r_max(g_res), dev)
        data = SearchData(band.gather(xm), band.gather(c), self.noise.inverse_on(band))
        gdata = SearchData(gband.gather(xm), gband.gather(c), self.noise.inverse_on(gband))
        ostep = max(1.0, min(3.0, g_res / (3 * self.pixel_size)))
        shifts = shift_grid(ostep, p.offset_range, device=dev)
        passes = self._passes(resolution, ostep)
        B, K, J = len(xm), len(refs), p.top_k
        scores = torch.empty(B, K, J, device=dev)
        rots = torch.empty(B, K, J, 3, 3, device=dev)
        shs = torch.empty(B, K, J, 2, device=dev)
        projs = []
        for k, ref in enumerate(refs):
            fvol = prepare_volume(ref.to(dev), pad=2)
            proj, gproj = BandProjector(fvol, band), BandProjector(fvol, gband)
            projs.append(proj)
            cand = global_search(gproj, gdata, self.grid, shifts, top_k=J, mode="ml", max_block=p.max_block)
            jn = cand.score.shape[1]
            if not passes and gband.r_max == band.r_max:
                scores[:, k, :jn], rots[:, k, :jn], shs[:, k, :jn] = cand.score, cand.rotations, cand.shifts
            else:
                for j in range(jn):
                    one = Candidates(cand.score[:, j:j + 1], cand.rotations[:, j:j + 1], cand.shifts[:, j:j + 1])
                    for a_step, a_range, o_step, o_range in passes or [(self.step / 2, 0.75 * self.step, 0.5, 0.75)]:
                        one = local_search(proj, data, one, angular_step=a_step, angular_range=a_range,
                                           offset_step=o_step, offset_range=o_range, mode="ml",
                                           max_block=p.max_block)
                    scores[:, k, j], rots[:, k, j], shs[:, k, j] = one.score[:, 0], one.rotations[:, 0], \
                        one.shifts[:, 0]
            if jn < J:  # fewer grid poses than top_k: the rest never wins
                scores[:, k, jn:] = -math.inf
                rots[:, k, jn:], shs[:, k, jn:] = rots[:, k, :1], shs[:, k, :1]
        logits = scores + log_prior.to(dev)[None, :, None]
        ll = torch.logsumexp(logits.reshape(B, -1), 1)
        weights = torch.exp(logits - ll[:, None, None])
        best = weights.reshape(B, -1).argmax(1)
        bk, bj = best // J, best % J
        ar = torch.arange(B, device=dev)
        resid = ShellAccumulator(n, dev)
        for k in range(K):
            sel = bk == k
            if sel.any():
                model = data.ctf[sel] * best_projections(projs[k], rots[ar[sel], k, bj[sel]], shs[ar[sel], k, bj[sel]])
                resid.add(data.x[sel] - model, band)
        return Posterior(weights, rots, shs, ll, resid.mean()), resid


class Searcher(PoseScorer):
    """Pose search against K references for rows of an :class:`ImageBank`, with its noise model (at first the
    masked images' power spectrum)."""

    def __init__(self, bank: ImageBank, params: AbinitioParams, device: torch.device, diameter: float):
        n = bank.n
        full = FrequencyBand.build(n, n / 2, device)
        acc = ShellAccumulator(n, device)
        for r0 in range(0, len(bank), 1024):
            acc.add(full.gather(bank.masked[r0:r0 + 1024]), full)
        super().__init__(params, n, bank.pixel_size, diameter, device, NoiseModel(acc.mean()))
        self.bank = bank
        self.shells = shell_index(radius_2d(n, device=device)).clamp_max(n // 2)

    def inv_sigma_grid(self) -> torch.Tensor:
        """``1/σ`` on the working box's rfft grid (shell 0 takes shell 1's σ: the images' means carry the mass)."""
        s2 = self.noise.sigma2.clone().to(self.dev)
        s2[0] = s2[1]
        return s2.rsqrt()[self.shells]

    def update_noise(self, residual_power: torch.Tensor) -> None:
        self.noise.update(residual_power)

    def soft_poses(self, rows: torch.Tensor, refs: list[torch.Tensor], log_prior: torch.Tensor,
                   resolution: float) -> Posterior:
        """Score the bank's ``rows`` against each reference (:meth:`PoseScorer.score`)."""
        rows = rows.to(self.dev)
        return self.score(self.bank.masked[rows], self.bank.ctf_of(rows), refs, log_prior, resolution)[0]
