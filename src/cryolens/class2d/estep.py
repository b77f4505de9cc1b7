"""2D classification's expectation step, per batch and per chunk of particles (for any compute backend).

One batch (:func:`expect_batch`): images on the iteration's band are scored against every class
at every in-plane angle and shift of the grid (:class:`SearchGrid`), their posteriors weight the
sums of :class:`cryolens.class2d.expectation.Accumulator`, and each image's best class, psi,
origin, posterior and spreads come back. In-process, :func:`cryolens.class2d.iteration.run_iteration`
calls it batch after batch. Distributed, a chunk of particles (:class:`Class2DChunk`: row indices,
CTF columns, current origins and psi, reseeding labels and, unless the workers read them, the
images) goes to a worker with the iteration's :class:`Class2DShared` (class averages, noise
weights, priors, the psi and shift grids; sent once per worker), and :func:`class2d_chunk` returns
the chunk's sufficient statistics (the accumulator's per-class, per-psi Fourier sums and CTF²
weights on the band, image power, class masses) and the per-particle results. The driver adds
them (:meth:`Accumulator.add_tensors`) and maximises as in-process. The pass before the first
iteration (``kind="first"``: the images' power spectrum and the initial class sums, each chosen
particle at its drawn class and psi) runs the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryolens.class2d.data import ctf_on_band, masked_transform
from cryolens.class2d.expectation import Accumulator, circular_deviation, posterior, score_batch
from cryolens.class2d.maximisation import images_to_band, zero_dc
from cryolens.class2d.rotation import BandRotator, inplane_matrices
from cryolens.class2d.state import Class2DState
from cryolens.core.worker import ChunkMapper, SharedOnce
from cryolens.refine.noise import ShellAccumulator
from cryolens.refine.pose_search import FrequencyBand, phase_ramps

__all__ = ["SearchGrid", "class_references", "expect_batch", "offset_log_prior", "initial_batch", "take_results",
           "Class2DShared", "Class2DChunk", "chunk_items", "class2d_chunk", "RESULT_KEYS", "SCALE_RANGE"]

#: The per-particle results of :func:`expect_batch` (and of a chunk).
RESULT_KEYS = ("cls", "psi", "shift", "max_prob", "loglik", "gain", "n_significant", "psi_sd", "shift_sd", "scale")

#: The range a particle's amplitude scale is kept in (:func:`expect_batch` with ``fit_scale``): the floor keeps an
#: empty box's scale positive (its fit is noise about 0), the ceiling bounds strong junk (blobs, carbon).
SCALE_RANGE = (0.1, 3.0)


@dataclass
class SearchGrid:
    """What one iteration's E-step searches, on the compute device.

    Attributes:
        band: the iteration's band; refs: ``(K·J, M)`` complex class references in the image frame
            (:func:`class_references`, flattened); psi: ``(J,)`` in-plane angles (°); shifts: ``(T, 2)`` px;
        ramps: ``(T, M)`` their phase ramps; inv_w: ``(M,)`` ``w / sigma²``; log_prior: ``(K·J,)``;
        n_classes: ``K``; local: shifts are offsets from each particle's current origin; range_px: the
        origin's limit (px); significance: the posterior cut; offset_var: the variance (px², per axis) of the
        Gaussian prior on the origins about the box centre (RELION's ``sigma2_offset``), None: a flat prior;
        fit_scale: refit each particle's amplitude scale at its best pose (else it is returned as given).
    """

    band: FrequencyBand
    refs: torch.Tensor
    psi: torch.Tensor
    shifts: torch.Tensor
    ramps: torch.Tensor
    inv_w: torch.Tensor
    log_prior: torch.Tensor
    n_classes: int
    local: bool
    range_px: float
    significance: float
    offset_var: float | None = None
    fit_scale: bool = False


def class_references(classes: torch.Tensor, band: FrequencyBand, rotator: BandRotator,
                     matrices: torch.Tensor) -> torch.Tensor:
    """``(K, J, M)`` image-frame references: class images ``(K, n, n)`` on ``band`` seen at the in-plane rotations
    ``matrices (J, 2, 2)`` (``A_k(Rᵀ q)``), zero at the Fourier origin (:func:`cryolens.class2d.maximisation.zero_dc`:
    the images' DC is not fitted)."""
    k, j = classes.shape[0], matrices.shape[0]
    mats = matrices.transpose(-1, -2)[None].expand(k, j, 2, 2)
    refs = rotator.rotate(zero_dc(images_to_band(classes, band), band), mats)
    return zero_dc(refs, band)


def expect_batch(g: SearchGrid, acc: Accumulator, x: torch.Tensor, ctf: torch.Tensor, origin: torch.Tensor,
                 psi0: torch.Tensor, forced: torch.Tensor,
                 scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The E-step of one batch: posteriors over the grid, their sums into ``acc``, each image's results.

    Args:
        x, ctf: ``(B, M)`` image coefficients and CTFs on the band.
        origin: ``(B, 2)`` px the particles' current origins; psi0: ``(B,)`` their current psi (°).
        forced: ``(B,)`` the class a reseeded particle is assigned to (at the grid point nearest its current
            psi and origin), -1 for the others.
        scale: ``(B,)`` the particles' amplitude scales (the model image is ``scale · CTF · class``; None: 1). The
            sums of ``acc`` then hold ``scale · CTF · X`` and ``scale² · CTF²``: the class averages of that model.

    Returns:
        per image (:data:`RESULT_KEYS`): ``cls`` best class, ``psi`` (°), ``shift`` new origin (px),
        ``max_prob``, ``loglik``, ``gain`` (``loglik`` + ``Σ w|X|²/σ²``: the log-likelihood gained over an empty
        model, see :attr:`cryolens.class2d.state.Class2DState.particle_gain`), ``n_significant``, ``psi_sd`` (°)
        and ``shift_sd`` (px) within the best class, ``scale``: with ``g.fit_scale`` the scale that fits the image
        best at its best pose (least squares, weighted by ``1/sigma²``; within :data:`SCALE_RANGE`), else as given.
    """
    dev = x.device
    if scale is not None:
        ctf = ctf * scale[:, None].to(ctf.dtype)
    k, j, t = g.n_classes, len(g.psi), len(g.shifts)
    centre = origin if g.local else torch.zeros_like(origin)
    if g.local:
        x = x * phase_ramps(g.band, centre)
    scores = score_batch(x, ctf, g.refs, g.ramps, g.inv_w)
    outside = None
    if g.local:  # the origin stays within the search range
        outside = (centre[:, None, :] + g.shifts[None]).norm(dim=-1) > g.range_px + 1e-3
        outside[:, 0] = False
        scores = scores.masked_fill(outside[:, :, None], -float("inf"))
    shift_norm = math.log(t)
    if g.offset_var is not None:
        scores += offset_log_prior(centre, g.shifts, g.offset_var, outside)[:, :, None]
        shift_norm = 0.0
    post = posterior(scores, g.log_prior, significance=g.significance)
    gamma = post.gamma
    for i in torch.nonzero(forced >= 0).flatten().tolist():
        c = int(forced[i])
        ti = int(torch.argmin((g.shifts + centre[i] - origin[i]).norm(dim=1)))
        ji = int(torch.argmin(circular_deviation(g.psi, psi0[i])))
        gamma[i].zero_()
        gamma[i, ti, c * j + ji] = 1.0
        post.best[i] = ti * k * j + c * j + ji
        post.max_prob[i], post.n_significant[i] = 1.0, 1
    acc.add(x, ctf, g.ramps, gamma)
    best = post.best
    tb, kj = best // (k * j), best % (k * j)
    kb, jb = kj // j, kj % j
    ar = torch.arange(len(x), device=dev)
    g3 = gamma.reshape(len(x), t, k, j)[ar, :, kb, :]  # (B, T, J) within the best class
    pj = g3.sum(1)
    pj = pj / pj.sum(1, keepdim=True)
    dpsi = torch.remainder(g.psi[None, :] - g.psi[jb][:, None] + 180.0, 360.0) - 180.0
    pt = g3.sum(2)
    pt = pt / pt.sum(1, keepdim=True)
    dsh = ((g.shifts[None] - g.shifts[tb][:, None]) ** 2).sum(-1)
    xpow = ((x.real ** 2 + x.imag ** 2) * g.inv_w).sum(1)
    new_scale = torch.ones(len(x), device=dev) if scale is None else scale.to(device=dev, dtype=torch.float32)
    if g.fit_scale:
        model = g.refs[kj] * ctf  # the best pose's model image, in the image's (shifted) frame
        fit = ((x * g.ramps[tb] * model.conj()).real * g.inv_w).sum(1)
        fit = fit / ((model.real ** 2 + model.imag ** 2) * g.inv_w).sum(1).clamp_min(1e-30)
        new_scale = (new_scale * fit).clamp(*SCALE_RANGE)
    return {"cls": kb, "psi": g.psi[jb], "shift": g.shifts[tb] + centre, "max_prob": post.max_prob,
            "loglik": post.log_evidence - xpow - math.log(j) - shift_norm,
            "gain": post.log_evidence - math.log(j) - shift_norm,
            "n_significant": post.n_significant,
            "psi_sd": torch.sqrt((pj * dpsi ** 2).sum(1)), "shift_sd": torch.sqrt((pt * dsh).sum(1)),
            "scale": new_scale}


def offset_log_prior(centre: torch.Tensor, shifts: torch.Tensor, var: float,
                     outside: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T)`` log prior of the origins ``centre (B, 2) + shifts (T, 2)`` (px) under an isotropic Gaussian of
    variance ``var`` px² per axis about the box centre, normalised over each particle's grid points (those not
    ``outside``)."""
    lp = -((centre[:, None, :] + shifts[None]) ** 2).sum(-1) / (2.0 * var)
    if outside is not None:
        lp = lp.masked_fill(outside, -float("inf"))
    return lp - torch.logsumexp(lp, dim=1, keepdim=True)


def initial_batch(acc: Accumulator, x: torch.Tensor, ctf: torch.Tensor, ramps: torch.Tensor, columns: torch.Tensor,
                  n_columns: int) -> None:
    """Add the images with ``columns >= 0`` (``(B,)`` flat class·psi index) to ``acc`` at that class and psi, no shift
    (``ramps (1, M)``): the initial class averages."""
    keep = columns >= 0
    if not bool(keep.any()):
        return
    cols = columns[keep]
    gamma = torch.zeros(len(cols), 1, n_columns, device=x.device)
    gamma[torch.arange(len(cols), device=x.device), 0, cols] = 1.0
    acc.add(x[keep], ctf[keep], ramps, gamma)


def take_results(state: Class2DState, rows: np.ndarray, got: dict[str, torch.Tensor]) -> None:
    """Write :func:`expect_batch` results of particles ``rows`` into ``state``."""
    for key, attr in (("cls", "particle_class"), ("psi", "particle_psi"), ("shift", "particle_shift"),
                      ("max_prob", "particle_max_prob"), ("loglik", "particle_loglik"), ("gain", "particle_gain"),
                      ("n_significant", "particle_n_significant"), ("psi_sd", "particle_psi_sd"),
                      ("shift_sd", "particle_shift_sd"), ("scale", "particle_scale")):
        getattr(state, attr)[rows] = got[key].cpu().numpy()


@dataclass
class Class2DShared(SharedOnce):
    """An iteration's data shared by every chunk (CPU tensors; sent once per worker where the backend allows).

    Attributes:
        kind: ``"first"`` (before iteration 1: the images' power spectrum and the initial class sums) or
            ``"expect"`` (an iteration's E-step).
        box: px; pixel_size: Å; resolution: the band limit (Å); n_classes: ``K``.
        psi: ``(J,)`` in-plane angles (°); shifts: ``(T, 2)`` px.
        classes: ``(K, n, n)`` current class averages; inv_w: ``(M,)`` ``w / sigma²`` on the band; log_prior:
            ``(K·J,)`` (all three None for ``"first"``).
        local, range_px, significance, offset_var, fit_scale: as :class:`SearchGrid`; mask: ``(n, n)`` soft disc;
        use_ctf;
        batch_size: images per batch; device: where the workers compute; reader: picklable
        ``rows -> float32 images`` or None (images in the chunks).
    """

    kind: str
    box: int
    pixel_size: float
    resolution: float
    n_classes: int
    psi: torch.Tensor
    shifts: torch.Tensor
    classes: torch.Tensor | None
    inv_w: torch.Tensor | None
    log_prior: torch.Tensor | None
    local: bool
    range_px: float
    significance: float
    mask: torch.Tensor
    use_ctf: bool
    batch_size: int
    device: str
    reader: Any = None
    offset_var: float | None = None
    fit_scale: bool = False

    def grid(self) -> SearchGrid:
        """The :class:`SearchGrid` of this iteration (references only for ``"expect"``), built once per copy."""
        def build() -> SearchGrid:
            dev = torch.device(self.device)
            band = FrequencyBand.build(self.box, self.box * self.pixel_size / self.resolution, device=dev)
            psi, shifts = self.psi.to(dev), self.shifts.to(dev)
            refs = inv_w = log_prior = None
            if self.kind == "expect":
                refs = class_references(self.classes.to(dev), band, BandRotator(band, device=dev),
                                        inplane_matrices(psi).to(dev)).reshape(self.n_classes * len(psi), -1)
                inv_w, log_prior = self.inv_w.to(dev), self.log_prior.to(dev)
            return SearchGrid(band, refs, psi, shifts, phase_ramps(band, shifts), inv_w, log_prior, self.n_classes,
                              self.local, self.range_px, self.significance, self.offset_var, self.fit_scale)
        return self.cached("grid", build)


@dataclass
class Class2DChunk:
    """One work unit: ``rows (b,)`` sorted particle rows, their numeric columns ``table`` (CTF), current origins
    ``shift (b, 2)`` px, ``psi (b,)`` ° and amplitude ``scale (b,)``, ``labels (b,)`` (``"first"``: the flat
    class·psi column of a particle in the initial classes, else -1; ``"expect"``: the class a reseeded particle is
    forced to, else -1) and the ``images`` ``(b, n, n)`` float32 (None when the workers read them)."""

    rows: np.ndarray
    table: pd.DataFrame
    shift: np.ndarray
    psi: np.ndarray
    labels: np.ndarray
    images: np.ndarray | None = None
    scale: np.ndarray | None = None


def chunk_items(dist: ChunkMapper, batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
                table: pd.DataFrame, rows: np.ndarray, state: Class2DState, labels: np.ndarray, *, n: int,
                batch_size: int) -> list[Class2DChunk]:
    """The work units of one distributed pass over the particles ``rows`` (sorted): contiguous runs of ``rows``
    sized by :meth:`~cryolens.core.worker.ChunkMapper.chunks` (a multiple of ``batch_size``, so that a chunk's
    batches are the in-process batches), with ``labels`` ``(len(rows),)`` and the particles' current origins and
    psi from ``state``; when ``dist`` has no reader the images (box ``n``) are read here from ``batches()``."""
    images = None
    if getattr(dist, "reader", None) is None:
        images = np.empty((len(rows), n, n), dtype=np.float32)
        for idx, imgs in batches():
            idx = np.asarray(idx)
            sel = np.isin(idx, rows)
            images[np.searchsorted(rows, idx[sel])] = imgs[sel]
    numeric = table.select_dtypes("number")
    out = []
    for c in dist.chunks(len(rows), bytes_per_item=4 * n * n, multiple=batch_size):
        r = rows[c]
        out.append(Class2DChunk(rows=r, table=numeric.iloc[r], shift=state.particle_shift[r].copy(),
                                psi=state.particle_psi[r].copy(), labels=np.asarray(labels)[c],
                                images=None if images is None else images[c],
                                scale=state.particle_scale[r].copy()))
    return out


def class2d_chunk(shared: Class2DShared, chunk: Class2DChunk) -> dict[str, Any]:
    """One chunk's pass in batches of ``shared.batch_size``.

    Returns ``rows``, ``sums`` (:meth:`Accumulator.to_tensors`), ``seconds`` of compute and, for ``"first"``, the
    image power per shell ``power_sum``/``power_count``; for ``"expect"``, the per-particle :data:`RESULT_KEYS`
    (CPU, chunk order) and ``loglik_sum`` (the batches' sums, added as in-process).
    """
    t0 = time.perf_counter()
    dev = torch.device(shared.device)
    g = shared.grid()
    k, j = shared.n_classes, len(g.psi)
    rows = np.asarray(chunk.rows)
    table = chunk.table.reset_index(drop=True)
    mask = shared.mask.to(dev)
    acc = Accumulator(k, j, len(g.band), device=dev)
    first = shared.kind == "first"
    if first:
        full = FrequencyBand.build(shared.box, shared.box / 2, device=dev)
        power = ShellAccumulator(shared.box, device=dev)
    else:
        results: dict[str, list[torch.Tensor]] = {key: [] for key in RESULT_KEYS}
        loglik_sum = 0.0
    labels = torch.as_tensor(np.asarray(chunk.labels, dtype=np.int64), device=dev)
    for a in range(0, len(rows), shared.batch_size):
        local = np.arange(a, min(len(rows), a + shared.batch_size))
        images = chunk.images[local] if chunk.images is not None else shared.reader(rows[local])
        f = masked_transform(images, mask, device=dev)
        x = g.band.gather(f)
        ctf = ctf_on_band(table, local, g.band, shared.pixel_size, shared.use_ctf, dev)
        lab = labels[torch.as_tensor(local, device=dev)]
        if first:
            power.add(full.gather(f), full)
            initial_batch(acc, x, ctf, g.ramps, lab, k * j)
            continue
        origin = torch.as_tensor(chunk.shift[local], device=dev, dtype=torch.float32)
        psi0 = torch.as_tensor(chunk.psi[local], device=dev, dtype=torch.float32)
        scale = None if chunk.scale is None else torch.as_tensor(chunk.scale[local], device=dev, dtype=torch.float32)
        got = expect_batch(g, acc, x, ctf, origin, psi0, lab, scale)
        loglik_sum += float(got["loglik"].sum())
        for key in RESULT_KEYS:
            results[key].append(got[key].cpu())
    out: dict[str, Any] = {"rows": rows, "sums": acc.to_tensors()}
    if first:
        out.update(power_sum=power.sum.cpu(), power_count=power.count.cpu())
    else:
        out.update({key: torch.cat(v) for key, v in results.items()}, loglik_sum=loglik_sum)
    out["seconds"] = time.perf_counter() - t0
    return out
