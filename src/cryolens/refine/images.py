"""Particle images prepared for the pose search: transforms (raw and masked) and CTFs per batch.

Shared by refinement and 3D classification, which stream the images once per iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from cryolens.core.ctf import ctf_2d
from cryolens.core.fourier import ft2
from cryolens.particles import ctf_params_from_table

__all__ = ["prepared_batches"]


def prepared_batches(batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], table: pd.DataFrame, *,
                     pixel_size: float, image_mask: torch.Tensor, use_ctf: bool, device: torch.device
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(rows, masked transforms, raw transforms, CTF)`` per batch, on ``device``.

    Args:
        batches: called once; yields ``(row indices into table, images (b, n, n) float32)``.
        table: per-particle table with optics merged in (CTF columns read when ``use_ctf``).
        pixel_size: Å per pixel; image_mask: ``(n, n)`` soft disc applied before the masked transform.
        use_ctf: compute the CTF per image (else ones).

    Yields:
        rows ``(b,)`` long; masked and raw ``(b, n, n//2+1)`` complex64 (:func:`cryolens.core.fourier.ft2`);
        CTF ``(b, n, n//2+1)`` float32.
    """
    for idx, images in batches():
        rows = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        img = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32, device=device)
        n = img.shape[-1]
        raw = ft2(img)
        masked = ft2(img * image_mask)
        if use_ctf:
            ctf = ctf_2d(ctf_params_from_table(table.iloc[rows.numpy()], device), box=n, pixel_size=pixel_size,
                         device=device)
        else:
            ctf = torch.ones(raw.shape, dtype=torch.float32, device=device)
        yield rows.to(device), masked, raw, ctf
