"""Junk images for the particle simulator: what a picker also boxes besides good particles.

``cryolens simulate particles --junk F`` replaces the fraction ``F`` of the particles by
junk of four kinds, in equal numbers (:data:`JUNK_KINDS`):

* ``empty``: a box with no particle (noise only);
* ``blob``: ice contamination or an aggregate, 1 to 4 overlapping smooth Gaussian blobs
  of random size (σ 4–15 % of the box) near the centre, denser than a particle (peak
  0.7–2 × the particles' typical peak projection);
* ``cut``: a true particle (its own pose and structure) shifted 30–50 % of the box away
  from the centre, so the box edge cuts it; its origin in the STAR file is the shift;
* ``carbon``: a carbon edge, a straight step across the box (random direction, position
  within ±30 % of the box, ~1 px wide, 0.3–1 × the typical peak).

Junk is drawn on a canvas twice the box, the particle's CTF applied there and the centre
cropped (the CTF fringes of what lies outside the box reach into it, as on a
micrograph); the noise is then added like for the good particles. Ground truth:
``rlnCryolensJunk`` (1 junk, 0 good) and ``rlnCryolensJunkKind`` (``good`` or the kind).
Junk draws use their own random stream, so the good particles do not change with ``F``
and ``F = 0`` leaves the simulator's output as it was.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from cryolens.core.ctf import CTFParams, ctf_2d
from cryolens.core.fourier import ft2, ift2, shift_phase

__all__ = ["JUNK_COLUMN", "JUNK_KIND_COLUMN", "JUNK_KINDS", "draw_junk", "junk_images"]

#: cryolens-specific STAR column: 1 for junk, 0 for a good particle (ground truth only).
JUNK_COLUMN = "rlnCryolensJunk"
#: cryolens-specific STAR column: ``good`` or the junk kind.
JUNK_KIND_COLUMN = "rlnCryolensJunkKind"
#: Junk kinds; their 1-based position is the code :func:`draw_junk` returns.
JUNK_KINDS = ("empty", "blob", "cut", "carbon")


def draw_junk(df: pd.DataFrame, fraction: float, *, box: int, pixel_size: float,
              generator: torch.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Choose ``round(fraction · len(df))`` junk rows, their kinds (balanced) and the cut particles' shifts.

    Args:
        df: the simulated particle table (not modified).
        fraction: junk fraction in [0, 1].
        box: box size in pixels; pixel_size: Å per pixel.
        generator: the junk random stream.

    Returns:
        ``(table, codes)``: a copy of ``df`` with :data:`JUNK_COLUMN` and :data:`JUNK_KIND_COLUMN`
        and, for ``cut`` rows, ``rlnOriginXAngst/YAngst`` set to the (large) true origin in Å;
        ``codes`` per row: 0 good, else 1 + index into :data:`JUNK_KINDS`.
    """
    n = len(df)
    n_junk = int(round(fraction * n))
    codes = np.zeros(n, dtype=np.int64)
    rows = torch.randperm(n, generator=generator)[:n_junk].numpy()
    codes[rows] = (torch.randperm(n_junk, generator=generator) % len(JUNK_KINDS)).numpy() + 1
    out = df.copy()
    cut = np.flatnonzero(codes == 1 + JUNK_KINDS.index("cut"))
    angle = 2 * math.pi * torch.rand(len(cut), generator=generator, dtype=torch.float64).numpy()
    dist = box * (0.3 + 0.2 * torch.rand(len(cut), generator=generator, dtype=torch.float64).numpy())
    # the particle appears at -origin (RELION): origin = -(position of its centre) in Å
    out.loc[out.index[cut], "rlnOriginXAngst"] = -dist * np.cos(angle) * pixel_size
    out.loc[out.index[cut], "rlnOriginYAngst"] = -dist * np.sin(angle) * pixel_size
    out[JUNK_COLUMN] = (codes > 0).astype(int)
    out[JUNK_KIND_COLUMN] = np.array(("good",) + JUNK_KINDS, dtype=object)[codes]
    return out, codes


def _blobs(b: int, m: int, peak: float, gen: torch.Generator, device) -> torch.Tensor:
    """``(b, m, m)`` clusters of 1–4 Gaussian blobs near the centre of an ``m`` canvas (``m`` = 2 box)."""
    box = m // 2
    y, x = (torch.arange(m, device=device, dtype=torch.float32) - m // 2,) * 2
    r = lambda *s: torch.rand(*s, generator=gen).to(device)  # noqa: E731
    centre = (2 * r(b, 1, 2) - 1) * 0.1 * box
    offsets = centre + (2 * r(b, 4, 2) - 1) * 0.15 * box
    sigma = box * (0.04 + 0.11 * r(b, 4))
    used = (torch.arange(4, device=device)[None] < torch.randint(1, 5, (b, 1), generator=gen).to(device)).float()
    dy = (y[None, None, :, None] - offsets[..., 1, None, None]) ** 2
    dx = (x[None, None, None, :] - offsets[..., 0, None, None]) ** 2
    g = torch.exp(-(dx + dy) / (2 * sigma[..., None, None] ** 2)) * used[..., None, None]
    g = g.sum(1)
    amp = peak * (0.7 + 1.3 * r(b))
    return g / g.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12) * amp[:, None, None]


def _edges(b: int, m: int, peak: float, gen: torch.Generator, device) -> torch.Tensor:
    """``(b, m, m)`` straight steps (carbon edges) across an ``m`` canvas, ~1 px wide."""
    box = m // 2
    coords = torch.arange(m, device=device, dtype=torch.float32) - m // 2
    r = lambda *s: torch.rand(*s, generator=gen).to(device)  # noqa: E731
    theta = 2 * math.pi * r(b)
    offset = (2 * r(b) - 1) * 0.3 * box
    d = coords[None, None, :] * torch.cos(theta)[:, None, None] + coords[None, :, None] * torch.sin(theta)[:, None, None]
    amp = peak * (0.3 + 0.7 * r(b))
    return torch.sigmoid((d - offset[:, None, None]) / 0.7) * amp[:, None, None]


def junk_images(codes: np.ndarray, projections: torch.Tensor, ctf: CTFParams | None, *, pixel_size: float,
                shifts_px: torch.Tensor, peak: float, generator: torch.Generator) -> torch.Tensor:
    """Noise-free junk images of the given kinds, with the CTF.

    Args:
        codes: ``(b,)`` kind codes 1..4 (see :func:`draw_junk`).
        projections: ``(b, n, n)`` centred projections without CTF (used by ``cut`` rows).
        ctf: the rows' CTF (None: no CTF).
        pixel_size: Å per pixel.
        shifts_px: ``(b, 2)`` ``(dx, dy)`` position of each cut particle's centre in pixels.
        peak: the particles' typical peak projection value (scales blobs and edges).
        generator: the junk random stream (CPU).

    Returns:
        ``(b, n, n)`` float32 images on the projections' device.
    """
    b, n = projections.shape[0], projections.shape[-1]
    m, device = 2 * n, projections.device
    codes_t = torch.as_tensor(codes, device=device)[:, None, None]
    canvas = torch.zeros((b, m, m), device=device)
    lo = m // 2 - n // 2
    canvas[:, lo:lo + n, lo:lo + n] = projections * (codes_t == 1 + JUNK_KINDS.index("cut"))
    canvas = torch.where(codes_t == 1 + JUNK_KINDS.index("blob"), _blobs(b, m, peak, generator, device), canvas)
    canvas = torch.where(codes_t == 1 + JUNK_KINDS.index("carbon"), _edges(b, m, peak, generator, device), canvas)
    f = shift_phase(ft2(canvas), shifts_px.to(device, torch.float32), m)
    if ctf is not None:
        f = f * ctf_2d(ctf, box=m, pixel_size=pixel_size, device=device)
    return ift2(f, m)[:, lo:lo + n, lo:lo + n].contiguous()
