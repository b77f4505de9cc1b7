"""Particle boxes cut from one micrograph, batched over particles (RELION 3.1's extraction).

Geometry (checked against ``relion_preprocess --extract`` 3.1.3): a coordinate ``(x, y)``
is a 0-based (column, row) position in the micrograph; its integer part (RELION casts to
an integer, truncating: 100.6 -> 100) is the pixel that lands at the box centre
``(box//2, box//2)``, so the box covers columns ``int(x) − box//2 … int(x) + box//2 − 1``.
A box that leaves the micrograph is skipped (``edge="skip"``, counted in
:attr:`Extracted.n_skipped`) or, as RELION does, filled with the nearest edge pixels
(``edge="replicate"``); a box entirely outside is always skipped (RELION stops with an
error on it).

Per particle, in RELION's order: optional phase flip (``F · sign(CTF)`` with the
particle's own defocus, :mod:`cryolens.core.ctf`, at the micrograph's pixel size, in a
window of ``flip_box`` px whose pixels outside the micrograph hold the micrograph's mean,
then cut to ``box`` and the edge pixels replicated: RELION 3.1's per-particle flipping
with ``--premultiply_extract_size``), Fourier cropping to ``bin_to``
(:func:`fourier_crop`, RELION's ``--scale``; never real-space interpolation), background
normalisation (:mod:`cryolens.extract.normalise`), inversion. With the same
coordinates and options the particles equal ``relion_preprocess --extract``'s to float
precision (``tests/test_extract.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from cryolens.core.ctf import CTFParams, ctf_2d, phase_flip
from cryolens.extract.defocus import MicrographCTF
from cryolens.extract.normalise import normalise_background
from cryolens.extract.params import ExtractParams

__all__ = ["Extracted", "box_corners", "boxes_inside", "window_boxes", "replicate_edges", "fourier_crop",
           "iter_extract", "extract_particles"]


@dataclass
class Extracted:
    """Particles of one micrograph.

    Attributes:
        images: ``(M, b, b)`` float32 particle images (``b`` = the final box), in the order
            of the kept coordinates.
        kept: ``(N,)`` bool over the input coordinates: True where a particle was extracted.
        pixel_size: Å per pixel of ``images`` (micrograph pixel size × box / final box).
    """

    images: torch.Tensor
    kept: torch.Tensor
    pixel_size: float

    @property
    def n_skipped(self) -> int:
        """How many coordinates gave no particle (their box left the micrograph)."""
        return int((~self.kept).sum())


def _check_coords(coords: torch.Tensor) -> torch.Tensor:
    c = torch.as_tensor(coords)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coordinates must be an (N, 2) array of x, y pixels, not shape {tuple(c.shape)}")
    if c.numel() and not torch.isfinite(c.to(torch.float64)).all():
        raise ValueError("coordinates must be finite numbers (found NaN or infinity)")
    return c


def box_corners(coords: torch.Tensor, *, box: int) -> torch.Tensor:
    """``(N, 2)`` int64 ``(x0, y0)``: the micrograph pixel at each box's index ``(0, 0)``.

    ``x0 = int(x) − box//2`` with ``int`` truncating towards zero, as RELION 3.1 does.
    """
    c = _check_coords(coords)
    return torch.trunc(c.to(torch.float64)).to(torch.int64) - box // 2


def boxes_inside(coords: torch.Tensor, *, box: int, shape: tuple[int, int], edge: str = "skip") -> torch.Tensor:
    """``(N,)`` bool: which boxes can be extracted from a micrograph of ``shape = (H, W)`` pixels.

    ``edge="skip"``: the whole box lies inside; ``"replicate"``: at least one of its
    pixels does (the rest is filled from the edge).
    """
    h, w = shape
    x0, y0 = box_corners(coords, box=box).unbind(1)
    if edge == "skip":
        return (x0 >= 0) & (y0 >= 0) & (x0 + box <= w) & (y0 + box <= h)
    if edge == "replicate":
        return (x0 + box > 0) & (y0 + box > 0) & (x0 < w) & (y0 < h)
    raise ValueError(f"edge must be skip or replicate, not {edge!r}")


def window_boxes(micrograph: torch.Tensor, corners: torch.Tensor, *, box: int,
                 fill: float | None = None) -> torch.Tensor:
    """``(N, box, box)`` windows of ``micrograph (H, W)`` with their pixel ``(0, 0)`` at ``corners (N, 2)`` (x0, y0).

    Pixels outside the micrograph take the value of the nearest edge pixel (RELION's
    filling; ``fill=None``) or the value ``fill``; one gather for the whole batch.
    """
    h, w = micrograph.shape[-2:]
    step = torch.arange(box, device=micrograph.device)
    c = corners.to(micrograph.device)
    cols, rows = c[:, 0, None] + step, c[:, 1, None] + step
    out = micrograph[rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    if fill is not None:
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        out = torch.where(inside, out, torch.as_tensor(fill, dtype=out.dtype, device=out.device))
    return out


def replicate_edges(images: torch.Tensor, corners: torch.Tensor, *, shape: tuple[int, int]) -> torch.Tensor:
    """Boxes ``(N, b, b)`` whose pixels outside a micrograph of ``shape`` take the nearest inside pixel's value.

    ``corners (N, 2)``: each box's ``(x0, y0)`` in the micrograph. RELION's boundary step,
    done after phase flipping.
    """
    h, w = shape
    n, b = images.shape[0], images.shape[-1]
    step = torch.arange(b, device=images.device)
    c = corners.to(images.device)
    cols = torch.minimum(torch.maximum(step, -c[:, 0, None]), w - 1 - c[:, 0, None])
    rows = torch.minimum(torch.maximum(step, -c[:, 1, None]), h - 1 - c[:, 1, None])
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def fourier_crop(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Bin ``(B, n, n)`` real images to ``(B, m, m)`` by cropping their Fourier transform (RELION's way).

    The rfft keeps the frequencies ``ky = −m/2+1 … m/2`` and ``kx = 0 … m/2`` (the positive
    Nyquist, nothing folded: RELION's ``windowFourierTransform``, so that binned particles
    match ``relion_preprocess --scale``); values are kept (a constant image stays that
    constant) and the pixel size grows by ``n / m``. ``m`` even and ``≤ n``.
    """
    n = images.shape[-1]
    if new_box == n:
        return images
    f = torch.fft.rfft2(images)
    h = new_box // 2
    rows = torch.cat([torch.arange(h + 1), torch.arange(n - h + 1, n)]).to(images.device)
    cropped = f[..., rows, : h + 1]
    return torch.fft.irfft2(cropped, s=(new_box, new_box)) * (new_box / n) ** 2


def _process(x: torch.Tensor, params: ExtractParams) -> torch.Tensor:
    """Binning, normalisation and inversion of a batch of boxes ``(B, box, box)``."""
    if params.bin_to is not None:
        x = fourier_crop(x, params.bin_to)
    if params.normalise:
        x = normalise_background(x, radius=params.radius, ramp=params.ramp)
    if params.invert:
        x = -x
    return x.contiguous()


def _flipped_boxes(micrograph: torch.Tensor, corners: torch.Tensor, ctf: CTFParams, *, params: ExtractParams,
                   pixel_size: float, fill: float) -> torch.Tensor:
    """Phase-flipped boxes, RELION 3.1's way: window ``flip_box`` px (outside filled with the micrograph's
    mean), ``F · sign(CTF)`` at the micrograph's pixel size, the central ``box`` px kept, then edge
    pixels replicated where the box leaves the micrograph (``edge="replicate"``).
    """
    fb = params.flip_box or params.box
    pad = (fb - params.box) // 2
    x = window_boxes(micrograph, corners - pad, box=fb, fill=fill).to(torch.float32)
    sign = ctf_2d(ctf, box=fb, pixel_size=pixel_size, device=micrograph.device)
    x = torch.fft.irfft2(phase_flip(torch.fft.rfft2(x), sign), s=(fb, fb))
    x = x[:, pad:pad + params.box, pad:pad + params.box]
    if params.edge == "replicate":
        x = replicate_edges(x, corners, shape=tuple(micrograph.shape[-2:]))
    return x


def iter_extract(micrograph: torch.Tensor, coords: torch.Tensor, *, params: ExtractParams, pixel_size: float,
                 ctf: MicrographCTF | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Particles of one micrograph in batches of ``params.batch_size``: ``(indices (m,), images (m, b, b))``.

    ``indices`` index the rows of ``coords`` (only kept ones, ascending). Arguments as
    :func:`extract_particles`; ``progress(done, total)`` counts kept particles. Memory
    follows one batch (plus the micrograph).
    """
    params.validate()
    if params.phase_flip and ctf is None:
        raise ValueError(f"{params.flag('phase_flip')} needs the micrograph's CTF (rlnDefocusU/V/Angle)")
    if micrograph.ndim != 2:
        raise ValueError(f"a micrograph must be one 2-D image, not shape {tuple(micrograph.shape)}")
    shape = (int(micrograph.shape[0]), int(micrograph.shape[1]))
    c = _check_coords(coords)
    kept = boxes_inside(c, box=params.box, shape=shape, edge=params.edge)
    idx = torch.nonzero(kept.cpu()).reshape(-1)
    corners = box_corners(c, box=params.box).cpu()
    total = int(idx.numel())
    fill = float(micrograph.mean(dtype=torch.float64)) if params.phase_flip and total else 0.0
    for start in range(0, total, params.batch_size):
        sel = idx[start:start + params.batch_size]
        if params.phase_flip:
            where = c.cpu()[sel].to(torch.float64)
            flat = ctf.gradient_x == 0 and ctf.gradient_y == 0
            p = ctf.ctf_params(where[:1] if flat else where, shape=shape)  # a flat specimen: one CTF for all
            boxes = _flipped_boxes(micrograph, corners[sel], p, params=params, pixel_size=pixel_size, fill=fill)
        else:
            boxes = window_boxes(micrograph, corners[sel], box=params.box).to(torch.float32)
        yield sel, _process(boxes, params)
        if progress is not None:
            progress(min(start + params.batch_size, total), total)


def extract_particles(micrograph: torch.Tensor, coords: torch.Tensor, *, params: ExtractParams, pixel_size: float,
                      ctf: MicrographCTF | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Extracted:
    """Cut, phase-flip, bin, normalise and invert the particles of one micrograph.

    Args:
        micrograph: ``(H, W)`` image as recorded (protein dark), any device; the work runs there.
        coords: ``(N, 2)`` particle centres ``(x, y)`` in micrograph pixels (0-based column,
            row; ``rlnCoordinateX/Y``).
        params: :class:`ExtractParams` (box, binning, normalisation, inversion, phase flip, edge).
        pixel_size: Å per micrograph pixel.
        ctf: the micrograph's CTF and defocus plane (needed for ``params.phase_flip``;
            each particle is flipped with the defocus at its own coordinate).
        progress: ``progress(done, total)`` after each batch.

    Returns:
        :class:`Extracted` (images of the kept particles, the kept mask, output pixel size).

    Raises:
        ValueError: impossible parameters (the message names the flag), coordinates that
            are not ``(N, 2)`` finite numbers, phase flipping without a CTF.
    """
    params.validate()
    out = params.out_box
    parts = [images for _, images in iter_extract(micrograph, coords, params=params, pixel_size=pixel_size,
                                                 ctf=ctf, progress=progress)]
    images = torch.cat(parts) if parts else torch.zeros(0, out, out, device=micrograph.device)
    kept = boxes_inside(coords, box=params.box, shape=tuple(micrograph.shape[-2:]), edge=params.edge)
    return Extracted(images=images, kept=kept, pixel_size=float(pixel_size) * params.box / out)
