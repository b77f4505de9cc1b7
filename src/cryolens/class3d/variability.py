"""Starting classes at known poses: principal directions of heterogeneity (probabilistic PCA) and K-means.

Why: starting ``K`` classes from one consensus map (random subsets or a perturbed map) lets the EM lock
onto noise. The particles assigned to a class are those whose noise correlates with the class's
difference from the others, so their reconstruction reproduces that difference: any direction
sustains itself, and a small real difference (measured: a 60 Å lobe, 5 % of a ribosome's mass, SNR
0.05) is not found (accuracy stayed near 50 % from random subsets, in cryolens and in RELION).

Model (probabilistic PCA in 3D, as cryoSPARC's 3D variability): at the known pose ``(A_i, t_i)`` and CTF
``C_i`` an image is ``X_i = C_i·P_i(μ + Σ_j z_ij V_j) + N_i`` with ``z_i ~ N(0, I)`` and ``N_i`` Gaussian with
the per-shell variance ``sigma²``. EM: the E-step gives each image's posterior ``E[z_i]`` and
``E[z_i z_iᵀ]`` (the posterior variance is what keeps the noise from feeding itself); the M-step
reconstructs each ``V_j`` from the residuals ``X_i − C_i P_i(μ + Σ_{l≠j} V_l E[z_il])`` back-projected with
weight ``E[z_ij]`` over ``Σ C_i² E[z_ij²]`` (per voxel). ``μ`` is the consensus reconstruction. All on the
band below ``resolution``; the components are masked and low-passed there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from cryolens.abinitio.search import limited_grid
from cryolens.core.fourier import bandpass
from cryolens.core.projector import BackProjector, SliceGrid, prepare_volume
from cryolens.refine.noise import ShellAccumulator
from cryolens.refine.pose_search import BandProjector, FrequencyBand, best_projections

__all__ = ["variability_coordinates", "kmeans"]

Prepared = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]]


def _insert(bp: BackProjector, band: FrequencyBand, values: torch.Tensor, ctf: torch.Tensor, rot: torch.Tensor,
            shift: torch.Tensor, weight: torch.Tensor | None = None) -> None:
    """Insert band coefficients ``values (B, M)`` (image frame) with data weight 1 and CTF² weight ``weight (B,)``."""
    B, n = values.shape[0], band.n
    full = torch.zeros(B, n * (n // 2 + 1), dtype=values.dtype, device=values.device)
    if weight is not None:
        s = weight.clamp_min(1e-12).sqrt()[:, None]
        values, ctf = values / s, ctf * s[:, :, None]
    full[:, band.flat] = values
    bp.insert(full.reshape(B, n, n // 2 + 1), rot, shift, ctf, symmetry=None)


def variability_coordinates(prepared: Prepared, rotations: torch.Tensor, shifts: torch.Tensor, *, n: int,
                            pixel_size: float, mask: torch.Tensor, components: int = 1, resolution: float = 20.0,
                            iterations: int = 8, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N, components)`` posterior coordinates ``E[z_i]`` of every particle along the principal directions.

    Args:
        prepared: called once per pass; yields ``(rows, masked, raw, ctf)`` as
            :func:`cryolens.refine.images.prepared_batches` (raw transforms are used).
        rotations: ``(N, 3, 3)``; shifts: ``(N, 2)`` origins in px (the known poses).
        n: box (px); pixel_size: Å/px; mask: ``(n, n, n)`` soft mask (0..1) of the components.
        components: number of principal directions (``K − 1`` for ``K`` classes is enough).
        resolution: band limit (Å) of the scoring and of the components.
        iterations: EM passes (two thirds on the band below 1.5 × ``resolution``); seed: the components' random start.
    """
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    vs = [torch.randn((n, n, n), generator=gen).to(dev) for _ in range(components)]
    coarse = (2 * iterations) // 3  # two thirds on a coarser band (1.5x the resolution): fewer noise dimensions
    z_all = torch.zeros(len(rotations), components, device=dev)
    for res, its in ((1.5 * resolution, coarse), (resolution, iterations - coarse)):
        if its > 0:
            vs = _ppca(prepared, rotations, shifts, vs, z_all, n=n, pixel_size=pixel_size, mask=mask, resolution=res,
                       iterations=its, device=dev)
    return z_all


def _ppca(prepared: Prepared, rotations: torch.Tensor, shifts: torch.Tensor, vs: list[torch.Tensor],
          z_all: torch.Tensor, *, n: int, pixel_size: float, mask: torch.Tensor, resolution: float, iterations: int,
          device: torch.device) -> list[torch.Tensor]:
    """``iterations`` EM passes on the band below ``resolution`` (Å) from the components ``vs``; fills ``z_all``."""
    dev = device
    r_max = min(n / 2, n * pixel_size / resolution)
    band = FrequencyBand.build(n, r_max, dev)
    grid = limited_grid(SliceGrid.build(n, dev), r_max)

    def backprojector() -> BackProjector:
        bp = BackProjector(n, pad=2, device=dev)
        bp.grid = grid
        return bp

    def finish(vol: torch.Tensor) -> torch.Tensor:
        return bandpass(vol * mask, pixel_size=pixel_size, high_res=resolution, ndim=3)

    cons, acc = backprojector(), ShellAccumulator(n, dev)
    for rows, _, raw, ctf in prepared():
        cons.insert(raw, rotations[rows], shifts[rows], ctf)
    mean = BandProjector(prepare_volume(finish(cons.reconstruct(mask_corners=False)), pad=2), band)
    vs = [finish(v) for v in vs]
    c = len(vs)
    sigma2 = None
    fixed: list[tuple[torch.Tensor, torch.Tensor]] = []  # per batch: residual to the mean and CTF on the band
    keep = len(rotations) * len(band) * 12 <= 2**29  # kept between passes up to 512 MB
    for it in range(iterations + 1):
        projs = [BandProjector(prepare_volume(v, pad=2), band) for v in vs]
        bps = [backprojector() for _ in range(c)]
        inv = None if sigma2 is None else torch.where(band.shell == 0, 0.0, 1 / sigma2[band.shell.clamp_max(n // 2)])
        for b, (rows, _, raw, ctf) in enumerate(prepared()):
            if b < len(fixed):  # the mean and the poses do not change between passes: projected once
                r, cb = fixed[b]
            else:
                x, cb = band.gather(raw), band.gather(ctf)
                r = x - cb * best_projections(mean, rotations[rows], shifts[rows])
                if keep:
                    fixed.append((r, cb))
            if inv is None:  # the first pass only measures the residuals' power
                acc.add(r, band)
                continue
            p = torch.stack([cb * best_projections(pj, rotations[rows], shifts[rows]) for pj in projs], 1)  # B,c,M
            wv = band.weight * inv
            g = torch.einsum("bjm,blm->bjl", p.real * wv, p.real) + torch.einsum("bjm,blm->bjl", p.imag * wv, p.imag)
            a = (r[:, None].conj() * p).real.mul(wv).sum(-1)  # (B, c)
            cov = torch.linalg.inv(torch.eye(c, device=dev) + g)
            ez = (cov @ a[..., None])[..., 0]
            ezz = cov + ez[:, :, None] * ez[:, None, :]
            z_all[rows] = ez
            fit = (p * ez[..., None]).sum(1)
            acc.add(r - fit, band)
            for j in range(c):
                rj = r - fit + p[:, j] * ez[:, j, None]
                _insert(bps[j], band, rj * ez[:, j, None], ctf, rotations[rows], shifts[rows], ezz[:, j, j])
        sigma2 = acc.mean().to(dev)
        sigma2 = torch.where(torch.isfinite(sigma2) & (sigma2 > 0), sigma2, sigma2[torch.isfinite(sigma2)].max())
        acc = ShellAccumulator(n, dev)
        if it > 0:
            vs = [finish(bp.reconstruct(mask_corners=False)) for bp in bps]
    return vs


def kmeans(points: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 50) -> torch.Tensor:
    """``(N,)`` labels ``0..k−1`` of ``points (N, d)`` by K-means with K-means++ seeding (generator ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    x = points.float().cpu()
    centres = x[torch.randint(len(x), (1,), generator=gen)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(1).values ** 2
        centres = torch.cat([centres, x[torch.multinomial(d2 / d2.sum().clamp_min(1e-30) + 1e-12, 1, generator=gen)]])
    labels = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iterations):
        new = torch.cdist(x, centres).argmin(1)
        if _ > 0 and torch.equal(new, labels):
            break
        labels = new
        centres = torch.stack([x[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
    return labels.to(points.device)
