"""New extraction coordinates from refined origins (RELION 3.1's ``--reextract_data_star --recenter``).

In RELION 3.1 a particle whose image carries the origin ``(ox, oy) = rlnOriginX/YAngst``
has its centre at ``rlnCoordinateX − ox / p`` (and Y alike), ``p`` being the pixel size of
the coordinates (the micrograph's). Re-extraction moves the coordinate by the whole
pixels of that shift and keeps the remainder as the new origin:

    s = ox / p − (R · c)_x / p          (c: optional point of the reference to centre on, Å)
    rlnCoordinateX' = rlnCoordinateX − ROUND(s)
    rlnOriginXAngst' = (s − ROUND(s)) · p

with ``ROUND`` rounding halves away from zero and ``R`` the particle's rotation
(:func:`cryolens.core.rotations.euler_to_matrix` of rlnAngleRot/Tilt/Psi), as RELION's
``--recenter_x/y/z``. The new box is then cut around the integer coordinate
(:func:`cryolens.extract.extract_particles`) at any box size or binning; the origin in Å
does not depend on the pixel size of the new particles.
"""

from __future__ import annotations

import torch

__all__ = ["recentre", "round_half_away"]


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, halves away from zero (RELION's ``ROUND``; torch rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def recentre(coords: torch.Tensor, origins_A: torch.Tensor, *, pixel_size: float,
             centre_A: torch.Tensor | None = None,
             rotations: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-centred coordinates and the residual sub-pixel origins (see the module docstring).

    Args:
        coords: ``(N, 2)`` ``rlnCoordinateX/Y`` [px of the micrograph].
        origins_A: ``(N, 2)`` ``rlnOriginXAngst/YAngst`` [Å].
        pixel_size: Å per pixel of the coordinates (the micrograph's).
        centre_A: optional ``(3,)`` point ``(x, y, z)`` of the reference [Å from its centre] to
            put at the new box centres (RELION's ``--recenter_x/y/z`` times the reference's
            pixel size); needs ``rotations``.
        rotations: ``(N, 3, 3)`` particle rotation matrices (RELION's ``Euler_angles2matrix``).

    Returns:
        ``(coords', origins_A')``: ``(N, 2)`` float64 integer-valued coordinates [px] and
        ``(N, 2)`` float64 residual origins [Å], each component within ±pixel_size / 2.

    Raises:
        ValueError: shapes that do not match, or ``centre_A`` without ``rotations``.
    """
    c = torch.as_tensor(coords, dtype=torch.float64)
    o = torch.as_tensor(origins_A, dtype=torch.float64, device=c.device)
    if c.ndim != 2 or c.shape[1] != 2 or o.shape != c.shape:
        raise ValueError(f"coordinates {tuple(c.shape)} and origins {tuple(o.shape)} must both be (N, 2)")
    shift = o.clone()
    if centre_A is not None:
        if rotations is None:
            raise ValueError("re-centring on a point of the reference needs the particles' rotations")
        r = torch.as_tensor(rotations, dtype=torch.float64, device=c.device)
        point = torch.as_tensor(centre_A, dtype=torch.float64, device=c.device).reshape(3)
        shift = shift - (r @ point)[:, :2]
    s = shift / float(pixel_size)
    whole = round_half_away(s)
    return c - whole, (s - whole) * float(pixel_size)
