"""Mask-corrected FSC by high-resolution noise substitution (Chen et al. 2013), as RELION does it.

1. FSC of the unmasked half maps; find the first shell ``r`` (> 0) where it drops below
   ``randomize_at_fsc`` (0.8, RELION's ``--randomize_at_fsc``; or a resolution given in Å).
2. Replace the phases of both half maps by random ones at every frequency ``|k| >= r``
   (amplitudes kept), mask both, FSC -> ``FSC_n`` (phase-randomised, masked).
3. ``FSC_true = (FSC_t − FSC_n) / (1 − FSC_n)`` from shell ``r + 2`` on (RELION moves the
   start two shells out, past the partial shells near the cut); ``FSC_t`` (the masked
   FSC) below.

``../shared/SPA-NOTES.md`` (cryoSPARC's wording) randomises beyond FSC 0.143; the default
here follows RELION 3.1 (0.8) so that the numbers compare with ``relion_postprocess``;
both are a ``randomize_at_fsc`` away.

Shells are ``round(|k|)`` (cycles per box), as in :mod:`cryolens.core.fsc`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from cryolens.core.fourier import ft3, ift3, radius_3d
from cryolens.core.fsc import FSCResult, fsc

__all__ = ["FSCCurves", "randomize_from_shell", "randomize_phases_beyond", "noise_substitution",
           "corrected_fsc", "with_curve"]


@dataclass
class FSCCurves:
    """Every FSC curve of a postprocessing run (``(S,)`` arrays inside :class:`FSCResult`).

    Attributes:
        unmasked: FSC of the half maps as they are.
        masked: FSC of the masked half maps (``None`` without a mask).
        random_masked: FSC of the masked, phase-randomised half maps (``None`` without a mask).
        corrected: ``FSC_true`` (the masked FSC corrected by noise substitution); the
            unmasked FSC when there is no mask.
        randomize_shell: first shell whose phases were randomised (``None`` without a mask).
    """

    unmasked: FSCResult
    masked: FSCResult | None
    random_masked: FSCResult | None
    corrected: FSCResult
    randomize_shell: int | None

    @property
    def randomize_angstrom(self) -> float | None:
        """Resolution (Å) from which phases were randomised (RELION's rlnRandomiseFrom)."""
        if self.randomize_shell is None:
            return None
        return float(self.unmasked.n * self.unmasked.pixel_size / self.randomize_shell)


def with_curve(template: FSCResult, curve: np.ndarray) -> FSCResult:
    """A copy of ``template`` (same shells, frequencies) carrying another curve."""
    return dataclasses.replace(template, fsc=np.asarray(curve, dtype=float))


def randomize_from_shell(fsc_unmasked: np.ndarray, *, threshold: float = 0.8) -> int:
    """First shell ``> 0`` where the unmasked FSC falls below ``threshold`` (RELION's randomize_at).

    Raises:
        ValueError: the curve never falls below ``threshold``.
    """
    c = np.asarray(fsc_unmasked, dtype=float)
    below = np.nonzero(c[1:] < threshold)[0]
    if len(below) == 0:
        raise ValueError(f"the unmasked FSC never drops below {threshold:g}, so there is no resolution from "
                         "which to randomise phases")
    return int(below[0]) + 1


def randomize_phases_beyond(volume: torch.Tensor, shell: float, *, generator: torch.Generator | None = None
                            ) -> torch.Tensor:
    """Volume with random phases at every frequency ``|k| >= shell`` (cycles per box), amplitudes kept.

    The random phases are those of the transform of white Gaussian noise, so they are
    uniform and Hermitian-consistent (the result stays real without losing amplitude on
    the ``kx = 0`` plane). ``generator`` (a CPU ``torch.Generator``) makes it reproducible.
    """
    n = volume.shape[-1]
    f = ft3(volume.float())
    noise = torch.randn(volume.shape, generator=generator, dtype=torch.float32).to(volume.device)
    fn = ft3(noise)
    phase = fn / fn.abs().clamp_min(1e-30)
    beyond = radius_3d(n, device=volume.device) >= shell
    f = torch.where(beyond, f.abs() * phase, f)
    return ift3(f, n)


def noise_substitution(fsc_masked: np.ndarray, fsc_random_masked: np.ndarray, randomize_shell: int, *,
                       skip_shells: int = 2) -> np.ndarray:
    """``FSC_true``: masked FSC below shell ``randomize_shell + skip_shells``, ``(FSC_t − FSC_n)/(1 − FSC_n)`` from it.

    Like RELION, a non-positive FSC at the origin counts as 1, and the result is not clipped
    (it may go slightly negative where both curves are noise).
    """
    t = np.asarray(fsc_masked, dtype=float).copy()
    rn = np.asarray(fsc_random_masked, dtype=float).copy()
    if t[0] <= 0:
        t[0] = 1.0
    if rn[0] <= 0:
        rn[0] = 1.0
    out = t.copy()
    start = max(0, randomize_shell + skip_shells)
    out[start:] = (t[start:] - rn[start:]) / np.maximum(1.0 - rn[start:], 1e-6)
    return out


def corrected_fsc(half1: torch.Tensor, half2: torch.Tensor, mask: torch.Tensor | None, *, pixel_size: float,
                  randomize_at_fsc: float = 0.8, randomize_at_angstrom: float | None = None,
                  seed: int = 0) -> FSCCurves:
    """Unmasked, masked, phase-randomised masked and corrected FSC of two half maps.

    Args:
        half1, half2: ``(n, n, n)`` half maps (independent halves of the data).
        mask: ``(n, n, n)`` soft mask in ``[0, 1]``, or ``None`` (then corrected = unmasked).
        pixel_size: Å per voxel.
        randomize_at_fsc: randomise phases from the first shell where the unmasked FSC
            drops below this value (RELION's default 0.8).
        randomize_at_angstrom: randomise from this resolution (Å) instead, when given.
        seed: seed of the random phases.

    Raises:
        ValueError: the unmasked FSC never drops below ``randomize_at_fsc``.
    """
    unmasked = fsc(half1, half2, pixel_size=pixel_size)
    if mask is None:
        return FSCCurves(unmasked, None, None, unmasked, None)
    n = half1.shape[-1]
    masked = fsc(half1, half2, pixel_size=pixel_size, mask=mask)
    if randomize_at_angstrom is not None and randomize_at_angstrom > 0:
        shell = max(1, int(n * pixel_size / randomize_at_angstrom))
    else:
        shell = randomize_from_shell(unmasked.fsc, threshold=randomize_at_fsc)
    # Mix the seed: a generator seeded like the one that drew the half maps' noise would give
    # "random" phases equal to that noise's phases (seen in testing: the correction then fails).
    g = torch.Generator().manual_seed((int(seed) * 2654435761 + 0x5EED1234) % 2 ** 63)
    r1 = randomize_phases_beyond(half1, shell, generator=g)
    r2 = randomize_phases_beyond(half2, shell, generator=g)
    random_masked = fsc(r1, r2, pixel_size=pixel_size, mask=mask)
    corrected = with_curve(masked, noise_substitution(masked.fsc, random_masked.fsc, shell))
    return FSCCurves(unmasked, masked, random_masked, corrected, shell)
