"""Point groups in RELION 3.1's orientations, equivalent poses and map symmetrisation."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from cryolens.core.rotations import axis_angle_to_matrix, euler_to_matrix, geodesic_distance, random_rotations
from cryolens.core.symmetry import (
    expand_poses,
    rotate_volume,
    symmetrize_volume,
    symmetry_matrices,
    symmetry_order,
)
from cryolens.errors import InputError

ORDERS = {"C1": 1, "C2": 2, "C4": 4, "C7": 7, "D2": 4, "D5": 10, "D7": 14, "T": 12, "O": 24,
          "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def contains(group: torch.Tensor, R: torch.Tensor, tol: float = 1e-6) -> bool:
    return bool(((group - R).abs().amax(dim=(-1, -2)) < tol).any())


def rot(fold: int, axis) -> torch.Tensor:
    return axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float64), torch.tensor(360.0 / fold, dtype=torch.float64))


def smooth_volume(n: int, seed: int = 0, sigma: float = 2.0) -> torch.Tensor:
    """Random smooth volume inside a sphere (no symmetry)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 1, n, n, n, generator=g, dtype=torch.float64)
    r = torch.arange(-6, 7, dtype=torch.float64)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()
    for d in range(3):
        shape = [1, 1, 1]
        shape[d] = 13
        v = torch.nn.functional.conv3d(v, k.reshape(1, 1, *shape), padding="same")
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return v[0, 0] * ((x**2 + y**2 + z**2) < (n / 2 - 4) ** 2)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("name, order", ORDERS.items())
def test_group_order_closure_inverses(name, order):
    g = symmetry_matrices(name, dtype=torch.float64)
    assert g.shape == (order, 3, 3) and symmetry_order(name) == order
    torch.testing.assert_close(g[0], torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(g @ g.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(g), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(order, dtype=torch.float64), atol=1e-12, rtol=0)
    prod = (g[:, None] @ g[None]).reshape(-1, 3, 3)
    d = (prod[:, None] - g[None]).abs().amax(dim=(-1, -2))
    assert (d.min(dim=1).values < 1e-9).all(), "not closed under multiplication"
    inv = g.transpose(-1, -2)
    assert all(contains(g, m, 1e-9) for m in inv)
    # distinct elements
    dd = (g[:, None] - g[None]).abs().amax(dim=(-1, -2)) + torch.eye(order, dtype=torch.float64)
    assert dd.min() > 1e-3


def test_names_dtype_and_errors():
    torch.testing.assert_close(symmetry_matrices("i"), symmetry_matrices("I2"))
    torch.testing.assert_close(symmetry_matrices(" d7 "), symmetry_matrices("D7"))
    assert symmetry_matrices("C3").dtype == torch.float32
    assert symmetry_matrices("C3", dtype=torch.float64).dtype == torch.float64
    for bad in ["X", "C0", "D", "I5", "C-2", ""]:
        with pytest.raises(InputError, match="unknown symmetry"):
            symmetry_matrices(bad)
    with pytest.raises(InputError, match=r"use C1, Cn, Dn, T, O or I \(I1-I4\)"):
        symmetry_matrices("Q")


@pytest.mark.parametrize(
    "name, generators",
    [
        ("C7", [(7, (0, 0, 1))]),
        ("D5", [(5, (0, 0, 1)), (2, (1, 0, 0))]),
        ("T", [(3, (0, 0, 1)), (2, (0, 0.816496580927726, 0.5773502691896258))]),
        ("O", [(3, (1, 1, 1)), (4, (0, 0, 1)), (4, (1, 0, 0)), (2, (1, 1, 0))]),
        ("I1", [(2, (1, 0, 0)), (5, (0.85065080702670, 0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0))]),
        ("I2", [(2, (0, 0, 1)), (5, (0.5257311121191336, 0, 0.85065080835204)), (3, (0, 0.356822089773, 0.934172358963))]),
        ("I3", [(2, (-0.5257311143, 0, 0.8506508070)), (5, (0, 0, 1)), (3, (-0.4911234778630044, 0.3568220765, 0.7946544753))]),
        ("I4", [(2, (0.5257311143, 0, 0.8506508070)), (5, (0.8944271932547096, 0, 0.4472135909903704)),
                (3, (0.4911234778630044, 0.3568220765, 0.7946544753))]),
    ],
)
def test_relion_axes_present(name, generators):
    g = symmetry_matrices(name, dtype=torch.float64)
    for fold, axis in generators:
        assert contains(g, rot(fold, axis), tol=1e-6), (name, fold, axis)


def test_icosahedral_orientations_differ():
    # I1..I4 are the same abstract group in four different orientations
    groups = [symmetry_matrices(f"I{k}", dtype=torch.float64) for k in range(1, 5)]
    for i in range(4):
        for j in range(i + 1, 4):
            shared = sum(contains(groups[j], m) for m in groups[i])
            assert shared < 60
    # I2: 2-fold about z, none of the 5-folds about z; I3: 5-fold about z
    assert contains(groups[1], rot(2, (0, 0, 1))) and not contains(groups[1], rot(5, (0, 0, 1)))
    assert contains(groups[2], rot(5, (0, 0, 1)))


def test_expand_poses(device):
    R = random_rotations(6, generator=torch.Generator().manual_seed(0)).to(device)
    E = expand_poses(R, "D3")
    assert E.shape == (6, 6, 3, 3) and E.device.type == device.type
    torch.testing.assert_close(E[:, 0], R)
    g = symmetry_matrices("D3", device=device)
    torch.testing.assert_close(E[2, 4], R[2] @ g[4])
    # viewing direction (third row) of A·g is gᵀ d
    torch.testing.assert_close(E[:, :, 2, :], torch.einsum("gji,bj->bgi", g, R[:, 2, :]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sym", ["C2", "C4", "D2"])
def test_symmetrize_exact_on_odd_cube(sym):
    # 90°/180° rotations about the centre of an odd box move voxels onto voxels
    v = torch.randn(9, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = symmetrize_volume(v, sym)
    if sym == "C2":  # 2-fold about z: (x, y) -> (-x, -y); arrays are (z, y, x)
        ref = (v + v.flip(-1, -2)) / 2
    elif sym == "C4":
        ref = sum(torch.rot90(v, k, dims=(-2, -1)) for k in range(4)) / 4
    else:  # z 2-fold flips (y, x); x 2-fold flips (z, y); y 2-fold flips (z, x)
        ref = (v + v.flip(-1, -2) + v.flip(-2, -3) + v.flip(-1, -3)) / 4
    torch.testing.assert_close(s, ref, atol=1e-10, rtol=0)
    assert symmetrize_volume(v, "C1").equal(v) or torch.allclose(symmetrize_volume(v, "C1"), v, atol=1e-12)


@pytest.mark.parametrize("sym", ["C4", "D2", "T", "I"])
def test_symmetrized_volume_is_invariant(sym, device):
    v = smooth_volume(24).float().to(device)
    s = symmetrize_volume(v, sym)
    assert s.shape == v.shape and s.dtype == v.dtype and s.device.type == device.type
    g = symmetry_matrices(sym, device=device)
    inner = slice(4, 20)
    for k in range(1, g.shape[0], max(1, g.shape[0] // 5)):
        r = rotate_volume(s, g[k])
        assert corr(r[inner, inner, inner], s[inner, inner, inner]) > 0.99
    assert corr(s, v) < 0.9  # it did something
    # batched over leading dims
    torch.testing.assert_close(symmetrize_volume(torch.stack([v, 2 * v]), sym)[1], 2 * s, atol=1e-5, rtol=1e-5)


def test_rotate_volume_convention():
    # out(x) = vol(R·x): the voxel at x shows what vol has at R·x
    v = torch.zeros(9, 9, 9)
    v[4, 4, 6] = 1.0  # (x, y, z) = (2, 0, 0) relative to the centre
    R = rot(4, (0, 0, 1)).float()  # +90° about z: maps (0, -2, 0) to (2, 0, 0)
    out = rotate_volume(v, R)
    assert out[4, 2, 4] == pytest.approx(1.0)  # (x, y, z) = (0, -2, 0)


HAVE_HANDLER = shutil.which("relion_image_handler") is not None
HAVE_EXPAND = shutil.which("relion_particle_symmetry_expand") is not None


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_HANDLER, reason="relion_image_handler not on PATH")
@pytest.mark.parametrize("sym", ["D2", "T", "O", "I"])
def test_symmetrize_matches_relion_image_handler(sym, tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    v = smooth_volume(32, seed=3).float()
    with mrcfile.new(tmp_path / "in.mrc") as m:
        m.set_data(v.numpy())
        m.voxel_size = 1.0
    subprocess.run(
        ["relion_image_handler", "--i", str(tmp_path / "in.mrc"), "--o", str(tmp_path / "out.mrc"), "--sym", sym],
        check=True, capture_output=True,
    )
    relion = torch.from_numpy(mrcfile.read(tmp_path / "out.mrc").copy())
    ours = symmetrize_volume(v, sym)
    assert corr(relion, ours) > 0.98
    assert corr(relion, v) < 0.9


STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnImageDimensionality #5
_rlnVoltage #6
_rlnSphericalAberration #7
_rlnAmplitudeContrast #8
1 opticsGroup1 1.0 32 2 300 2.7 0.1

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOpticsGroup #5
{rows}
"""


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_EXPAND, reason="relion_particle_symmetry_expand not on PATH")
@pytest.mark.parametrize("sym", ["C7", "D5", "T", "O", "I1", "I2", "I3", "I4"])
def test_expand_poses_matches_relion_symmetry_expand(sym, tmp_path):
    poses = [(0.0, 0.0, 0.0), (30.0, 50.0, 70.0), (-120.0, 100.0, 10.0)]
    rows = "\n".join(f"{i + 1}@x.mrcs {a} {b} {c} 1" for i, (a, b, c) in enumerate(poses))
    (tmp_path / "in.star").write_text(STAR.format(rows=rows))
    subprocess.run(
        ["relion_particle_symmetry_expand", "--i", str(tmp_path / "in.star"), "--o", str(tmp_path / "out.star"), "--sym", sym],
        check=True, capture_output=True,
    )
    # parse the particles loop by column name
    lines = (tmp_path / "out.star").read_text().split("data_particles")[1].splitlines()
    cols = [ln.split()[0] for ln in lines if ln.startswith("_rln")]
    data = [ln.split() for ln in lines if ln.strip() and not ln.startswith(("_", "loop_", "#"))]
    ang = np.array([[float(r[cols.index(c)]) for c in ("_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi")] for r in data])
    names = [r[cols.index("_rlnImageName")] for r in data]
    order = symmetry_order(sym)
    assert len(data) == order * len(poses)
    R = euler_to_matrix(*torch.from_numpy(ang).T)
    for i, pose in enumerate(poses):
        mine = expand_poses(euler_to_matrix(*torch.tensor(pose, dtype=torch.float64)), sym).double()
        theirs = R[[k for k, n in enumerate(names) if n == f"{i + 1}@x.mrcs"]]
        d = geodesic_distance(theirs[:, None], mine[None])  # RELION prints 6 digits
        assert d.amin(dim=1).max() < 1e-3 and d.amin(dim=0).max() < 1e-3
