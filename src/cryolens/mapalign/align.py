"""Rotational and translational alignment of one map onto another, in either hand.

The transform: the aligned map is ``aligned(x) = B'(R·(x − t))`` with ``x`` and ``t`` in voxels
``(x, y, z)`` from the box centre ``n // 2`` and ``B'`` the moving map ``B`` (mirrored along z
by :func:`flip_hand` when the hands differ). ``R`` acts on ``(x, y, z)`` column vectors, as in
:func:`cryolens.core.symmetry.rotate_volume`.

Search (both maps masked by a soft sphere and normalised first):

1. coarse: both maps Fourier-cropped to a small box; every rotation of a HEALPix grid (reduced
   by the maps' symmetry), each with every translation at once by FFT cross-correlation;
   the ``top_k`` best rotations at least two grid steps apart go on;
2. local: each candidate refined by L-BFGS (SciPy, autograd gradients) on the real-space correlation of the maps (rotation as
   ``R0·exp(ω)``, translation continuous through a Fourier phase ramp) on the coarse box, then the
   best one again on maps cropped to a larger box;
3. with ``hand="auto"`` both hands are searched and the better correlation wins.

The aligned map is made at full size with the rotation applied on a 2× Fourier-oversampled grid
(trilinear interpolation there loses little) and the shift as a phase ramp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cryolens.core.fourier import bandpass, fourier_resize, freq_grid_3d, ft3, ift3
from cryolens.core.masks import soft_sphere
from cryolens.core.rotations import geodesic_distance, matrix_to_euler
from cryolens.core.so3_grid import so3_grid
from cryolens.core.symmetry import rotate_volume, symmetry_matrices
from cryolens.mapalign.params import AlignMapsParams

__all__ = ["MapAlignment", "align_maps", "flip_hand", "shift_volume", "transform_volume"]

Progress = Callable[[str], None]


@dataclass
class MapAlignment:
    """The transform found and the aligned map.

    Attributes:
        rotation: ``(3, 3)`` matrix ``R`` (acts on ``(x, y, z)``).
        shift: ``(3,)`` translation ``t`` in voxels ``(x, y, z)`` of the full box.
        flipped: True when the moving map was mirrored along z first.
        correlation: real-space correlation of the two maps after alignment (refinement box, masked).
        other_hand: the same for the other hand (None when only one hand was searched).
        aligned: ``(n, n, n)`` the moving map transformed onto the fixed one.
    """

    rotation: torch.Tensor
    shift: torch.Tensor
    flipped: bool
    correlation: float
    other_hand: float | None
    aligned: torch.Tensor

    def euler(self) -> tuple[float, float, float]:
        """RELION ZYZ angles ``(rot, tilt, psi)`` in degrees of ``rotation``."""
        return tuple(float(a) for a in matrix_to_euler(self.rotation.double()))  # type: ignore[return-value]


def flip_hand(volume: torch.Tensor) -> torch.Tensor:
    """Mirror a cubic map along z about the centre voxel ``n // 2`` (``out[z] = in[2·(n//2) − z]``, periodic).

    The centre stays where it is, so a centred map stays centred; applying it twice gives the map back.
    """
    n = volume.shape[-3]
    flipped = torch.flip(volume, dims=(-3,))
    return torch.roll(flipped, shifts=1, dims=-3) if n % 2 == 0 else flipped


def shift_volume(volume: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move a cubic volume's content by ``shift`` voxels ``(x, y, z)`` (periodic, Fourier phase ramp).

    Differentiable in ``shift`` (a ``(3,)`` tensor); ``out(x) = volume(x − shift)``.
    """
    n = volume.shape[-1]
    kz, ky, kx = freq_grid_3d(n, device=volume.device)
    s = shift.to(device=volume.device, dtype=torch.float32)
    phase = (-2.0 * math.pi / n) * (kx * s[0] + ky * s[1] + kz * s[2])
    return ift3(ft3(volume) * torch.polar(torch.ones_like(phase), phase), n)


def transform_volume(volume: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor, *,
                     oversample: int = 1) -> torch.Tensor:
    """``out(x) = volume(R·(x − t))`` about the centre ``n // 2``; ``t`` in voxels ``(x, y, z)``.

    ``oversample`` > 1 rotates on a Fourier-padded grid (less interpolation loss), then crops back.
    """
    n = volume.shape[-1]
    v = fourier_resize(volume, oversample * n, ndim=3) if oversample > 1 else volume
    v = rotate_volume(v, rotation.to(device=v.device, dtype=v.dtype))
    v = fourier_resize(v, n, ndim=3) if oversample > 1 else v
    return shift_volume(v, shift)


def _prepared(volume: torch.Tensor, box: int, *, pixel_size: float, lowpass: float | None) -> torch.Tensor:
    """Fourier-crop to ``box``, low-pass, mask by a soft sphere, zero mean and unit norm inside it."""
    n = volume.shape[-1]
    v = fourier_resize(volume.float(), box, ndim=3) if box < n else volume.float()
    apix = pixel_size * n / v.shape[-1]
    if lowpass is not None and lowpass > 2 * apix:
        v = bandpass(v, pixel_size=apix, high_res=lowpass, ndim=3)
    b = v.shape[-1]
    mask = soft_sphere(b, radius=b / 2 - 3, edge_width=2, device=v.device)
    v = (v - (v * mask).sum() / mask.sum()) * mask
    return v / v.norm().clamp_min(1e-30)


def _coarse(fixed: torch.Tensor, moving: torch.Tensor, rotations: torch.Tensor, *, chunk: int = 32):
    """Best translation and score for every rotation: ``(scores (R,), shifts (R, 3) voxels x, y, z)``.

    The maps are zero beyond radius ``b/2 − 1`` (:func:`_prepared`), so only the voxels inside that
    sphere are interpolated (trilinear, as :func:`cryolens.core.symmetry.rotate_volume`).
    """
    b = fixed.shape[-1]
    fa = ft3(fixed)
    c = torch.arange(b, device=fixed.device, dtype=torch.float32) - b // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1).reshape(-1, 3)
    inside = torch.nonzero(pts.norm(dim=1) < b / 2).squeeze(1)
    pts = pts[inside]
    table = moving[None, None]
    scores, shifts = [], []
    for r0 in range(0, rotations.shape[0], chunk):
        rc = rotations[r0:r0 + chunk]
        q = torch.einsum("rij,pj->rpi", rc, pts) * (2.0 / (b - 1)) + (2.0 * (b // 2) / (b - 1) - 1.0)
        vals = F.grid_sample(table.expand(rc.shape[0], -1, -1, -1, -1), q[:, :, None, None, :], mode="bilinear",
                             padding_mode="zeros", align_corners=True).reshape(rc.shape[0], -1)
        rot = torch.zeros(rc.shape[0], b ** 3, device=fixed.device)
        rot[:, inside] = vals
        rot = rot.reshape(-1, b, b, b)
        cc = ift3(fa[None] * ft3(rot).conj(), b).reshape(rot.shape[0], -1)  # cc(t) = Σ A(x)·rot(x − t)
        v, i = cc.max(dim=1)
        z, y, x = i // (b * b), (i // b) % b, i % b
        scores.append(v)
        shifts.append(torch.stack([x, y, z], 1).float() - b // 2)
    return torch.cat(scores), torch.cat(shifts)


def _distinct(scores: torch.Tensor, rotations: torch.Tensor, sym: torch.Tensor, k: int, min_angle: float):
    """Indices of the ``k`` best scores whose rotations are ``min_angle`` degrees apart (modulo symmetry)."""
    order = torch.argsort(scores, descending=True)
    kept: list[int] = []
    for i in order.tolist():
        if kept:
            d = geodesic_distance(sym[None] @ rotations[kept][:, None], rotations[i][None, None]).amin()
            if float(d) < min_angle:
                continue
        kept.append(i)
        if len(kept) == k:
            break
    return kept


def _refine(fixed: torch.Tensor, moving: torch.Tensor, r0: torch.Tensor, t0: torch.Tensor, *,
            max_iter: int = 40) -> tuple[float, torch.Tensor, torch.Tensor]:
    """L-BFGS (SciPy) on ``(ω, t)`` of ``corr(fixed, transform(moving, R0·exp(ω), t))``; returns ``(corr, R, t)``.

    ``ω`` is a rotation vector in radians, ``t`` in voxels; gradients by autograd.
    """
    from scipy.optimize import minimize  # imported here: scipy costs every command start-up time

    r0 = r0.to(fixed)

    def rot(w: torch.Tensor) -> torch.Tensor:
        z = w.new_zeros(())
        skew = torch.stack([torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]),
                            torch.stack([-w[1], w[0], z])])
        return r0 @ torch.linalg.matrix_exp(skew)

    def corr(x: torch.Tensor) -> torch.Tensor:
        out = transform_volume(moving, rot(x[:3]), x[3:])
        return (fixed * out).sum() / out.norm().clamp_min(1e-30)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        with torch.enable_grad():
            xt = torch.as_tensor(x, dtype=torch.float32, device=fixed.device).requires_grad_(True)
            loss = -corr(xt)
            loss.backward()
        return float(loss), xt.grad.detach().cpu().double().numpy()

    x0 = np.concatenate([np.zeros(3), t0.detach().cpu().double().numpy()])
    sol = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    x = torch.as_tensor(sol.x, dtype=torch.float32, device=fixed.device)
    return float(corr(x)), rot(x[:3]), x[3:]


def _search_hand(fixed_c, moving_c, fixed_r, moving_r, grid, sym, params: AlignMapsParams, step: float):
    """Coarse search, the ``top_k`` candidates refined on the coarse box, the best of them on the refinement box."""
    scores, shifts = _coarse(fixed_c, moving_c, grid)
    best = (-math.inf, None, None)
    for i in _distinct(scores, grid, sym, params.top_k, 2 * step):
        c, r, t = _refine(fixed_c, moving_c, grid[i], shifts[i], max_iter=15)
        if c > best[0]:
            best = (c, r, t)
    scale = fixed_r.shape[-1] / fixed_c.shape[-1]
    return _refine(fixed_r, moving_r, best[1], best[2] * scale, max_iter=30)


def align_maps(fixed: torch.Tensor, moving: torch.Tensor, *, pixel_size: float, params: AlignMapsParams,
               device: torch.device | str = "cpu", progress: Progress | None = None) -> MapAlignment:
    """Align ``moving`` onto ``fixed`` (both ``(n, n, n)``, same voxel size ``pixel_size`` in Å).

    Returns:
        :class:`MapAlignment` (rotation, shift in voxels of the full box, hand, correlation, aligned map).
    """
    params.validate()
    if fixed.shape != moving.shape or fixed.ndim != 3 or len(set(fixed.shape)) != 1:
        raise ValueError(f"two cubic maps of one box are needed, got {tuple(fixed.shape)} and {tuple(moving.shape)}")
    dev = torch.device(device)
    n = fixed.shape[-1]
    fixed, moving = fixed.to(dev).float(), moving.to(dev).float()
    cb, rb = min(n, params.coarse_box), min(n, params.refine_box)
    grid_obj = so3_grid(params.healpix_order, sym=params.symmetry, device=dev)
    grid = grid_obj.matrices.transpose(-1, -2).contiguous()  # poses Q ~ Q·g  <=>  R = Qᵀ ~ gᵀ·R
    sym = symmetry_matrices(params.symmetry, device=dev)
    fixed_c = _prepared(fixed, cb, pixel_size=pixel_size, lowpass=params.lowpass)
    fixed_r = _prepared(fixed, rb, pixel_size=pixel_size, lowpass=params.lowpass)
    hands = {"auto": (False, True), "yes": (True,), "no": (False,)}[params.flip_hand]
    results = {}
    for flipped in hands:
        if progress is not None:
            progress(f"searching {'the mirrored' if flipped else 'the given'} hand")
        mov = flip_hand(moving) if flipped else moving
        moving_c = _prepared(mov, cb, pixel_size=pixel_size, lowpass=params.lowpass)
        moving_r = _prepared(mov, rb, pixel_size=pixel_size, lowpass=params.lowpass)
        with torch.no_grad():
            results[flipped] = _search_hand(fixed_c, moving_c, fixed_r, moving_r, grid, sym, params,
                                            grid_obj.step_deg)
    flipped = max(results, key=lambda h: results[h][0])
    corr, rot, t = results[flipped]
    other = results.get(not flipped)
    shift = t * (n / rb)
    mov = flip_hand(moving) if flipped else moving
    with torch.no_grad():
        aligned = transform_volume(mov, rot, shift, oversample=2 if n <= 160 else 1)
    return MapAlignment(rot.cpu(), shift.cpu(), flipped, corr, None if other is None else other[0], aligned.cpu())
