"""RELION 3.1 as an oracle: relion_project and relion_reconstruct on the same STAR files.

Pins the conventions of ARCHITECTURE.md (Euler angles, origins in Å, CTF form, contrast,
amplitude) against the reference program on a real map (EMD-3488, haemoglobin, 100³ at
1.05 Å). RELION's inputs are written and its outputs read with mrcfile / starfile
directly, so these tests do not depend on cryolens.io. Skipped when RELION is absent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryolens.core.ctf import CTFParams, ctf_2d
from cryolens.core.fourier import fourier_resize, ft2, ift2
from cryolens.core.projector import BackProjector, prepare_volume, project
from cryolens.core.rotations import euler_to_matrix, random_euler
from helpers import assert_correlated, assert_images_correlated, correlation, ls_scale

pytestmark = pytest.mark.relion

VOLTAGE, CS, Q0 = 300.0, 2.7, 0.1


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (
        f"{' '.join(cmd)} exited with {r.returncode}\n--- stderr ---\n{r.stderr[-3000:]}\n"
        f"--- stdout ---\n{r.stdout[-2000:]}")
    return r


def _load_map(shared_data: Path) -> tuple[torch.Tensor, float]:
    path = shared_data / "maps" / "emd_3488.mrc"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with mrcfile.open(path, permissive=True) as m:
        vol = torch.tensor(np.asarray(m.data, dtype=np.float32))
        apix = float(m.voxel_size.x)
    assert vol.shape == (100, 100, 100) and apix == pytest.approx(1.05)
    return vol, apix


def _write_map(path: Path, vol: torch.Tensor, apix: float) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(vol.cpu().numpy().astype(np.float32))
        m.voxel_size = apix


def _optics(n: int, apix: float) -> pd.DataFrame:
    return pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [VOLTAGE],
        "rlnSphericalAberration": [CS], "rlnAmplitudeContrast": [Q0], "rlnImagePixelSize": [apix],
        "rlnImageSize": [n], "rlnImageDimensionality": [2],
    })


def _random_particles(count: int, seed: int, *, ctf_extras: bool = False) -> pd.DataFrame:
    """RELION 3.1 particle rows: uniform random poses, origins ±5 Å, astigmatic defocus 8000-25000 Å."""
    rot, tilt, psi = random_euler(count, torch.Generator().manual_seed(seed), dtype=torch.float64)
    rng = np.random.default_rng(seed)
    du = rng.uniform(8000, 25000, count)
    df = pd.DataFrame({
        "rlnAngleRot": rot.numpy(), "rlnAngleTilt": tilt.numpy(), "rlnAnglePsi": psi.numpy(),
        "rlnOriginXAngst": rng.uniform(-5, 5, count), "rlnOriginYAngst": rng.uniform(-5, 5, count),
        "rlnDefocusU": du, "rlnDefocusV": du - rng.uniform(0, 1000, count),
        "rlnDefocusAngle": rng.uniform(-180, 180, count),
        "rlnOpticsGroup": np.ones(count, dtype=int),
    })
    if ctf_extras:  # phase plate and B-factor, per particle (RELION reads both from the particle table)
        df["rlnPhaseShift"] = rng.uniform(0, 90, count)
        df["rlnCtfBfactor"] = rng.uniform(0, 100, count)
    return df


def _poses(df: pd.DataFrame, apix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RELION matrices ``(B, 3, 3)`` and origins in pixels ``(B, 2)`` of a particle table."""
    R = euler_to_matrix(*(torch.tensor(df[c].to_numpy(), dtype=torch.float64)
                          for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))).float()
    origins = torch.tensor(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix, dtype=torch.float32)
    return R, origins


def _ctf(df: pd.DataFrame, n: int, apix: float) -> torch.Tensor:
    col = lambda name, default=0.0: torch.tensor(  # noqa: E731
        df[name].to_numpy() if name in df else np.full(len(df), default), dtype=torch.float32)
    p = CTFParams(col("rlnDefocusU"), col("rlnDefocusV"), col("rlnDefocusAngle"), voltage=VOLTAGE, cs=CS,
                  amplitude_contrast=Q0, phase_shift=col("rlnPhaseShift"), bfactor=col("rlnCtfBfactor"))
    return ctf_2d(p, box=n, pixel_size=apix)


def _our_images(vol: torch.Tensor, df: pd.DataFrame, apix: float, *, with_ctf: bool) -> torch.Tensor:
    n = vol.shape[-1]
    R, origins = _poses(df, apix)
    f = project(prepare_volume(vol), R, origins)
    if with_ctf:
        f = f * _ctf(df, n, apix)
    return ift2(f, n)


def _read_stack_by_name(star_table: pd.DataFrame, folder: Path) -> torch.Tensor:
    """Images in table order, following each row's ``index@stack`` rlnImageName."""
    stacks: dict[str, np.ndarray] = {}
    out = []
    for name in star_table["rlnImageName"]:
        idx, stack = str(name).split("@")
        if stack not in stacks:
            with mrcfile.open(folder / stack, permissive=True) as m:
                stacks[stack] = np.asarray(m.data, dtype=np.float32).copy()
        out.append(stacks[stack][int(idx) - 1])
    return torch.tensor(np.stack(out))


# ----------------------------------------------------------------------------------------
# (a) relion_project == project (+ ctf_2d)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no_ctf", "ctf", "ctf_phase_shift_bfactor"])
def test_relion_project_matches_our_projections(shared_data, tmp_path, mode):
    vol, apix = _load_map(shared_data)
    n, count = vol.shape[-1], 50
    with_ctf = mode != "no_ctf"
    df = _random_particles(count, seed={"no_ctf": 1, "ctf": 2, "ctf_phase_shift_bfactor": 3}[mode],
                           ctf_extras=mode == "ctf_phase_shift_bfactor")
    _write_map(tmp_path / "map.mrc", vol, apix)
    starfile.write({"optics": _optics(n, apix), "particles": df}, tmp_path / "in.star", overwrite=True)
    cmd = ["relion_project", "--i", "map.mrc", "--ang", "in.star", "--o", "proj", "--angpix", f"{apix}"]
    _run(cmd + (["--ctf"] if with_ctf else []), tmp_path)

    # RELION's outputs read back with starfile / mrcfile
    assert (tmp_path / "proj.star").is_file() and (tmp_path / "proj.mrcs").is_file()
    out = starfile.read(tmp_path / "proj.star")
    assert isinstance(out, dict) and {"optics", "particles"} <= set(out), f"blocks: {list(out)}"
    table = out["particles"]
    assert len(table) == count
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(table[c].to_numpy(float), df[c].to_numpy(), atol=1e-4, err_msg=c)
    assert float(out["optics"]["rlnImagePixelSize"].iloc[0]) == pytest.approx(apix)
    with mrcfile.open(tmp_path / "proj.mrcs", permissive=True) as m:
        assert m.data.shape == (count, n, n)
        assert float(m.voxel_size.x) == pytest.approx(apix, abs=1e-4)
    theirs = _read_stack_by_name(table, tmp_path)

    ours = _our_images(vol, df, apix, with_ctf=with_ctf)
    assert_images_correlated(ours, theirs, 0.99, what=f"relion_project ({mode}) vs ours")
    # tighter regression bound: measured > 0.9999999 for every image (same trilinear pad-2 projector)
    assert_images_correlated(ours, theirs, 0.9999, what=f"relion_project ({mode}) vs ours, tight")
    # same amplitude convention (no hidden normalisation), same contrast sign
    assert ls_scale(theirs, ours) == pytest.approx(1.0, abs=0.002)  # measured 1.00007


# ----------------------------------------------------------------------------------------
# (b) our stacks through relion_reconstruct == BackProjector
# ----------------------------------------------------------------------------------------


def test_relion_reconstruct_of_our_stack_matches_backprojector(shared_data, tmp_path):
    """1000 CTF-modulated noise-free projections at box 64 (map Fourier-cropped from 100 px at
    1.05 Å to 64 px at 1.640625 Å), written as MRCS + RELION 3.1 STAR; relion_reconstruct --ctf
    and BackProjector agree (measured correlation 0.9973, both ~0.992 with the map)."""
    vol100, apix100 = _load_map(shared_data)
    n = 64
    vol = fourier_resize(vol100, n, ndim=3)
    apix = apix100 * 100 / n
    count = 1000
    df = _random_particles(count, seed=4)
    images = _our_images(vol, df, apix, with_ctf=True)

    with mrcfile.new(tmp_path / "particles.mrcs", overwrite=True) as m:
        m.set_data(images.numpy().astype(np.float32))
        m.voxel_size = apix
    df.insert(0, "rlnImageName", [f"{i + 1:06d}@particles.mrcs" for i in range(count)])
    starfile.write({"optics": _optics(n, apix), "particles": df}, tmp_path / "particles.star", overwrite=True)
    _run(["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf"], tmp_path)
    with mrcfile.open(tmp_path / "relion.mrc", permissive=True) as m:
        theirs = torch.tensor(np.asarray(m.data, dtype=np.float32))
        assert float(m.voxel_size.x) == pytest.approx(apix, abs=1e-4)
    assert theirs.shape == (n, n, n)

    # ours, from the same files read back (exercises the stack as written)
    table = starfile.read(tmp_path / "particles.star")["particles"]
    stack = _read_stack_by_name(table, tmp_path)
    R, origins = _poses(table, apix)
    ctf = _ctf(table, n, apix)
    bp = BackProjector(n)
    for i in range(0, count, 250):
        bp.insert(ft2(stack[i:i + 250]), R[i:i + 250], origins[i:i + 250], ctf[i:i + 250])
    ours = bp.reconstruct()

    assert_correlated(ours, theirs, 0.99, what="relion_reconstruct vs BackProjector")
    c_ours, c_theirs = float(correlation(ours, vol)), float(correlation(theirs, vol))
    assert c_ours > 0.98 and c_theirs > 0.98, f"vs truth: ours {c_ours:.4f}, RELION {c_theirs:.4f}"
    assert c_ours > c_theirs - 0.005, f"ours {c_ours:.4f} clearly worse than RELION {c_theirs:.4f}"
