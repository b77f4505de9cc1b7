"""The particle-job toolkit (cryolens.jobs.particles): checks, checked batches, references, half maps.

Tiny hand-made STAR + MRCS files (box 8, a handful of particles), so every case runs in
milliseconds; the jobs that use the toolkit are tested end to end in test_cli_jobs.py and
test_refine.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryolens.core.fsc import fsc
from cryolens.errors import InputError
from cryolens.io import read_mrc, write_mrc, write_particles, write_stack_and_names
from cryolens.jobs.particles import (ParticleSet, checked_batches, fsc_table, open_particles, read_reference,
                                     write_half_maps)
from cryolens.jobs.runner import Job

BOX, APIX, N = 8, 2.0, 12


def _write_set(folder: Path, *, n: int = N, images: np.ndarray | None = None, drop: tuple[str, ...] = (),
               pixel_sizes: tuple[float, ...] = (APIX,)) -> Path:
    """A RELION 3.1 particle STAR file with one stack; optics groups alternate over ``pixel_sizes``."""
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((n, BOX, BOX)).astype(np.float32) if images is None else images
    names = write_stack_and_names(folder / "stack.mrcs", imgs, APIX)
    groups = np.arange(n) % len(pixel_sizes) + 1
    optics = pd.DataFrame({"rlnOpticsGroup": np.arange(1, len(pixel_sizes) + 1),
                           "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(pixel_sizes) + 1)],
                           "rlnImagePixelSize": list(pixel_sizes), "rlnImageSize": BOX, "rlnVoltage": 300.0,
                           "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1})
    particles = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": groups,
                              "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0, "rlnAnglePsi": 0.0,
                              "rlnDefocusU": 10000.0, "rlnDefocusV": 9000.0, "rlnDefocusAngle": 0.0})
    star = folder / "particles.star"
    write_particles(star, optics, particles.drop(columns=list(drop)))
    return star


def test_open_particles_reads_a_checked_set(tmp_path):
    star = _write_set(tmp_path)
    parts = open_particles(star, pose=True, min_particles=10, purpose="refinement")
    assert isinstance(parts, ParticleSet) and len(parts) == N
    assert parts.pixel_size == APIX and parts.box == BOX and parts.star == star
    table = parts.table()
    assert "rlnVoltage" in table.columns and len(table) == N  # optics merged in
    halves = parts.with_half_sets(seed=1).particles["rlnRandomSubset"]
    assert set(halves) == {1, 2} and abs(int((halves == 1).sum()) - int((halves == 2).sum())) <= 1
    assert "rlnRandomSubset" not in parts.particles.columns  # the set itself is not changed


@pytest.mark.parametrize("drop, pose, missing", [
    (("rlnImageName",), False, "rlnImageName"),
    (("rlnAngleTilt",), True, "rlnAngleTilt"),
    (("rlnDefocusV",), False, "rlnDefocusV"),  # defocus U without V is not a silent "no CTF"
    (("rlnDefocusU",), False, "rlnDefocusU"),
])
def test_missing_columns_are_one_sentence_naming_file_and_column(tmp_path, drop, pose, missing):
    star = _write_set(tmp_path, drop=drop)
    with pytest.raises(InputError) as e:
        open_particles(star, pose=pose)
    msg = str(e.value)
    assert str(star) in msg and missing in msg and "missing from data_particles" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")


def test_poses_are_optional_without_pose(tmp_path):
    star = _write_set(tmp_path, drop=("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU", "rlnDefocusV"))
    assert len(open_particles(star, pose=False)) == N  # no defocus at all is a valid "no CTF" set


def test_two_pixel_sizes_are_refused(tmp_path):
    star = _write_set(tmp_path, pixel_sizes=(2.0, 2.5))
    with pytest.raises(InputError, match="different pixel sizes") as e:
        open_particles(star, pose=True)
    assert str(star) in str(e.value) and "2.5" in str(e.value) and "rescale" in str(e.value)


def test_too_few_particles_are_refused(tmp_path):
    star = _write_set(tmp_path, n=4)
    with pytest.raises(InputError) as e:
        open_particles(star, pose=False, min_particles=10, purpose="refinement", why="two half sets")
    assert str(e.value) == f"{star}: only 4 particles; refinement needs at least 10 (two half sets)."
    assert len(open_particles(star, pose=False)) == 4  # no minimum by default


def test_a_star_without_particles_is_refused(tmp_path):
    star = _write_set(tmp_path, n=4)
    text = star.read_text()
    head, rows = text.rsplit("loop_", 1)
    kept = "\n".join(ln for ln in rows.splitlines() if not ln.strip() or ln.strip().startswith("_"))
    (tmp_path / "empty.star").write_text(head + "loop_" + kept + "\n")
    with pytest.raises(InputError, match="empty.star: holds no particles; give a particle STAR with at least one row"):
        open_particles(tmp_path / "empty.star", pose=False)


def test_batches_stream_every_image_once_in_order(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.standard_normal((N, BOX, BOX)).astype(np.float32)
    parts = open_particles(_write_set(tmp_path, images=images), pose=True)
    batches = parts.batches(5)
    assert not isinstance(batches, (list, tuple))  # a generator: images are read batch by batch
    got = list(batches)
    assert [len(i) for i, _ in got] == [5, 5, 2]
    idx = np.concatenate([i for i, _ in got])
    assert (idx == np.arange(N)).all()
    assert np.array_equal(np.concatenate([b for _, b in got]), images)
    assert all(b.dtype == np.float32 and b.shape[1:] == (BOX, BOX) for _, b in got)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile and numpy warn about the planted value
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image_is_refused_naming_the_particle(tmp_path, bad):
    images = np.ones((N, BOX, BOX), np.float32)
    images[7, 2, 3] = bad
    parts = open_particles(_write_set(tmp_path, images=images), pose=True)
    it = checked_batches(parts.source, parts.particles["rlnImageName"], 4, parts.star)
    first = next(it)  # batches before the bad image stream normally
    assert list(first[0]) == [0, 1, 2, 3]
    with pytest.raises(InputError, match="NaN or infinite") as e:
        next(it)
    assert "000008@" in str(e.value) and str(parts.star) in str(e.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_read_reference_resamples_and_pads_to_the_particles_grid(tmp_path):
    vol = torch.zeros(16, 16, 16)
    vol[6:10, 6:10, 6:10] = 1.0
    write_mrc(tmp_path / "ref.mrc", vol.numpy(), 1.0)
    same = read_reference(tmp_path / "ref.mrc", box=16, pixel_size=1.0)
    assert torch.equal(same, vol)
    coarse = read_reference(tmp_path / "ref.mrc", box=12, pixel_size=2.0)  # 16 px at 1 Å -> 8 px at 2 Å, padded
    assert coarse.shape == (12, 12, 12) and coarse.dtype == torch.float32
    assert float(coarse.sum()) == pytest.approx(float(vol.sum()) / 8, rel=0.05)
    write_mrc(tmp_path / "flat.mrc", np.zeros((16, 16, 10), np.float32), 1.0)
    with pytest.raises(InputError, match="the mask must be a cubic 3D map"):
        read_reference(tmp_path / "flat.mrc", box=16, pixel_size=1.0, what="mask")
    bad = vol.numpy().copy()
    bad[0, 0, 0] = np.nan
    write_mrc(tmp_path / "nan.mrc", bad, 1.0)
    with pytest.raises(InputError, match="nan.mrc: the reference contains NaN"):
        read_reference(tmp_path / "nan.mrc", box=16, pixel_size=1.0)


def test_write_half_maps_writes_and_records_the_outputs(tmp_path):
    gen = torch.Generator().manual_seed(0)
    half1, half2 = torch.randn(BOX, BOX, BOX, generator=gen), torch.randn(BOX, BOX, BOX, generator=gen)
    full = (half1 + half2) / 2
    curve = fsc(half1, half2, pixel_size=APIX)
    out = tmp_path / "job"
    with Job("toolkit-test", out, params={}, inputs={}) as job:
        paths = write_half_maps(out, job, half1, half2, full.numpy(), curve, pixel_size=APIX)
    assert list(job.outputs) == ["half1", "half2", "map", "fsc"]
    assert paths == {name: Path(p) for name, p in job.outputs.items()}
    assert json.loads((out / "job.json").read_text())["outputs"] == job.outputs
    for name, vol in (("half1", half1), ("half2", half2), ("map", full)):
        data, apix = read_mrc(out / f"{name}.mrc")
        assert apix == pytest.approx(APIX) and np.array_equal(data, vol.numpy())
    table = starfile.read(out / "fsc.star")
    expected = fsc_table(curve)
    assert list(table.columns) == list(expected.columns) and len(table) == BOX // 2 + 1
    assert np.allclose(table["rlnFourierShellCorrelation"], curve.fsc, atol=1e-5)
    assert table["rlnAngstromResolution"].iloc[0] == 999.0  # shell 0 has no finite resolution
    for png in ("fsc.png", "map_slices.png"):
        assert (out / png).stat().st_size > 0
    assert not list(out.glob("*.tmp*"))


def test_stack_header_and_star_pixel_sizes_must_agree(tmp_path):
    """One pixel-size policy (as ctf, extract and pick have): a stack header that disagrees with the optics is named."""
    star = _write_set(tmp_path)
    with mrcfile.open(tmp_path / "stack.mrcs", mode="r+") as m:
        m.voxel_size = 2 * APIX
    with pytest.raises(InputError, match=rf"stack.mrcs: the header pixel size {2 * APIX:.4f} Å disagrees with "
                                         rf"rlnImagePixelSize {APIX:.4f} Å"):
        open_particles(star, pose=False)
    with mrcfile.open(tmp_path / "stack.mrcs", mode="r+") as m:
        m.voxel_size = 0.0  # unset: the STAR decides (RELION ignores stack headers)
    assert len(open_particles(star, pose=False)) == N
