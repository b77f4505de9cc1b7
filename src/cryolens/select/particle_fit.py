"""How well each particle matches its 2D class average: a signal-detection z-score.

For particle ``x`` in class ``c`` with in-plane angle ``psi`` (°) and origin ``o`` (px) from
the classification, the model is the class average rotated by ``psi``, shifted by ``-o``
(RELION's convention: the particle sits at ``-origin``) and multiplied by the particle's
CTF. Inside the particle circle (soft mask ``w``), both mean-subtracted,

    ``z = <x, m> / (||m|| · σ_x)``,   ``σ_x² = Σ w²x² / Σ w²``,

the correlation in units of the image's noise: pure noise gives ``z`` near the best of
many random correlations (about 2-3 after the classification's pose search), a particle
``z ≈ √(SNR · pixels in the circle)`` times its agreement with the average. Empty boxes,
edge-cut particles and other junk hiding in a good class have a low ``z``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryolens.core.ctf import CTFParams, ctf_2d
from cryolens.core.fourier import ft2, ift2, shift_phase

__all__ = ["rotate_each", "particle_z"]


def rotate_each(images: torch.Tensor, psi_deg: torch.Tensor) -> torch.Tensor:
    """``(B, n, n)`` images, each rotated by its own in-plane angle ``psi`` (°, RELION's sense) about ``n//2``."""
    n = images.shape[-1]
    a = -torch.deg2rad(psi_deg.to(images.device, torch.float32))  # the array's y axis points down
    c = torch.arange(n, device=images.device, dtype=torch.float32) - n // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    cos, sin = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    xs = cos * xx + sin * yy + n // 2
    ys = -sin * xx + cos * yy + n // 2
    grid = torch.stack([(2 * xs + 1) / n - 1, (2 * ys + 1) / n - 1], dim=-1)
    return F.grid_sample(images.float()[:, None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[:, 0]


def particle_z(images: torch.Tensor, averages: torch.Tensor, psi_deg: torch.Tensor, origins_px: torch.Tensor,
               ctf: CTFParams | None, *, pixel_size: float, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` z-scores of particles against their class averages (see the module docstring).

    Args:
        images: ``(B, n, n)`` particles; averages: ``(B, n, n)`` each particle's class average.
        psi_deg: ``(B,)`` in-plane angles (°); origins_px: ``(B, 2)`` ``rlnOriginX/Y`` in pixels.
        ctf: the particles' CTF (None: no CTF).
        pixel_size: Å per pixel; mask: ``(n, n)`` soft particle circle.
    """
    n = images.shape[-1]
    f = shift_phase(ft2(rotate_each(averages, psi_deg)), -origins_px.to(torch.float32), n)
    if ctf is not None:
        f = f * ctf_2d(ctf, box=n, pixel_size=pixel_size, device=images.device)
    w = mask.to(images.device)

    def centred(v: torch.Tensor) -> torch.Tensor:
        return (v - (v * w).sum((-2, -1), keepdim=True) / w.sum()) * w

    m, x = centred(ift2(f, n)), centred(images.float())
    sigma = (x.flatten(1).pow(2).sum(1) / w.pow(2).sum()).sqrt()
    return (x * m).sum((-2, -1)) / (m.flatten(1).norm(dim=1) * sigma).clamp_min(1e-30)
