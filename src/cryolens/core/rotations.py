"""Rotations: RELION Euler angles, quaternions, random rotations, distances.

Conventions (RELION 3.1, pinned by tests):

* Euler angles are RELION's ZYZ ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``
  in degrees, and :func:`euler_to_matrix` is RELION's ``Euler_angles2matrix``.
* A matrix ``A`` acts on column vectors ``(x, y, z)`` (x first, even though
  arrays are stored ``(z, y, x)``). ``A`` maps volume coordinates to image
  coordinates: RELION projects a volume ``V`` as
  ``image(x, y) = ∫ V(Aᵀ (x, y, z)ᵀ) dz``. The viewing direction in the volume
  frame is the third row of ``A``.
* Quaternions are ``(w, x, y, z)``, scalar first, Hamilton convention; the
  matrix of a unit quaternion is the usual active rotation matrix.

All functions are batched over leading dimensions, follow the input tensor's
device and dtype, and default to float32 when they create tensors.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "random_quaternions",
    "random_rotations",
    "random_euler",
    "geodesic_distance",
    "axis_angle_to_matrix",
    "rotvec_to_matrix",
    "matrix_to_rotvec",
    "cryosparc_pose_to_euler",
    "euler_to_cryosparc_pose",
]



def _as_tensor(x, ref: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    if ref is not None:
        return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def euler_to_matrix(rot, tilt, psi) -> torch.Tensor:
    """RELION ``Euler_angles2matrix`` (ZYZ).

    Args:
        rot, tilt, psi: angles in degrees, tensors (or numbers) of broadcastable
            shape ``(...)``.

    Returns:
        ``(..., 3, 3)`` rotation matrices ``A`` (volume -> image coordinates),
        in the dtype/device of the first tensor argument.
    """
    ref = next((t for t in (rot, tilt, psi) if isinstance(t, torch.Tensor)), None)
    rot, tilt, psi = (_as_tensor(t, ref) for t in (rot, tilt, psi))
    rot, tilt, psi = torch.broadcast_tensors(rot, tilt, psi)
    a, b, g = torch.deg2rad(rot), torch.deg2rad(tilt), torch.deg2rad(psi)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], dim=-1),
        torch.stack([sc, ss, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_euler(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`euler_to_matrix`, RELION ``Euler_matrix2angles`` convention.

    Args:
        R: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(rot, tilt, psi)`` in degrees, each of shape ``(...)``; tilt in
        ``[0, 180]``, rot and psi in ``[-180, 180]``. As in RELION, when
        ``|sin(tilt)| <= 16·FLT_EPSILON`` (gimbal lock) rot is 0, tilt is 0 or
        180 and the whole in-plane rotation goes into psi. (RELION uses
        16·FLT_EPSILON whatever its precision; here it is 16·eps of the input
        dtype, identical for float32 and keeping float64 round trips exact.)

    Psi is computed from the well-conditioned upper-left 2x2 block
    (``rot ± psi``) rather than from the third column, so that
    ``euler_to_matrix(*matrix_to_euler(R)) == R`` to rounding even in float32
    close to gimbal lock; for exact rotations the angles equal RELION's.
    """
    A = R
    a02, a12 = A[..., 0, 2], A[..., 1, 2]
    a20, a21, a22 = A[..., 2, 0], A[..., 2, 1], A[..., 2, 2]
    abs_sb = torch.sqrt(a02 * a02 + a12 * a12)
    gimbal = abs_sb <= 16 * torch.finfo(A.dtype).eps
    alpha = torch.where(gimbal, torch.zeros_like(a20), torch.atan2(a21, a20))
    beta = torch.atan2(abs_sb, a22)
    flat = torch.where(a22 > 0, torch.zeros_like(beta), torch.full_like(beta, math.pi))
    beta = torch.where(gimbal, flat, beta)
    # (1 + cb) (cos, sin)(rot + psi) and (1 - cb) (cos, sin)(psi - rot)
    sum_ang = torch.atan2(A[..., 0, 1] - A[..., 1, 0], A[..., 0, 0] + A[..., 1, 1])
    dif_ang = torch.atan2(A[..., 0, 1] + A[..., 1, 0], A[..., 1, 1] - A[..., 0, 0])
    gamma = torch.where(a22 >= 0, sum_ang - alpha, dif_ang + alpha)
    gamma = torch.atan2(torch.sin(gamma), torch.cos(gamma))
    return torch.rad2deg(alpha), torch.rad2deg(beta), torch.rad2deg(gamma)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of quaternions ``(..., 4)`` = ``(w, x, y, z)``.

    The quaternion is normalised first. Returns ``(..., 3, 3)``.
    """
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` = ``(w, x, y, z)`` with ``w >= 0`` of ``(..., 3, 3)``.

    Uses the numerically stable branch (largest of ``w, x, y, z``) per matrix.
    """
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate solutions, each well conditioned when its pivot is large
    tw = 1 + m00 + m11 + m22
    tx = 1 + m00 - m11 - m22
    ty = 1 - m00 + m11 - m22
    tz = 1 - m00 - m11 + m22
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    cand = torch.stack(
        [
            torch.stack([tw, d21, d02, d10], -1),
            torch.stack([d21, tx, s10, s02], -1),
            torch.stack([d02, s10, ty, s21], -1),
            torch.stack([d10, s02, s21, tz], -1),
        ],
        dim=-2,
    )  # (..., 4, 4): row k is 4·q_k·q
    best = torch.stack([tw, tx, ty, tz], -1).argmax(-1)
    idx = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(cand, -2, idx).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(axis: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Active rotation by ``angle_deg`` (right hand) about ``axis``.

    Args:
        axis: ``(..., 3)`` (normalised here), ``(x, y, z)`` order.
        angle_deg: ``(...)`` degrees, broadcastable with ``axis[..., 0]``.

    Returns:
        ``(..., 3, 3)``.
    """
    axis = axis / axis.norm(dim=-1, keepdim=True)
    half = torch.deg2rad(_as_tensor(angle_deg, axis)) / 2
    q = torch.cat([torch.cos(half)[..., None], torch.sin(half)[..., None] * axis], dim=-1)
    return quaternion_to_matrix(q)


def random_quaternions(
    n: int, *, generator: torch.Generator | None = None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``(n, 4)`` unit quaternions (``w >= 0``) uniform on SO(3) (normalised Gaussians)."""
    q = torch.randn(n, 4, generator=generator, device=device, dtype=dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[:, :1] < 0, -q, q)


def random_rotations(
    n: int, *, generator: torch.Generator | None = None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``(n, 3, 3)`` rotation matrices drawn uniformly (Haar measure) from SO(3).

    ``generator`` must live on ``device`` (default: the generator's device, else CPU).
    """
    if device is None and generator is not None:
        device = generator.device
    return quaternion_to_matrix(random_quaternions(n, generator=generator, device=device, dtype=dtype))


def random_euler(
    n: int, generator: torch.Generator | None = None, *, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RELION ``(rot, tilt, psi)`` in degrees, each ``(n,)``, of uniform random rotations."""
    return matrix_to_euler(random_rotations(n, generator=generator, device=device, dtype=dtype))


def geodesic_distance(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of ``R1ᵀ R2`` (the geodesic distance on SO(3)).

    Args:
        R1, R2: ``(..., 3, 3)``, broadcast against each other.

    Returns:
        ``(...)`` angles in ``[0, 180]`` degrees. Uses ``atan2(sin, cos)`` so
        that small angles are accurate (no ``acos`` loss near 0).
    """
    M = R1.transpose(-1, -2) @ R2
    cos = (M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2] - 1) / 2
    v = torch.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1)
    sin = v.norm(dim=-1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def rotvec_to_matrix(rotvec_deg: torch.Tensor) -> torch.Tensor:
    """Exponential map: rotation by ``|v|`` degrees about ``v/|v|``.

    Args:
        rotvec_deg: ``(..., 3)`` rotation vectors in degrees (``(x, y, z)``).

    Returns:
        ``(..., 3, 3)``; the zero vector gives the identity.
    """
    ang = rotvec_deg.norm(dim=-1, keepdim=True)
    half = torch.deg2rad(ang) / 2
    axis = rotvec_deg / torch.where(ang > 0, ang, torch.ones_like(ang))
    q = torch.cat([torch.cos(half), torch.sin(half) * axis], dim=-1)
    return quaternion_to_matrix(q)


def matrix_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    """Logarithm map, inverse of :func:`rotvec_to_matrix`.

    Args:
        R: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` rotation vectors in degrees, ``(x, y, z)``, of length in ``[0, 180]``.
    """
    q = matrix_to_quaternion(R)  # w >= 0: angle in [0, 180]
    v = q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    ang = torch.rad2deg(2 * torch.atan2(s, q[..., :1]))
    return v * (ang / torch.where(s > 0, s, torch.ones_like(s)))


def cryosparc_pose_to_euler(pose_rad) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RELION Euler angles of cryoSPARC poses (``alignments3D/pose``).

    cryoSPARC stores a particle's orientation as a rotation vector ``r`` (radians; axis
    ``r/|r|``, angle ``|r|``). Its rotation matrix (Rodrigues) is the transpose of RELION's
    :func:`euler_to_matrix` ``A`` (volume -> image), so ``A = rotvec_to_matrix(-r)``; pyem
    (``csparc2star``) and cryoDRGN convert the same way.

    Args:
        pose_rad: ``(..., 3)`` rotation vectors in radians (tensor or array).

    Returns:
        ``(rot, tilt, psi)`` in degrees, each ``(...)`` (:func:`matrix_to_euler` ranges).
    """
    r = _as_tensor(pose_rad).to(torch.float64)
    return matrix_to_euler(rotvec_to_matrix(-torch.rad2deg(r)))


def euler_to_cryosparc_pose(rot, tilt, psi) -> torch.Tensor:
    """cryoSPARC ``alignments3D/pose`` (``(..., 3)`` rotation vectors, radians) of RELION Euler angles in
    degrees; the inverse of :func:`cryosparc_pose_to_euler` (computed in float64)."""
    A = euler_to_matrix(*(_as_tensor(t).to(torch.float64) for t in (rot, tilt, psi)))
    return torch.deg2rad(matrix_to_rotvec(A.transpose(-1, -2)))
