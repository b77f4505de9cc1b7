"""Background normalisation of particle images as RELION's ``normalise`` does it.

The background of a box of size ``b`` is every pixel whose offset ``(i, j)`` from the box
centre ``(b//2, b//2)`` satisfies ``i² + j² > R²`` (``R`` = the background radius in
pixels). With ``ramp`` a plane ``a·j + b·i + c`` is fitted to the background pixels by
least squares and subtracted from the whole image (RELION's ``subtractBackgroundRamp``,
on unless ``--no_ramp``); then the background's mean is subtracted and the image divided
by the background's standard deviation (population SD, RELION's
``calculateBackgroundAvgStddev``). An image whose background SD is below 1e-10 is left
unscaled (RELION skips it with a warning).
"""

from __future__ import annotations

import torch

__all__ = ["background_mask", "normalise_background"]


def _offsets(box: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets ``(i, j)`` from the box centre ``box//2``, each ``(box, box)`` float64."""
    r = torch.arange(box, device=device, dtype=torch.float64) - box // 2
    return torch.meshgrid(r, r, indexing="ij")


def background_mask(box: int, radius: float, *, device=None) -> torch.Tensor:
    """``(box, box)`` bool: True on the background, i.e. outside the circle of ``radius`` px about ``box//2``."""
    i, j = _offsets(box, device)
    return i * i + j * j > float(radius) ** 2


def normalise_background(images: torch.Tensor, *, radius: float, ramp: bool = True) -> torch.Tensor:
    """Zero mean and unit SD in the background of each image (see the module docstring).

    Args:
        images: ``(N, b, b)`` real images, any device.
        radius: background radius [px]; pixels farther than this from the centre ``b//2``
            are the background (at least one must exist).
        ramp: subtract the least-squares plane through the background first.

    Returns:
        ``(N, b, b)`` in ``images``' dtype; the statistics are computed in float64.

    Raises:
        ValueError: no background pixel (``radius`` too large for the box).
    """
    n, b = images.shape[0], images.shape[-1]
    x = images.to(torch.float64)
    mask = background_mask(b, radius, device=images.device)
    count = int(mask.sum())
    if count == 0:
        raise ValueError(f"a background radius of {radius:g} px leaves no background in a {b} px box")
    if ramp and count >= 3:
        i, j = _offsets(b, images.device)
        design = torch.stack([j[mask], i[mask], torch.ones(count, dtype=torch.float64, device=images.device)], 1)
        coef = torch.linalg.pinv(design) @ x[:, mask].T  # (3, N): one solve for all images
        plane = (coef[0, :, None, None] * j + coef[1, :, None, None] * i + coef[2, :, None, None])
        x = x - plane
    bg = x[:, mask]
    mean = bg.mean(1)
    sd = (bg - mean[:, None]).pow(2).mean(1).sqrt()
    scale = torch.where(sd < 1e-10, torch.ones_like(sd), sd)
    out = torch.where((sd < 1e-10)[:, None, None], x, (x - mean[:, None, None]) / scale[:, None, None])
    return out.reshape(n, b, b).to(images.dtype)
