"""HEALPix pose grids (RELION sizes), symmetry reduction, neighbours and local grids."""

from __future__ import annotations

import math

import pytest
import torch

from cryolens.core.rotations import euler_to_matrix, geodesic_distance, random_rotations, rotvec_to_matrix
from cryolens.core.so3_grid import (
    SO3Grid,
    healpix_directions,
    healpix_step_deg,
    in_asymmetric_unit,
    local_grid,
    local_offsets,
    neighbours,
    so3_grid,
)
from cryolens.core.symmetry import expand_poses, symmetry_matrices, symmetry_order


@pytest.mark.parametrize("order", range(5))
def test_healpix_counts_unit_vectors_and_angles(order):
    vec, ang = healpix_directions(order, dtype=torch.float64)
    n = 12 * 4**order
    assert vec.shape == (n, 3) and ang.shape == (n, 2)
    torch.testing.assert_close(vec.norm(dim=-1), torch.ones(n, dtype=torch.float64))
    rot, tilt = torch.deg2rad(ang).T
    ref = torch.stack([tilt.sin() * rot.cos(), tilt.sin() * rot.sin(), tilt.cos()], -1)
    torch.testing.assert_close(vec, ref)
    assert (ang[:, 0] >= 0).all() and (ang[:, 0] < 360).all() and (ang[:, 1] > 0).all() and (ang[:, 1] < 180).all()
    torch.testing.assert_close(vec.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # all distinct, nearly equal area: nearest-neighbour distances within a factor 1.5
    c = vec @ vec.T
    c.fill_diagonal_(-2.0)
    nn = torch.rad2deg(torch.acos(c.max(dim=1).values.clamp(-1, 1)))
    assert nn.min() > 0.3 * healpix_step_deg(order)
    assert nn.max() / nn.min() < 1.5


def test_healpix_known_pixels():
    # Nside = 1: three rings of 4 at z = 2/3, 0, -2/3; Nside = 2, pixel 0: z = 1 - 1/12, phi = 45°
    vec, ang = healpix_directions(0, dtype=torch.float64)
    torch.testing.assert_close(vec[:, 2], torch.tensor([2 / 3] * 4 + [0.0] * 4 + [-2 / 3] * 4, dtype=torch.float64))
    torch.testing.assert_close(ang[:4, 0], torch.tensor([45.0, 135, 225, 315], dtype=torch.float64))
    torch.testing.assert_close(ang[4:8, 0], torch.tensor([0.0, 90, 180, 270], dtype=torch.float64))
    vec, ang = healpix_directions(1, dtype=torch.float64)
    assert vec[0, 2].item() == pytest.approx(11 / 12)
    assert ang[0, 0].item() == pytest.approx(45.0)
    assert vec[-1, 2].item() == pytest.approx(-11 / 12)
    # ring structure: 4i pixels in polar ring i, 4 Nside in the belt
    z = vec[:, 2]
    counts = torch.unique_consecutive(torch.round(z * 1e9), return_counts=True)[1].tolist()
    assert counts == [4, 8, 8, 8, 8, 8, 4]


def test_relion_grid_sizes():
    g = so3_grid(2)
    assert isinstance(g, SO3Grid)
    assert g.directions.shape[0] == 192 and g.psi.shape[0] == 24 and len(g) == 4608
    assert g.step_deg == 15.0 and g.order == 2
    assert so3_grid(3).psi[1].item() == pytest.approx(7.5) and len(so3_grid(3)) == 768 * 48
    assert g.matrices.shape == (4608, 3, 3) and g.euler.shape == (4608, 3) and g.matrices.dtype == torch.float32
    torch.testing.assert_close(g.matrices, euler_to_matrix(*g.euler.T), atol=1e-6, rtol=0)
    # index = i_dir * n_psi + i_psi; the viewing direction is the third row
    torch.testing.assert_close(g.matrices[24 * 5 + 3, 2], g.directions[5], atol=1e-6, rtol=0)
    assert g.euler[24 * 5 + 3, 2].item() == pytest.approx(45.0)
    # step_deg picks the smallest order with step <= step_deg
    assert so3_grid(step_deg=15).order == 2 and so3_grid(step_deg=10).order == 3 and so3_grid(step_deg=60).order == 0
    with pytest.raises(ValueError):
        so3_grid()


@pytest.mark.parametrize("sym", ["C2", "C4", "C7", "D2", "D5", "T", "O", "I", "I1", "I3", "I4"])
def test_asymmetric_unit_keeps_one_per_orbit(sym):
    d = torch.randn(300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    g = symmetry_matrices(sym, dtype=torch.float64)
    orbit = torch.einsum("ni,gij->ngj", d, g)  # (n, G, 3): gᵀ d
    inside = in_asymmetric_unit(orbit, sym)
    assert inside.shape == (300, g.shape[0])
    assert (inside.sum(dim=1) == 1).all()


@pytest.mark.parametrize("sym, divisor", [("C4", 4), ("D2", 4), ("D4", 8), ("C2", 2)])
def test_symmetric_reduction_exact_when_grid_is_symmetric(sym, divisor):
    # the HEALPix grid is invariant under 90° about z and 180° about x, y
    assert len(so3_grid(3, sym=sym)) * divisor == len(so3_grid(3))


@pytest.mark.parametrize("sym, tol", [("C4", 0.0), ("D7", 0.02), ("T", 0.02), ("O", 0.02), ("I", 0.03)])
def test_symmetric_reduction_size(sym, tol):
    G = symmetry_order(sym)
    vec, _ = healpix_directions(5, dtype=torch.float64)
    n = int(in_asymmetric_unit(vec, sym).sum())
    assert abs(n / (vec.shape[0] / G) - 1) <= tol
    g3 = so3_grid(3, sym=sym)
    vec3, _ = healpix_directions(3, dtype=torch.float64)
    torch.testing.assert_close(g3.directions, vec3[in_asymmetric_unit(vec3, sym)].float())
    assert len(g3) == g3.directions.shape[0] * 48
    assert abs(len(g3) / (len(so3_grid(3)) / G) - 1) <= 0.2  # coarse grid, few directions
    # the reduced grid expanded by the group covers SO(3) as densely as the full grid
    g = so3_grid(2, sym=sym)
    R = random_rotations(200, generator=torch.Generator().manual_seed(1))
    idx = neighbours(g, R, max_angle_deg=g.step_deg, sym=sym)
    assert (idx[:, 0] >= 0).all()


def _brute(grid, R, max_angle, sym):
    d = geodesic_distance(expand_poses(R, sym)[:, None], grid.matrices[None, :, None]).amin(-1)  # (B, M)
    return [set(torch.nonzero(row <= max_angle).flatten().tolist()) for row in d], d


@pytest.mark.parametrize("sym", ["C1", "D3"])
def test_neighbours_match_brute_force(sym, device):
    grid = so3_grid(2, sym=sym, device=device)
    R = torch.cat([torch.eye(3, device=device)[None], random_rotations(30, generator=torch.Generator().manual_seed(2)).to(device)])
    max_angle = 1.5 * grid.step_deg
    idx, dist = neighbours(grid, R, max_angle_deg=max_angle, sym=sym, return_angles=True)
    assert idx.dtype == torch.long and idx.shape[0] == 31 and dist.shape == idx.shape
    sets, d = _brute(grid, R, max_angle, sym)
    for b in range(31):
        row = idx[b][idx[b] >= 0].tolist()
        assert set(row) == sets[b] and len(row) == len(sets[b]) > 0
        assert (idx[b][len(row):] == -1).all() and torch.isinf(dist[b][len(row):]).all()
        torch.testing.assert_close(dist[b][: len(row)], d[b][row], atol=1e-3, rtol=0)
        assert (dist[b][: len(row)].diff() >= 0).all()  # sorted by distance
    # chunking does not change the answer
    assert neighbours(grid, R, max_angle_deg=max_angle, sym=sym, chunk_elements=5000).equal(idx)


def test_neighbours_of_grid_points(device):
    grid = so3_grid(2, device=device)
    pick = torch.tensor([0, 7, 1000, 4607], device=device)
    idx, dist = neighbours(grid, grid.matrices[pick], max_angle_deg=grid.step_deg, return_angles=True)
    assert idx[:, 0].equal(pick) and (dist[:, 0] < 1e-2).all()
    # a symmetry-equivalent pose R·g finds the same grid point
    g = symmetry_matrices("O", device=device)
    gridO = so3_grid(2, sym="O", device=device)
    idx = neighbours(gridO, gridO.matrices[[3, 50]] @ g[[5, 17]], max_angle_deg=1.0)  # sym from the grid
    assert idx[:, 0].tolist() == [3, 50]
    assert (neighbours(gridO, gridO.matrices[[3, 50]] @ g[[5, 17]], max_angle_deg=1.0, sym="C1") == -1).all()
    # nothing within a tiny radius of a pose between grid points: an empty (B, 0) table
    far = neighbours(grid, euler_to_matrix(*torch.tensor([[1.0], [0.0], [3.0]], device=device)), max_angle_deg=1e-3)
    assert far.shape == (1, 0)


def test_local_grid(device):
    R0 = random_rotations(3, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    step, rng = 2.0, 10.0
    L = local_grid(R0, step_deg=step, range_deg=rng)
    K = local_offsets(step_deg=step, range_deg=rng).shape[0]
    n = int(rng / step)
    lattice = sum(1 for i in range(-n, n + 1) for j in range(-n, n + 1) for k in range(-n, n + 1) if i * i + j * j + k * k <= n * n)
    assert L.shape == (3, K, 3, 3) and K == lattice and L.dtype == torch.float64
    torch.testing.assert_close(L[:, 0], R0)
    d = geodesic_distance(L, R0[:, None])
    assert d.max() <= rng + 1e-6
    # every rotation within range_deg of R0 has a local grid point within one step
    w = torch.randn(500, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True) * torch.rand(500, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64) ** (1 / 3) * rng
    Rs = R0[1] @ rotvec_to_matrix(w.to(device))
    assert geodesic_distance(Rs[:, None], L[1][None]).amin(dim=1).max() <= step
    assert local_grid(R0[0], step_deg=5.0, range_deg=4.0).shape == (1, 3, 3)
    assert math.isclose(float(local_offsets(step_deg=1.0, range_deg=1.0).norm(dim=-1).max()), 1.0)
