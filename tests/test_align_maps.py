"""Tests of `cryolens align-maps` and `cryolens flip-hand`: a map moved by a known rotation, shift and mirror
is put back (angle within 3°, FSC ~ 1), on tensors and through the command; bad inputs exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryolens.cli.main import app
from cryolens.core.fsc import fsc
from cryolens.core.rotations import euler_to_matrix, geodesic_distance
from cryolens.io import read_mrc, read_mrc_header, write_mrc
from cryolens.mapalign import AlignMapsParams, align_maps, flip_hand, shift_volume, transform_volume
from cryolens.simulate.phantom import asymmetric_phantom

APIX = 5.0
FAST = dict(coarse_box=16, refine_box=32, top_k=3, healpix_order=1)


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    return asymmetric_phantom(32, APIX)


def _moved(vol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = euler_to_matrix(torch.tensor(40.0), torch.tensor(70.0), torch.tensor(-100.0))
    t = torch.tensor([2.0, -1.5, 3.0])
    return transform_volume(vol, q, t, oversample=2), q, t


def test_flip_hand_is_a_mirror_about_the_centre():
    v = torch.zeros(8, 8, 8)
    v[4 + 2, 4, 4] = 1.0  # z = +2 from the centre voxel 4
    f = flip_hand(v)
    assert float(f[4 - 2, 4, 4]) == 1.0 and float(f.sum()) == 1.0
    assert torch.equal(flip_hand(f), v)
    odd = torch.randn(7, 7, 7)
    assert torch.equal(flip_hand(odd)[3], odd[3])


def test_shift_volume_moves_content_by_whole_voxels():
    v = torch.zeros(16, 16, 16)
    v[8, 8, 8] = 1.0
    s = shift_volume(v, torch.tensor([2.0, -3.0, 1.0]))  # (x, y, z)
    assert tuple(int(i) for i in np.unravel_index(int(s.argmax()), s.shape)) == (9, 5, 10)


@pytest.mark.parametrize("mirror", [False, True])
def test_known_transform_is_recovered(phantom, mirror):
    moved, q, _ = _moved(phantom)
    if mirror:
        moved = flip_hand(moved)
    res = align_maps(phantom, moved, pixel_size=APIX, params=AlignMapsParams(**FAST))
    assert res.flipped == mirror
    # moved(x) = A(Q(x − t)), aligned(x) = moved'(R(x − s)): R = Qᵀ
    assert float(geodesic_distance(res.rotation, q.T)) < 3.0
    curve = fsc(phantom, res.aligned, pixel_size=APIX)
    assert curve.fsc[1:12].min() > 0.97, curve.fsc
    assert res.correlation > 0.95 and res.other_hand is not None and res.other_hand < res.correlation


def test_symmetric_search_reduced_grid():
    """With --sym the grid covers one asymmetric unit; a D2 map rotated by a generic rotation is still put back."""
    from cryolens.core.symmetry import symmetrize_volume
    v = symmetrize_volume(asymmetric_phantom(32, APIX, seed=2), "D2")
    moved, _, _ = _moved(v)
    res = align_maps(v, moved, pixel_size=APIX, params=AlignMapsParams(symmetry="D2", flip_hand="no", **FAST))
    assert fsc(v, res.aligned, pixel_size=APIX).fsc[1:12].min() > 0.95


@pytest.fixture(scope="module")
def files(tmp_path_factory, phantom):
    work = tmp_path_factory.mktemp("align")
    moved, _, _ = _moved(phantom)
    write_mrc(work / "a.mrc", phantom.numpy(), APIX, origin=(10.0, 20.0, 30.0))
    write_mrc(work / "b.mrc", flip_hand(moved).numpy(), APIX)
    return work


def test_cli_align_maps_writes_outputs(files):
    out = files / "job"
    r = CliRunner().invoke(app, ["align-maps", str(files / "a.mrc"), str(files / "b.mrc"), "--out", str(out),
                                 "--coarse-box", "16", "--refine-box", "32", "--top-k", "3", "--healpix-order", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    for name in ("aligned.mrc", "fsc.star", "fsc.png", "slices.png", "report.html", "job.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "job.json").read_text())["results"]
    assert res["flipped"] is True and res["resolution_05_A"] <= 2.5 * APIX
    assert "FSC after alignment" in r.output
    aligned, apix = read_mrc(out / "aligned.mrc")
    assert aligned.shape == (32, 32, 32) and apix == pytest.approx(APIX)
    # the finished folder is refused without --overwrite, replaced with it
    again = ["align-maps", str(files / "a.mrc"), str(files / "b.mrc"), "--out", str(out), "--coarse-box", "16",
             "--refine-box", "32", "--top-k", "3", "--healpix-order", "1", "--quiet"]
    r = CliRunner().invoke(app, again)
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(app, [*again, "--overwrite"])
    assert r.exit_code == 0, r.output


def test_cli_flip_hand_keeps_the_header(files):
    out = files / "flipped.mrc"
    r = CliRunner().invoke(app, ["flip-hand", str(files / "a.mrc"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    data, apix = read_mrc(out)
    assert apix == pytest.approx(APIX) and read_mrc_header(out).origin == (10.0, 20.0, 30.0)
    np.testing.assert_array_equal(data, flip_hand(torch.as_tensor(read_mrc(files / "a.mrc")[0])).numpy())


def test_cli_bad_inputs_exit_2(files, tmp_path):
    write_mrc(tmp_path / "flat.mrc", np.zeros((32, 32, 20), np.float32), APIX)
    nan = np.full((32, 32, 32), np.nan, np.float32)
    write_mrc(tmp_path / "nan.mrc", nan, APIX)
    a, b = str(files / "a.mrc"), str(files / "b.mrc")
    cases = [
        (["align-maps", a, str(tmp_path / "missing.mrc")], "missing.mrc"),
        (["align-maps", str(tmp_path / "flat.mrc"), b], "cubic"),
        (["align-maps", a, str(tmp_path / "nan.mrc")], "NaN"),
        (["align-maps", a, b, "--flip-hand", "maybe"], "--flip-hand"),
        (["align-maps", a, b, "--sym", "X9"], "--sym X9"),
        (["flip-hand", str(tmp_path / "missing.mrc"), "--out", str(tmp_path / "x.mrc")], "missing.mrc"),
    ]
    for args, fragment in cases:
        r = CliRunner().invoke(app, [*args, *(["--out", str(tmp_path / "o"), "--quiet"] if args[0] == "align-maps"
                                              else [])])
        assert r.exit_code == 2, (args, r.output)
        assert fragment in r.output, (fragment, r.output)
        assert "Traceback" not in r.output


def test_cli_resamples_a_map_of_another_box(files, tmp_path):
    """A moving map with another box and voxel size is resampled onto the fixed map's grid."""
    from cryolens.core.fourier import fourier_resize
    big = fourier_resize(torch.as_tensor(read_mrc(files / "a.mrc")[0]), 40, ndim=3)  # 4 Å voxels, box 40
    write_mrc(tmp_path / "big.mrc", big.numpy(), APIX * 32 / 40)
    r = CliRunner().invoke(app, ["align-maps", str(files / "a.mrc"), str(tmp_path / "big.mrc"), "--out",
                                 str(tmp_path / "j"), "--flip-hand", "no", "--coarse-box", "16", "--refine-box", "32", "--healpix-order", "1",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "j" / "job.json").read_text())["results"]
    assert res["resolution_05_A"] <= 2.5 * APIX and max(abs(v) for v in res["shift_xyz_A"]) < 0.5 * APIX
