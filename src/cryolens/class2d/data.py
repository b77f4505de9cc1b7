"""What the 2D classification iterations share: schedules, the image mask, the psi grid, the image store, CTFs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from cryolens.class2d.params import Class2DParams
from cryolens.core.ctf import ctf_2d
from cryolens.core.fourier import ft2
from cryolens.core.masks import soft_sphere
from cryolens.particles import ctf_params_from_table
from cryolens.refine.noise import ShellAccumulator
from cryolens.refine.pose_search import FrequencyBand

__all__ = ["Batches", "resolution_schedule", "particles_per_iteration", "image_mask", "psi_grid", "ImageStore",
           "ctf_on_band", "masked_transform"]

#: A callable returning ``(row indices, float32 images (b, n, n))`` over every particle once.
Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def resolution_schedule(iteration: int, params: Class2DParams, *, pixel_size: float) -> float:
    """Resolution limit (Å) of ``iteration`` (1-based): from ``res_start`` to ``res_end`` linearly in frequency over
    the first 70 % of the iterations, never finer than Nyquist (``2 · pixel_size``)."""
    ramp = max(1, math.ceil(0.7 * params.iterations) - 1)
    frac = min(1.0, (iteration - 1) / ramp)
    f = 1.0 / params.res_start + frac * (1.0 / params.res_end - 1.0 / params.res_start)
    return max(1.0 / f, 2.0 * pixel_size)


def particles_per_iteration(iteration: int, n: int, params: Class2DParams) -> int:
    """Particles used by ``iteration`` (1-based): all for ``subset="all"`` and for the last iteration; else cisTEM's
    ~``particles_per_class`` per class for the first 30 % of the iterations, then 30 % of the particles."""
    if params.subset == "all" or iteration >= params.iterations:
        return n
    early = min(n, params.particles_per_class * params.classes)
    if iteration <= math.ceil(0.3 * params.iterations):
        return early
    if iteration <= math.ceil(0.6 * params.iterations):
        return min(n, max(early, math.ceil(0.3 * n)))
    return n


def image_mask(n: int, diameter_px: float, device=None) -> torch.Tensor:
    """``(n, n)`` soft disc: 1 within ``diameter_px / 2``, a cosine edge of up to 5 px outside it, 0 beyond."""
    radius = diameter_px / 2
    edge = max(0.0, min(5.0, n / 2 - radius))
    return soft_sphere(n, radius=radius, edge_width=edge, ndim=2, device=device)


def psi_grid(res: float, diameter_a: float, params: Class2DParams, rng: np.random.Generator) -> torch.Tensor:
    """In-plane angles (degrees) for alignment at ``res`` Å: step ``degrees(res / diameter_a)`` (an arc of ``res / 2``
    at the particle's edge) within [``params.psi_step``, 15°], rounded to divide 360°, from a random offset in
    ``[0, step)``.

    Twice as fine as ``degrees(res / radius)`` (measured in the README's class2d section)."""
    step = min(15.0, max(params.psi_step, math.degrees(res / diameter_a)))
    n_psi = max(1, math.ceil(360.0 / step - 1e-6))
    step = 360.0 / n_psi
    return torch.as_tensor(rng.uniform(0, step) + step * np.arange(n_psi), dtype=torch.float32)


class ImageStore:
    """The masked images' Fourier coefficients and the particles' CTFs on the final (widest) band.

    Kept on ``device`` when ``n_total · M · 12`` bytes fit ``cache_bytes``; otherwise every
    :meth:`select` reads the images again through ``batches`` and recomputes the CTFs with ``ctf``
    (``ctf(rows) -> (len(rows), M)``).
    """

    def __init__(self, batches: Batches, n_total: int, n: int, mask: torch.Tensor, band: FrequencyBand,
                 batch_size: int, cache_bytes: float, device, ctf: Callable[[np.ndarray], torch.Tensor]):
        self.batches, self.n, self.mask, self.band, self.ctf = batches, n, mask, band, ctf
        self.batch_size, self.device = batch_size, device
        fits = n_total * len(band) * 12 <= cache_bytes
        self.cache = torch.zeros(n_total, len(band), dtype=torch.complex64, device=device) if fits else None
        self.ctf_cache = torch.zeros(n_total, len(band), dtype=torch.float32, device=device) if fits else None
        self.filled = False

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """Float images ``(B, n, n)`` -> masked rfft ``(B, n, n//2+1)`` (:func:`masked_transform`)."""
        return masked_transform(images, self.mask, device=self.device)

    def first_pass(self, power: ShellAccumulator, full: FrequencyBand
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Read everything once (filling the caches and the images' power spectrum); yields rows, final-band image
        values and CTFs."""
        for idx, images in self.batches():
            f = self.prepare(images)
            power.add(full.gather(f), full)
            xb, cb = self.band.gather(f), self.ctf(idx)
            if self.cache is not None:
                where = torch.as_tensor(idx, device=self.device)
                self.cache[where], self.ctf_cache[where] = xb, cb
            yield idx, xb, cb
        self.filled = self.cache is not None

    def fill(self) -> None:
        """Read everything once into the caches (when they fit), as :meth:`first_pass` does without the spectrum;
        used when a run continues from a saved state."""
        if self.cache is None:
            return
        for idx, images in self.batches():
            where = torch.as_tensor(idx, device=self.device)
            self.cache[where], self.ctf_cache[where] = self.band.gather(self.prepare(images)), self.ctf(idx)
        self.filled = True

    def select(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """``(row indices, final-band image values, CTFs)`` of the particles in ``rows`` (sorted), in batches."""
        if self.filled:
            for a in range(0, len(rows), self.batch_size):
                r = rows[a:a + self.batch_size]
                where = torch.as_tensor(r, device=self.device)
                yield r, self.cache[where], self.ctf_cache[where]
            return
        keep = np.zeros(int(rows.max()) + 1 if len(rows) else 0, dtype=bool)
        keep[rows] = True
        for idx, images in self.batches():
            sel = idx[idx < keep.size]
            sel = sel[keep[sel]]
            if sel.size:
                pos = np.searchsorted(idx, sel)
                yield sel, self.band.gather(self.prepare(images[pos])), self.ctf(sel)


def masked_transform(images: np.ndarray, mask: torch.Tensor, *, device=None) -> torch.Tensor:
    """Float images ``(B, n, n)`` -> rfft ``(B, n, n//2+1)`` of the images times ``mask`` ``(n, n)``, each image's
    mean outside the mask (where ``mask <= 1e-6``; the whole image if nothing is outside) subtracted first."""
    x = torch.as_tensor(images, dtype=torch.float32, device=device)
    outside = mask <= 1e-6
    if outside.any():
        bg = x[:, outside].mean(dim=1)
    else:
        bg = x.mean(dim=(1, 2))
    return ft2((x - bg[:, None, None]) * mask)


def ctf_on_band(table: pd.DataFrame, rows: np.ndarray, band: FrequencyBand, pixel_size: float, use_ctf: bool,
              device) -> torch.Tensor:
    """``(len(rows), M)`` CTF of the particles ``rows`` of ``table`` on ``band`` (ones when ``use_ctf`` is false)."""
    if not use_ctf:
        return torch.ones(len(rows), len(band), device=device)
    p = ctf_params_from_table(table.iloc[rows], device=device)
    return band.gather(ctf_2d(p, box=band.n, pixel_size=pixel_size, device=device))
