"""Pose grids on SO(3) for pose searches: RELION-style HEALPix grids, neighbours, local grids.

A global grid is RELION's: the viewing directions are the centres of the
HEALPix pixels of order ``k`` (``Nside = 2**k``, ``12·Nside²`` pixels, RING
ordering), direction ``(rot, tilt) = (φ, θ)`` of the pixel centre, and each
direction is combined with in-plane angles ``psi = 0, s, 2s, …`` with
``s = 360 / (6·Nside)`` degrees (order 2: 15°, order 3: 7.5°), which is also
the grid's nominal angular step. Index ``m = i_dir · n_psi + i_psi``.

With a symmetry group, a direction ``d`` (third row of the pose ``A``) is kept
only if it lies in the Dirichlet (Voronoi) cell of a fixed generic reference
direction ``r`` under the action ``d -> gᵀ d`` (poses ``A`` and ``A·g`` are
equivalent), i.e. if no other member of its orbit is closer to ``r``; ties
(grid points on the cell boundary) are broken by two further fixed reference
directions, so exactly one member of each orbit of grid points is kept when
the grid is symmetric. The grid then has about ``1/|G|`` of the C1 size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .rotations import euler_to_matrix, geodesic_distance, rotvec_to_matrix
from .symmetry import symmetry_matrices

__all__ = [
    "SO3Grid",
    "healpix_directions",
    "healpix_step_deg",
    "so3_grid",
    "in_asymmetric_unit",
    "neighbours",
    "local_offsets",
    "local_grid",
]

# generic reference directions (normalised when used): on no rotation axis of a
# supported group and at no special angle of the HEALPix grid, so that grid
# points rarely tie on the cell boundary
_REFS = ((0.2361, 0.3817, 0.8932), (0.7713, -0.2791, 0.5719), (-0.4127, 0.8529, 0.3197))


@dataclass(frozen=True)
class SO3Grid:
    """A pose grid.

    Attributes:
        matrices: ``(M, 3, 3)`` RELION pose matrices.
        euler: ``(M, 3)`` RELION ``(rot, tilt, psi)`` in degrees.
        order: HEALPix order.
        step_deg: nominal angular step ``360 / (6·2**order)`` degrees.
        sym: symmetry group the grid was reduced by.
        directions: ``(D, 3)`` unit viewing directions kept (``(x, y, z)``).
        psi: ``(P,)`` in-plane angles in degrees; ``M = D·P``, index ``i_dir·P + i_psi``.
    """

    matrices: torch.Tensor
    euler: torch.Tensor
    order: int
    step_deg: float
    sym: str
    directions: torch.Tensor
    psi: torch.Tensor

    def __len__(self) -> int:
        return int(self.matrices.shape[0])


def healpix_step_deg(order: int) -> float:
    """Nominal angular step (and psi step) of HEALPix order ``order``: ``360/(6·2**order)``."""
    return 360.0 / (6 * 2**order)


def _isqrt(x: torch.Tensor) -> torch.Tensor:
    r = torch.floor(torch.sqrt(x.double())).long()
    r = torch.where((r + 1) * (r + 1) <= x, r + 1, r)
    return torch.where(r * r > x, r - 1, r)


def healpix_directions(
    order: int, *, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of the HEALPix pixels (RING scheme ``pix2ang``), as RELION's directions.

    Args:
        order: HEALPix order ``k >= 0`` (``Nside = 2**k``).

    Returns:
        ``(vectors, angles)``: ``(12·Nside², 3)`` unit vectors ``(x, y, z)`` and
        ``(12·Nside², 2)`` ``(rot, tilt)`` in degrees with ``rot = φ`` in
        ``[0, 360)`` and ``tilt = θ`` in ``(0, 180)``.
    """
    if order < 0:
        raise ValueError(f"HEALPix order must be >= 0, got {order}")
    nside = 2**order
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    p = torch.arange(npix, dtype=torch.long)
    fact2 = 4.0 / npix
    # north cap
    i_n = (1 + _isqrt(1 + 2 * p)) // 2
    j_n = p + 1 - 2 * i_n * (i_n - 1)
    z_n = 1.0 - (i_n * i_n).double() * fact2
    phi_n = (j_n.double() - 0.5) * (math.pi / 2) / i_n.clamp(min=1).double()
    # equatorial belt
    ip = p - ncap
    tmp = torch.div(ip, 4 * nside, rounding_mode="floor")
    i_e = tmp + nside
    j_e = ip - tmp * 4 * nside + 1
    fodd = torch.where((i_e + nside) % 2 == 1, 1.0, 0.5).double()
    z_e = (2 * nside - i_e).double() * (2.0 / (3 * nside))
    phi_e = (j_e.double() - fodd) * math.pi / (2 * nside)
    # south cap
    ip_s = npix - p
    i_s = (1 + _isqrt((2 * ip_s - 1).clamp(min=0))) // 2
    j_s = 4 * i_s + 1 - (ip_s - 2 * i_s * (i_s - 1))
    z_s = -1.0 + (i_s * i_s).double() * fact2
    phi_s = (j_s.double() - 0.5) * (math.pi / 2) / i_s.clamp(min=1).double()

    north, south = p < ncap, p >= npix - ncap
    z = torch.where(north, z_n, torch.where(south, z_s, z_e))
    phi = torch.where(north, phi_n, torch.where(south, phi_s, phi_e))
    theta = torch.acos(z.clamp(-1, 1))
    st = torch.sqrt((1 - z) * (1 + z))
    vec = torch.stack([st * torch.cos(phi), st * torch.sin(phi), z], dim=-1)
    ang = torch.stack([torch.rad2deg(phi), torch.rad2deg(theta)], dim=-1)
    return vec.to(device=device, dtype=dtype), ang.to(device=device, dtype=dtype)


def in_asymmetric_unit(
    directions: torch.Tensor, sym: str, *, tol: float | None = None, chunk: int = 2**15
) -> torch.Tensor:
    """Whether each direction is its orbit's representative under ``d -> gᵀ d``.

    The asymmetric unit is the Dirichlet cell of a fixed generic reference
    direction (boundary ties broken by two more references), so for a generic
    direction exactly one member of ``{gᵀ d : g ∈ G}`` is inside.

    Args:
        directions: ``(..., 3)`` unit vectors ``(x, y, z)`` (computed in float64).
        sym: group name.
        tol: ties within ``tol`` go to the next reference (default ``1e-9`` for
            float64 input, ``1e-6`` otherwise).
        chunk: directions processed at once (memory bound).

    Returns:
        ``(...)`` bool tensor on the input's device.
    """
    if tol is None:
        tol = 1e-9 if directions.dtype == torch.float64 else 1e-6
    lead = directions.shape[:-1]
    d_all = directions.reshape(-1, 3).to(torch.float64)
    g = symmetry_matrices(sym, dtype=torch.float64, device=d_all.device)
    refs = torch.nn.functional.normalize(torch.tensor(_REFS, dtype=torch.float64, device=d_all.device), dim=-1)
    out = []
    for c0 in range(0, d_all.shape[0], chunk):
        d = d_all[c0 : c0 + chunk]
        orbit = torch.einsum("ni,kij->knj", d, g)  # (G, n, 3): rows (g_kᵀ d)ᵀ
        diff = (d @ refs.T)[None] - orbit @ refs.T  # reference j's preference of d over g_kᵀ d
        win = torch.zeros(diff.shape[:-1], dtype=torch.bool, device=d.device)
        decided = torch.zeros_like(win)
        for j in range(diff.shape[-1]):  # lexicographic over the references
            dj = diff[..., j]
            win = win | (~decided & (dj > tol))
            decided = decided | (dj.abs() > tol)
        out.append((win | ~decided).all(dim=0))  # undecided: the same point (d on a symmetry axis)
    return torch.cat(out).reshape(lead) if out else torch.zeros(lead, dtype=torch.bool, device=directions.device)


def _order_for_step(step_deg: float) -> int:
    order = 0
    while healpix_step_deg(order) > step_deg + 1e-9:
        order += 1
    return order


def so3_grid(
    order: int | None = None,
    *,
    step_deg: float | None = None,
    sym: str = "C1",
    device=None,
    dtype=torch.float32,
) -> SO3Grid:
    """RELION-style global pose grid (HEALPix directions × psi), reduced by symmetry.

    Args:
        order: HEALPix order; or give ``step_deg`` instead to take the smallest
            order whose step ``360/(6·2**order)`` is ``<= step_deg``.
        sym: symmetry group; keeps one pose per symmetry orbit (approximately).
        device, dtype: of the returned tensors.

    Returns:
        :class:`SO3Grid`. C1 sizes: order 2 -> 192 × 24 = 4608, order 3 -> 768 × 48 = 36864.
    """
    if (order is None) == (step_deg is None):
        raise ValueError("give exactly one of order or step_deg")
    if order is None:
        order = _order_for_step(float(step_deg))
    vec, ang = healpix_directions(order, dtype=torch.float64)
    if symmetry_matrices(sym).shape[0] > 1:
        keep = in_asymmetric_unit(vec, sym)
        vec, ang = vec[keep], ang[keep]
    step = healpix_step_deg(order)
    n_psi = int(math.ceil(360.0 / step - 1e-9))
    psi = torch.arange(n_psi, dtype=torch.float64) * step
    D = vec.shape[0]
    euler = torch.stack(
        [ang[:, 0].repeat_interleave(n_psi), ang[:, 1].repeat_interleave(n_psi), psi.repeat(D)], dim=-1
    )
    mats = euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])
    cast = dict(device=device, dtype=dtype)
    return SO3Grid(
        matrices=mats.to(**cast),
        euler=euler.to(**cast),
        order=order,
        step_deg=step,
        sym=sym,
        directions=vec.to(**cast),
        psi=psi.to(**cast),
    )


def neighbours(
    grid: SO3Grid | torch.Tensor,
    R: torch.Tensor,
    *,
    max_angle_deg: float,
    sym: str | None = None,
    return_angles: bool = False,
    chunk_elements: int = 2**24,
):
    """Grid poses within ``max_angle_deg`` of each rotation, up to symmetry.

    The distance from ``R`` to grid pose ``Q`` is ``min_g geodesic(R·g, Q)`` over the
    group ``sym`` (default: the grid's own ``sym``, or C1 for a bare tensor).

    Args:
        grid: :class:`SO3Grid` or ``(M, 3, 3)`` matrices.
        R: ``(B, 3, 3)`` (or ``(3, 3)``) rotations.
        max_angle_deg: inclusive radius in degrees.
        return_angles: also return the distances.
        chunk_elements: bound on the temporary ``B·G·M`` block (memory).

    Returns:
        ``idx``: ``(B, K)`` LongTensor of grid indices sorted by increasing
        distance, padded with ``-1`` (``K`` = the largest count, possibly 0);
        with ``return_angles`` also ``(B, K)`` distances in degrees (``inf`` padding).
    """
    Q = grid.matrices if isinstance(grid, SO3Grid) else grid
    if sym is None:
        sym = grid.sym if isinstance(grid, SO3Grid) else "C1"
    if R.ndim == 2:
        R = R[None]
    B, M = R.shape[0], Q.shape[0]
    Q = Q.to(device=R.device, dtype=R.dtype)
    g = symmetry_matrices(sym, dtype=R.dtype, device=R.device)
    G = g.shape[0]
    # coarse test on traces with a safety margin, then exact angles on the candidates
    margin = min(max_angle_deg + 0.5, 180.0)
    thr = 1 + 2 * math.cos(math.radians(margin)) - 1e-5
    Qf = Q.reshape(M, 9)
    bs = max(1, min(B, chunk_elements // max(1, G * M)))
    ms = max(1, min(M, chunk_elements // max(1, G * bs)))
    bi, mi = [], []
    for b0 in range(0, B, bs):
        Rg = (R[b0 : b0 + bs, None] @ g).reshape(-1, 9)  # (b·G, 9)
        for m0 in range(0, M, ms):
            tr = (Rg @ Qf[m0 : m0 + ms].T).reshape(-1, G, min(ms, M - m0)).amax(dim=1)
            b, m = torch.nonzero(tr >= thr, as_tuple=True)
            bi.append(b + b0)
            mi.append(m + m0)
    b = torch.cat(bi) if bi else torch.zeros(0, dtype=torch.long, device=R.device)
    m = torch.cat(mi) if mi else torch.zeros(0, dtype=torch.long, device=R.device)
    ang = torch.empty(0, dtype=R.dtype, device=R.device)
    if b.numel():
        parts = []
        step = max(1, chunk_elements // (G * 9))
        for c0 in range(0, b.numel(), step):
            bc, mc = b[c0 : c0 + step], m[c0 : c0 + step]
            parts.append(geodesic_distance(R[bc, None] @ g, Q[mc, None]).amin(dim=-1))
        ang = torch.cat(parts)
        ok = ang <= max_angle_deg
        b, m, ang = b[ok], m[ok], ang[ok]
    # pack into a padded (B, K) table sorted by (row, angle)
    o = torch.sort(ang, stable=True).indices
    b, m, ang = b[o], m[o], ang[o]
    o = torch.sort(b, stable=True).indices
    b, m, ang = b[o], m[o], ang[o]
    counts = torch.bincount(b, minlength=B)
    K = int(counts.max()) if B else 0
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(b.numel(), device=R.device) - starts[b]
    idx = torch.full((B, K), -1, dtype=torch.long, device=R.device)
    idx[b, pos] = m
    if not return_angles:
        return idx
    dist = torch.full((B, K), math.inf, dtype=R.dtype, device=R.device)
    dist[b, pos] = ang
    return idx, dist


def local_offsets(*, step_deg: float, range_deg: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(K, 3)`` rotation vectors (degrees) on the cubic lattice ``step_deg·Z³`` with norm ``<= range_deg``.

    Sorted by norm, so row 0 is the zero vector.
    """
    n = int(math.floor(range_deg / step_deg + 1e-9))
    k = torch.arange(-n, n + 1, dtype=torch.float64) * step_deg
    v = torch.cartesian_prod(k, k, k)
    r = v.norm(dim=-1)
    v = v[r <= range_deg * (1 + 1e-9)]
    v = v[torch.sort(v.norm(dim=-1), stable=True).indices]
    return v.to(device=device, dtype=dtype)


def local_grid(R0: torch.Tensor, *, step_deg: float, range_deg: float) -> torch.Tensor:
    """Local pose grid ``R0 · exp(ω)`` for ``ω`` in :func:`local_offsets`.

    The geodesic distance of each pose to ``R0`` is ``|ω| <= range_deg``.

    Args:
        R0: ``(..., 3, 3)`` centre rotations.
        step_deg: lattice spacing of the rotation vectors, degrees.
        range_deg: radius, degrees.

    Returns:
        ``(..., K, 3, 3)``; index 0 is ``R0`` itself.
    """
    w = local_offsets(step_deg=step_deg, range_deg=range_deg, device=R0.device, dtype=R0.dtype)
    return R0[..., None, :, :] @ rotvec_to_matrix(w)
