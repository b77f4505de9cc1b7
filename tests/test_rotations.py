"""RELION Euler angles, quaternions, random rotations and geodesic distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cryolens.core.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    geodesic_distance,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_euler,
    random_rotations,
    rotvec_to_matrix,
)


def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION 3.1 ``Euler_angles2matrix`` written out independently (float64)."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def E(rot, tilt, psi, dtype=torch.float64):
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    return euler_to_matrix(t(rot), t(tilt), t(psi))


def assert_rotation(R: torch.Tensor, atol=1e-6):
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye.expand_as(R), atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype, device=R.device), atol=atol, rtol=0)


@pytest.mark.parametrize(
    "angles, expected",
    [
        # rot = 90 alone: x̂ (volume) -> -ŷ (image), ŷ -> x̂; a rotation about z by -90°
        ((90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        # psi acts like rot when tilt = 0
        ((0, 0, 90), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        # tilt = 90: viewing direction (third row) is +x; image x is -z of the volume
        ((0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
        # tilt = 180: z flipped, x flipped
        ((0, 180, 0), [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]),
        ((90, 90, 0), [[0, 0, -1], [-1, 0, 0], [0, 1, 0]]),
        ((0, 90, 90), [[0, 1, 0], [0, 0, 1], [1, 0, 0]]),
    ],
)
def test_euler_to_matrix_explicit(angles, expected):
    torch.testing.assert_close(E(*angles), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_euler_to_matrix_matches_relion_formula_and_zyz_product():
    g = torch.Generator().manual_seed(0)
    ang = torch.rand(50, 3, generator=g, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0]) - torch.tensor(
        [180.0, 0.0, 180.0]
    )
    R = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    ref = np.stack([relion_matrix(*a) for a in ang.tolist()])
    np.testing.assert_allclose(R.numpy(), ref, atol=1e-12)

    def rz(a):
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(b):
        c, s = math.cos(math.radians(b)), math.sin(math.radians(b))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    for (a, b, c), Rm in zip(ang.tolist()[:5], R.numpy()[:5]):
        np.testing.assert_allclose(Rm, rz(c) @ ry(b) @ rz(a), atol=1e-12)
        # viewing direction in the volume frame = third row
        b_, a_ = math.radians(b), math.radians(a)
        np.testing.assert_allclose(Rm[2], [math.sin(b_) * math.cos(a_), math.sin(b_) * math.sin(a_), math.cos(b_)], atol=1e-12)


def test_euler_to_matrix_orthonormal_broadcast_dtype(device):
    rot = torch.linspace(-180, 180, 7, device=device)
    R = euler_to_matrix(rot[:, None], torch.tensor(33.0, device=device), torch.zeros(1, 5, device=device))
    assert R.shape == (7, 5, 3, 3) and R.dtype == torch.float32 and R.device.type == device.type
    assert_rotation(R)
    assert euler_to_matrix(10.0, 20.0, 30.0).shape == (3, 3)
    assert E(1, 2, 3).dtype == torch.float64


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 3e-6), (torch.float64, 1e-12)])
def test_matrix_euler_round_trip_including_gimbal_lock(device, dtype, atol):
    g = torch.Generator().manual_seed(1)
    n = 400
    rot = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    psi = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    tilt = torch.rand(n, generator=g, dtype=torch.float64) * 180
    special = torch.tensor([0.0, 180.0, 1e-7, 1e-5, 1e-4, 1e-3, 0.05, 179.95, 179.999, 179.9999, 180 - 1e-7, 90.0], dtype=torch.float64)
    tilt[: len(special) * 10] = special.repeat(10)
    R = euler_to_matrix(rot, tilt, psi).to(device=device, dtype=dtype)
    r, t, p = matrix_to_euler(R)
    assert r.dtype == dtype and r.device.type == device.type
    torch.testing.assert_close(euler_to_matrix(r, t, p), R, atol=atol, rtol=0)
    assert (t >= 0).all() and (t <= 180).all()
    assert (r.abs() <= 180).all() and (p.abs() <= 180).all()
    # away from gimbal lock the angles themselves come back
    ok = (tilt > 0.1) & (tilt < 179.9)
    if dtype == torch.float64:
        torch.testing.assert_close(r[ok.to(device)].cpu(), rot[ok], atol=1e-9, rtol=0)
        torch.testing.assert_close(t[ok.to(device)].cpu(), tilt[ok], atol=1e-9, rtol=0)
        torch.testing.assert_close(p[ok.to(device)].cpu(), psi[ok], atol=1e-9, rtol=0)


def test_gimbal_lock_convention_is_relions():
    # tilt = 0: rot = 0, everything in psi; tilt = 180: rot = 0, psi = psi - rot
    r, t, p = matrix_to_euler(E([30.0, 30.0], [0.0, 180.0], [40.0, 40.0]))
    torch.testing.assert_close(r, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(t, torch.tensor([0.0, 180.0], dtype=torch.float64))
    torch.testing.assert_close(p, torch.tensor([70.0, 10.0], dtype=torch.float64))
    # float32 snaps |sin(tilt)| <= 16·FLT_EPSILON (tilt < ~1.1e-4°) to tilt = 0 as RELION does
    r, t, p = matrix_to_euler(E([30.0, 30.0], [1e-5, 180 - 1e-5], [40.0, 40.0], dtype=torch.float32))
    torch.testing.assert_close(r, torch.zeros(2))
    torch.testing.assert_close(t, torch.tensor([0.0, 180.0]))
    torch.testing.assert_close(p, torch.tensor([70.0, 10.0]))


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-180, 180),
    st.one_of(st.floats(0, 180), st.sampled_from([0.0, 1e-9, 1e-6, 180.0, 180 - 1e-6])),
    st.floats(-180, 180),
)
def test_round_trip_property(rot, tilt, psi):
    R = E(rot, tilt, psi)
    R2 = euler_to_matrix(*matrix_to_euler(R))
    assert (R2 - R).abs().max() < 1e-10


def test_quaternions(device):
    R = random_rotations(500, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    q = matrix_to_quaternion(R)
    assert q.shape == (500, 4) and (q[:, 0] >= 0).all()
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(500, dtype=torch.float64, device=device))
    torch.testing.assert_close(quaternion_to_matrix(q), R, atol=1e-12, rtol=0)
    # 180° rotations (w = 0) survive the round trip
    flips = torch.diag_embed(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64))
    torch.testing.assert_close(quaternion_to_matrix(matrix_to_quaternion(flips)), flips, atol=1e-12, rtol=0)
    # active rotation about z by +90°: x̂ -> ŷ
    Rz = quaternion_to_matrix(torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]))
    torch.testing.assert_close(Rz @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(axis_angle_to_matrix(torch.tensor([0.0, 0, 2]), torch.tensor(90.0)), Rz)
    torch.testing.assert_close(rotvec_to_matrix(torch.tensor([0.0, 0, 90])), Rz)
    torch.testing.assert_close(rotvec_to_matrix(torch.zeros(3)), torch.eye(3))


def test_random_rotations_uniform(device):
    n = 20000
    gen = torch.Generator(device=device).manual_seed(3)
    R = random_rotations(n, generator=gen)
    assert R.shape == (n, 3, 3) and R.device.type == device.type and R.dtype == torch.float32
    assert_rotation(R, atol=1e-5)
    assert R.mean(0).abs().max() < 0.03  # E[R] = 0 under the Haar measure
    # angle to the identity has density (1 - cos θ)/π, i.e. CDF (θ - sin θ)/π
    theta = torch.deg2rad(geodesic_distance(R, torch.eye(3, device=device))).double().sort().values.cpu()
    cdf = (theta - torch.sin(theta)) / math.pi
    emp = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (cdf - emp).abs().max() < 0.015  # Kolmogorov-Smirnov, p ~ 1e-3 at this n
    same = random_rotations(n, generator=torch.Generator(device=device).manual_seed(3))
    torch.testing.assert_close(same, R)


def test_random_euler_distribution():
    rot, tilt, psi = random_euler(20000, torch.Generator().manual_seed(4))
    assert rot.shape == tilt.shape == psi.shape == (20000,)
    assert (tilt >= 0).all() and (tilt <= 180).all()
    # uniform rotations: cos(tilt) uniform on [-1, 1], rot and psi uniform
    c = torch.cos(torch.deg2rad(tilt))
    assert abs(c.mean()) < 0.02 and abs(c.var() - 1 / 3) < 0.01
    assert abs(rot.mean()) < 4 and abs(psi.mean()) < 4 and abs(rot.std() - 360 / math.sqrt(12)) < 3


def test_geodesic_distance():
    ax = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    ang = torch.tensor([0.0, 1e-4, 0.01, 1.0, 45.0, 90.0, 179.0, 180.0], dtype=torch.float64)
    R = axis_angle_to_matrix(ax, ang)
    torch.testing.assert_close(geodesic_distance(torch.eye(3, dtype=torch.float64), R), ang, atol=1e-9, rtol=0)
    # invariant under common left/right multiplication, symmetric, broadcasting
    A = random_rotations(4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d = geodesic_distance(A[:, None] @ R[None], A[:, None])
    assert d.shape == (4, 8)
    torch.testing.assert_close(d, ang.expand(4, 8), atol=1e-9, rtol=0)
    # small angles stay accurate in float32
    r32 = axis_angle_to_matrix(ax.float(), torch.tensor([0.01]))
    assert abs(geodesic_distance(r32, torch.eye(3)).item() - 0.01) < 1e-4
