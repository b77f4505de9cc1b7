"""Class averages against ground truth: the best normalised cross-correlation with the truth's projections.

For simulated data (``cryolens simulate particles`` records every particle's true pose), a
class average of a good view should match the CTF-free projection of the truth map at its
members' viewing directions. :func:`class_truth_ncc` takes, for each class, up to
``max_members`` of its members, projects the truth at their ``(rot, tilt)`` (psi 0) and
returns the best NCC over those projections, all in-plane angles (step ``psi_step``) and
shifts up to ``max_shift`` px, after masking both images with the same soft disc and
low-passing both to ``resolution`` Å (a class holds nothing finer than its alignment limit).
"""

from __future__ import annotations

import numpy as np
import torch

from cryolens.class2d.data import image_mask
from cryolens.class2d.rotation import BandRotator, inplane_matrices
from cryolens.core.fourier import bandpass, ft2, ift2
from cryolens.core.projector import prepare_volume, project
from cryolens.core.rotations import euler_to_matrix
from cryolens.refine.pose_search import FrequencyBand

__all__ = ["class_truth_ncc", "aligned_ncc"]


def aligned_ncc(reference: torch.Tensor, candidates: torch.Tensor, *, psi_step: float = 3.0,
                max_shift: float = 4.0) -> torch.Tensor:
    """Best NCC of each candidate image against ``reference`` over in-plane rotations and shifts.

    Args:
        reference: ``(n, n)`` real image (masked, filtered as wanted).
        candidates: ``(m, n, n)`` real images.
        psi_step: rotation step (°); max_shift: shift radius (px), integer shifts.

    Returns:
        ``(m,)`` best correlation coefficient (mean-free: the DC term is left out).
    """
    n = reference.shape[-1]
    band = FrequencyBand.build(n, n / 2, device=reference.device)
    rot = BandRotator(band, device=reference.device)
    a = band.gather(ft2(reference[None]))[0]
    c = band.gather(ft2(candidates))
    psi = torch.arange(0.0, 360.0, psi_step)
    mats = inplane_matrices(psi).to(reference.device)[None].expand(len(c), -1, 2, 2)
    rc = rot.rotate(c, mats)  # (m, R, M)
    w = torch.where(band.shell == 0, 0.0, 2 * band.weight)  # full-plane multiplicity; mean-free: no DC
    norm_a = torch.sqrt((w * a.abs() ** 2).sum())
    norm_c = torch.sqrt((w * rc.abs() ** 2).sum(-1))  # (m, R)
    prod = rc.conj() * a * (w > 0)
    grid = torch.zeros(*prod.shape[:2], n * (n // 2 + 1), dtype=torch.complex64, device=reference.device)
    grid[..., band.flat] = prod
    # n² · irfft2 of the half plane = the full-plane sum: the cross-correlation at every integer shift.
    cc = torch.fft.irfft2(grid.reshape(*prod.shape[:2], n, n // 2 + 1), s=(n, n)) * (n * n)
    yy, xx = torch.meshgrid(torch.fft.fftfreq(n, 1 / n), torch.fft.fftfreq(n, 1 / n), indexing="ij")
    near = (xx ** 2 + yy ** 2) <= max_shift ** 2
    best = cc[..., near.to(cc.device)].amax(-1) / (norm_a * norm_c).clamp_min(1e-30)
    return best.amax(-1)


def class_truth_ncc(classes: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, members: list[np.ndarray],
                    *, pixel_size: float, resolution: float, diameter: float, max_members: int = 30,
                    psi_step: float = 3.0, max_shift: float = 4.0, seed: int = 0) -> np.ndarray:
    """Per class, the best NCC of its average with a CTF-free projection of ``truth`` at a member's view.

    Args:
        classes: ``(K, n, n)`` class averages; truth: ``(n, n, n)`` map on the same grid.
        members: per class, ``(m, 2)`` true ``(rot, tilt)`` (°) of its members (may be empty).
        pixel_size: Å; resolution: low-pass of both images (Å); diameter: mask diameter (Å).
        max_members: members tried per class (chosen at random with ``seed``).
        psi_step (°), max_shift (px): in-plane search of :func:`aligned_ncc`.

    Returns:
        ``(K,)`` NCC (NaN for an empty class).
    """
    cls = torch.as_tensor(np.asarray(classes), dtype=torch.float32)
    n = cls.shape[-1]
    mask = image_mask(n, diameter / pixel_size)
    fvol = prepare_volume(torch.as_tensor(np.asarray(truth), dtype=torch.float32))
    rng = np.random.default_rng(seed)
    out = np.full(len(cls), np.nan)
    for k, views in enumerate(members):
        if len(views) == 0:
            continue
        views = np.asarray(views)[rng.permutation(len(views))[:max_members]]
        rot = torch.as_tensor(views, dtype=torch.float32)
        mats = euler_to_matrix(rot[:, 0], rot[:, 1], torch.zeros(len(rot)))
        proj = ift2(project(fvol, mats), n) * mask
        proj = bandpass(proj, pixel_size=pixel_size, high_res=resolution)
        ref = bandpass(cls[k] * mask, pixel_size=pixel_size, high_res=resolution)
        out[k] = float(aligned_ncc(ref, proj, psi_step=psi_step, max_shift=max_shift).max())
    return out
