"""Background normalisation of particle images as RELION's ``normalise`` does it.

The background of a box of size ``b`` is every pixel whose offset ``(i, j)`` from the box
centre ``(b//2, b//2)`` satisfies ``i² + j² > R²`` (``R`` = the background radius in
pixels). With ``ramp`` a plane ``a·j + b·i + c`` is fitted to the background pixels by
least squares and subtracted from the whole image (RELION's ``subtractBackgroundRamp``,
on unless ``--no_ramp``); then the background's mean is subtracted and the image divided
by the background's standard deviation (population SD, RELION's
``calculateBackgroundAvgStddev``). An image whose background SD is below 1e-10 is only
shifted, not scaled (RELION skips its normalisation with a warning).
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
        ``(N, b, b)`` in ``images``' dtype (computed in float32, or float64 for float64
        input, on images first centred on their own mean).

    Raises:
        ValueError: no background pixel (``radius`` too large for the box).
    """
    n, b = images.shape[0], images.shape[-1]
    dev = images.device
    mask = background_mask(b, radius, device=dev).reshape(-1)
    count = int(mask.sum())
    if count == 0:
        raise ValueError(f"a background radius of {radius:g} px leaves no background in a {b} px box")
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.reshape(n, b * b).to(dtype)
    x = x - x.mean(1, keepdim=True)  # centred first, so float32 sums keep their digits
    weight = mask.to(dtype)
    if ramp and count >= 3:
        i, j = (t.reshape(-1) for t in _offsets(b, dev))
        basis = torch.stack([j, i, torch.ones_like(i)])  # (3, b²): the plane a·j + b·i + c
        fit = torch.zeros(3, b * b, dtype=torch.float64, device=dev)
        fit[:, mask] = torch.linalg.pinv(basis[:, mask].T)  # least squares on the background pixels only
        x = x - (x @ fit.T.to(dtype)) @ basis.to(dtype)  # one solve and one subtraction for the whole batch
    mean = (x @ weight) / count
    x = x - mean[:, None]
    sd = ((x * x) @ weight / count).sqrt()
    x = x / torch.where(sd < 1e-10, torch.ones_like(sd), sd)[:, None]
    return x.reshape(n, b, b).to(images.dtype)
