"""cryoSPARC interop: ``import particles --in X.cs`` and ``export cryosparc``.

Pinned here: the pose convention (a cryoSPARC rotation vector is the transpose of RELION's matrix, as
pyem's ``csparc2star`` documents it: its ``expmap`` uses the negated cross-product matrix), shifts in
pixels with RELION's sign, CTF in radians; round trips on real cryoSPARC files (cryoDRGN's 2 019-particle
refinement .cs, EMPIAR-10076's 7 particles beside their stack, cryosparc-tools' empty full-schema file)
and on simulated particles with known poses.
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from conftest import assert_user_error, invoke_cli

from cryolens.core.rotations import (cryosparc_pose_to_euler, euler_to_cryosparc_pose, euler_to_matrix,
                                     matrix_to_rotvec, random_rotations, rotvec_to_matrix)
from cryolens.io import ImageSource, read_particles
from cryolens.io.cryosparc import Dataset, read_cs

J24 = ("metadata", "cryodrgn", "cryosparc_P12_J24_001_particles.cs")


def rodrigues(v: np.ndarray) -> np.ndarray:
    """Active rotation by ``|v|`` radians about ``v`` (the textbook formula, one vector)."""
    theta = float(np.linalg.norm(v))
    if theta == 0:
        return np.eye(3)
    k = v / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def matrices(df) -> torch.Tensor:
    return euler_to_matrix(*(torch.tensor(df[c].to_numpy(np.float64)) for c in
                             ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))


# ----------------------------------------------------------------------------------------- convention

def test_pose_to_euler_gives_the_transpose_of_rodrigues():
    """RELION's matrix of the converted angles is Rodrigues(pose)ᵀ (pyem: rot2euler(expmap(pose)), whose expmap
    is the transpose), for poses everywhere on SO(3) including angles near 0 and 180°."""
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi, 194), [0.0, 1e-7, np.pi / 2, np.pi - 1e-6, np.pi, 3.0]])
    poses = axes * angles[:, None]
    A = euler_to_matrix(*cryosparc_pose_to_euler(torch.tensor(poses))).numpy()
    expected = np.stack([rodrigues(p).T for p in poses])
    assert np.abs(A - expected).max() < 1e-9
    # cryoSPARC's +30° about z, transposed, is R_z(-30°): RELION's matrix at tilt 0 with rot + psi = +30°
    pose = torch.tensor([0.0, 0.0, math.radians(30)], dtype=torch.float64)
    rot, tilt, psi = (float(a) for a in cryosparc_pose_to_euler(pose))
    assert tilt == pytest.approx(0, abs=1e-9) and rot + psi == pytest.approx(30, abs=1e-9)


def test_euler_to_pose_inverts_and_rotvec_log_map():
    R = random_rotations(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert (rotvec_to_matrix(matrix_to_rotvec(R)) - R).abs().max() < 1e-12
    assert matrix_to_rotvec(R).norm(dim=-1).max() <= 180 + 1e-9
    from cryolens.core.rotations import matrix_to_euler
    pose = euler_to_cryosparc_pose(*matrix_to_euler(R))
    assert (euler_to_matrix(*cryosparc_pose_to_euler(pose)) - R).abs().max() < 1e-12
    # the pose is Rodrigues' vector of Rᵀ
    assert np.abs(rodrigues(pose[7].numpy()) - R[7].numpy().T).max() < 1e-12


# ----------------------------------------------------------------------------------------- real files

def sparse_stacks(ds: Dataset, root: Path, apix: float) -> None:
    """Placeholder stacks (sparse files, right header and size) for every blob/path of ``ds`` under ``root``."""
    paths = np.array([str(p).lstrip(">") for p in ds["blob/path"]])
    idx, box = np.asarray(ds["blob/idx"]), int(ds["blob/shape"][0][0])
    for name in np.unique(paths):
        n = int(idx[paths == name].max()) + 1
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2) as m:
            m.set_image_stack()
            m.voxel_size = apix


def test_real_cryosparc_refinement_round_trip(tmp_path: Path, shared_data: Path):
    """cryoSPARC .cs -> particles.star -> .cs on a real refinement (2 019 particles): poses, shifts, CTF, half
    sets and classes come back to float32 precision; the STAR's poses are RELION's (pyem's rule)."""
    src = shared_data.joinpath(*J24)
    ds = read_cs(src)
    cs_project = tmp_path / "P12"
    sparse_stacks(ds, cs_project, 2.95)
    invoke_cli("import", "particles", "--in", src, "--cs-project-dir", cs_project, "--out", "imp", "--quiet",
               cwd=tmp_path)
    optics, parts = read_particles(tmp_path / "imp" / "particles.star")
    assert len(parts) == len(ds) == 2019 and int(optics["rlnImageSize"].iloc[0]) == 180
    assert optics["rlnVoltage"].iloc[0] == 200 and optics["rlnImagePixelSize"].iloc[0] == pytest.approx(2.95)
    A = matrices(parts).numpy()
    expected = np.stack([rodrigues(p.astype(np.float64)).T for p in ds["alignments3D/pose"][:50]])
    assert np.abs(A[:50] - expected).max() < 1e-6
    np.testing.assert_allclose(parts["rlnOriginXAngst"], ds["alignments3D/shift"][:, 0] * 2.95, rtol=1e-6)
    np.testing.assert_allclose(parts["rlnDefocusAngle"], np.rad2deg(ds["ctf/df_angle_rad"].astype(float)), rtol=1e-6)
    assert (parts["rlnRandomSubset"] == ds["alignments3D/split"] + 1).all()
    first = parts["rlnImageName"].iloc[1]
    assert first.startswith("000002@") and first.endswith(str(ds["blob/path"][1]))

    invoke_cli("export", "cryosparc", "--in", "imp/particles.star", "--out", "exp", "--quiet", cwd=tmp_path)
    back = read_cs(tmp_path / "exp" / "particles.cs")
    assert len(back) == len(ds)
    for field in ("ctf/df1_A", "ctf/df2_A", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "blob/psize_A",
                  "blob/idx", "alignments3D/split", "alignments3D/class"):
        np.testing.assert_array_equal(back[field], ds[field], err_msg=field)
    for field in ("ctf/df_angle_rad", "alignments3D/shift"):
        np.testing.assert_allclose(back[field], ds[field], rtol=1e-6, atol=1e-6, err_msg=field)
    R0 = rotvec_to_matrix(torch.rad2deg(torch.tensor(ds["alignments3D/pose"], dtype=torch.float64)))
    R1 = rotvec_to_matrix(torch.rad2deg(torch.tensor(back["alignments3D/pose"], dtype=torch.float64)))
    assert (R0 - R1).abs().max() < 1e-5
    assert (tmp_path / "exp" / "stacks").is_dir() and len(list((tmp_path / "exp" / "stacks").iterdir())) == 50


def test_real_cs_beside_its_stack_matches_its_relion_star(tmp_path: Path, shared_data: Path):
    """EMPIAR-10076's 7 particles: the .cs (stack found beside it) gives the defocus of the RELION STAR of the
    same particles, and the images read are the stack's."""
    folder = shared_data / "particles" / "empiar_10076_7"
    invoke_cli("import", "particles", "--in", folder / "empiar_10076_7.cs", "--out", "imp", "--quiet", cwd=tmp_path)
    optics, parts = read_particles(tmp_path / "imp" / "particles.star")
    relion = read_particles(folder / "empiar_10076_7.star", pixel_size=1.31)[1]
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        np.testing.assert_allclose(parts[col], relion[col], rtol=1e-5, atol=1e-3, err_msg=col)
    assert "rlnAngleRot" not in parts.columns and optics["rlnAmplitudeContrast"].iloc[0] == pytest.approx(0.07)
    images = ImageSource(parts, tmp_path / "imp" / "particles.star")[np.arange(7)]
    with mrcfile.open(folder / "empiar_10076_7.mrc", permissive=True) as m:
        np.testing.assert_array_equal(images, m.data)


def test_empty_full_schema_cs_is_read_and_refused(tmp_path: Path, shared_data: Path):
    """cryosparc-tools' 4k_dataset.cs (0 rows, 106 fields, no blob or ctf group) reads, and importing it is a
    one-sentence error naming the file and the missing field."""
    src = shared_data / "metadata" / "cryosparc" / "4k_dataset.cs"
    ds = read_cs(src)
    assert len(ds) == 0 and len(ds.fields()) == 106 and "alignments3D/pose" in ds.fields()
    result = invoke_cli("import", "particles", "--in", src, "--out", "imp", cwd=tmp_path, code=None)
    assert_user_error(result, "4k_dataset.cs", "blob/path")
    assert not (tmp_path / "imp").exists()


# ----------------------------------------------------------------------------------------- simulated

@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("cs_sim")
    invoke_cli("simulate", "particles", "--out", "sp", "--n", "24", "--box", "32", "--pixel-size", "4",
               "--seed", "3", "--quiet", cwd=w)
    invoke_cli("export", "cryosparc", "--in", "sp/particles.star", "--out", "exp", "--quiet", cwd=w)
    return w


def test_simulated_known_poses_survive_export_and_import(simulated: Path, tmp_path: Path, monkeypatch):
    """simulate -> export cryosparc -> import particles: the same poses, shifts, CTF, classes and images."""
    w = simulated
    monkeypatch.chdir(w)  # the STAR files name stacks relative to the folder the commands ran in
    invoke_cli("import", "particles", "--in", "exp/particles.cs", "--out", tmp_path / "imp", "--quiet", cwd=w)
    o0, p0 = read_particles(w / "sp" / "particles.star")
    o1, p1 = read_particles(tmp_path / "imp" / "particles.star")
    assert (matrices(p0) - matrices(p1)).abs().max() < 1e-5
    for col in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                "rlnPhaseShift", "rlnCtfBfactor"):
        np.testing.assert_allclose(p1[col], p0[col], rtol=1e-6, atol=1e-4, err_msg=col)
    assert (p1["rlnClassNumber"] == p0["rlnClassNumber"]).all()
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize"):
        assert o1[col].iloc[0] == pytest.approx(o0[col].iloc[0]), col
    n = np.arange(len(p0))
    a = ImageSource(p0, w / "sp" / "particles.star")[n]
    b = ImageSource(p1, tmp_path / "imp" / "particles.star")[n]
    np.testing.assert_array_equal(a, b)
    # the export's particles.star names the linked stacks and reads back the same table
    o2, p2 = read_particles(w / "exp" / "particles.star")
    assert p2["rlnImageName"].iloc[0].endswith("exp/stacks/particles.mrcs")
    np.testing.assert_array_equal(ImageSource(p2, w / "exp" / "particles.star")[n], a)


def test_passthrough_found_beside_or_given(simulated: Path, tmp_path: Path):
    """cryoSPARC splits a job's fields between X_particles.cs and X_passthrough_particles.cs: the import joins
    them by uid (found beside the file, or given) and keeps the main file's row order."""
    full = read_cs(simulated / "exp" / "particles.cs")
    job = tmp_path / "J7"
    job.mkdir()
    order = np.arange(len(full))[::-1].copy()
    main = full.filter_fields(lambda f: not f.startswith("ctf/"), copy=True)
    main.save(job / "J7_particles.cs")
    full.filter_fields(lambda f: f.startswith("ctf/"), copy=True).take(order).save(job / "P1_J7_passthrough_particles.cs")
    stacks = job / "stacks"
    stacks.symlink_to(simulated / "exp" / "stacks", target_is_directory=True)
    invoke_cli("import", "particles", "--in", job / "J7_particles.cs", "--out", "a", "--quiet", cwd=tmp_path)
    invoke_cli("import", "particles", "--in", job / "J7_particles.cs", "--passthrough",
               job / "P1_J7_passthrough_particles.cs", "--out", "b", "--quiet", cwd=tmp_path)
    _, p0 = read_particles(simulated / "sp" / "particles.star")
    for out in ("a", "b"):
        _, p = read_particles(tmp_path / out / "particles.star")
        np.testing.assert_allclose(p["rlnDefocusU"], p0["rlnDefocusU"], rtol=1e-6)
    (job / "P1_J7_passthrough_particles.cs").unlink()
    result = invoke_cli("import", "particles", "--in", job / "J7_particles.cs", "--out", "c", cwd=tmp_path, code=None)
    assert_user_error(result, "J7_particles.cs", "ctf/")


def test_real_exported_2d_classification_cs(tmp_path: Path, shared_data: Path):
    """A real cryoSPARC export after 2D classification: '>' (cryoSPARC's mark for imported, linked stacks) is
    dropped from blob/path, the 2D class becomes rlnClassNumber, and there are no 3D poses to convert."""
    src = shared_data / "metadata" / "cryodrgn" / "cryosparc_J2_particles_exported.cs"
    ds = read_cs(src)
    sparse_stacks(ds, tmp_path / "P1", 1.345)
    invoke_cli("import", "particles", "--in", src, "--cs-project-dir", tmp_path / "P1", "--out", "imp", "--quiet",
               cwd=tmp_path)
    optics, parts = read_particles(tmp_path / "imp" / "particles.star")
    assert len(parts) == 22 and "rlnAngleRot" not in parts.columns
    assert (parts["rlnClassNumber"] == ds["alignments2D/class"] + 1).all()
    assert ">" not in "".join(parts["rlnImageName"]) and parts["rlnImageName"].iloc[0].startswith("000001@")
    assert optics["rlnSphericalAberration"].iloc[0] == pytest.approx(2.7)
