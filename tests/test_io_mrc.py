"""cryolens.io.mrc on the real maps, stacks and micrographs in shared/data."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryolens.errors import InputError
from cryolens.io.mrc import clear_stack_cache, open_stack, read_mrc, read_mrc_header, write_mrc

BETAGAL = "metadata/relion5_betagal_project"
# path, shape returned by read_mrc, x voxel size (Å, README table), stored dtype
REAL_FILES = [
    ("maps/EMD-3001.map", (25, 43, 73), 0.4482, "float32"),
    ("maps/EMD-3001.map.bz2", (25, 43, 73), 0.4482, "float32"),
    ("maps/EMD-3197.map", (20, 20, 20), 11.4, "float32"),
    ("maps/emd_3197.map.gz", (20, 20, 20), 11.4, "float32"),
    ("maps/clean70SRibosome_vol_65p.mrc", (65, 65, 65), 0.0, "float32"),
    ("maps/emd_21457_seg.mrc", (47, 40, 48), 1.05, "float32"),
    ("maps/emd_3488.mrc", (100, 100, 100), 1.05, "float32"),
    ("micrographs/epu2.9_example.mrc", (4096, 4096), 0.6666, "uint16"),
    ("micrographs/fei-extended.mrc", (3838, 3710), 0.8538, "uint16"),
    ("particles/empiar_10076_7/empiar_10076_7.mrc", (7, 320, 320), 0.0, "float32"),
    (f"{BETAGAL}/Extract/job009/Movies/20170629_00021_frameImage.mrcs", (242, 64, 64), 3.54, "float16"),
    (f"{BETAGAL}/Class2D/job010/run_it025_classes.mrcs", (50, 64, 64), 3.54, "float32"),
    (f"{BETAGAL}/CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf", (512, 512), 0.0020, "float32"),
    (f"{BETAGAL}/MotionCorr/job002/Movies/20170629_00021_frameImage_PS.mrc", (512, 512), 1.3996, "float32"),
]


@pytest.mark.parametrize("rel, shape, voxel, dtype", REAL_FILES, ids=[Path(r[0]).name for r in REAL_FILES])
def test_read_real_files(shared_data, rel, shape, voxel, dtype):
    data, voxel_size = read_mrc(shared_data / rel)
    assert data.shape == shape
    assert data.dtype == np.float32
    assert np.isfinite(data).all()
    assert voxel_size == pytest.approx(voxel, abs=1e-4)
    info = read_mrc_header(shared_data / rel)
    assert info.dtype == np.dtype(dtype)
    assert info.shape[1:] == shape[-2:]
    assert info.voxel_size == voxel_size


def test_header_edge_cases(shared_data):
    emd3001 = read_mrc_header(shared_data / "maps/EMD-3001.map")  # P21, symmetry block, anisotropic voxels
    assert emd3001.shape == (25, 43, 73)
    assert emd3001.voxel_size_xyz == pytest.approx((0.4482, 0.3925, 0.4587), abs=1e-4)
    assert emd3001.start == (0, -21, -12)
    assert read_mrc_header(shared_data / "maps/EMD-3197.map").start == (-2, 0, 0)
    seg = read_mrc_header(shared_data / "maps/emd_21457_seg.mrc")
    assert seg.origin == pytest.approx((162.75, 231.0, 204.75), abs=1e-3)
    assert read_mrc_header(shared_data / "maps/emd_3197.map.gz").shape == (20, 20, 20)
    stack = read_mrc_header(shared_data / BETAGAL / "Extract/job009/Movies/20170629_00021_frameImage.mrcs")
    assert stack.is_stack and stack.shape == (242, 64, 64)


def test_compressed_equals_plain(shared_data):
    pairs = [("maps/EMD-3001.map", "maps/EMD-3001.map.bz2"), ("maps/EMD-3197.map", "maps/emd_3197.map.gz")]
    for plain, packed in pairs:
        a, va = read_mrc(shared_data / plain)
        b, vb = read_mrc(shared_data / packed)
        np.testing.assert_array_equal(a, b)
        assert va == vb


def test_float16_stack_and_uint16_micrograph_values(shared_data):
    path = shared_data / BETAGAL / "Extract/job009/Movies/20170629_00021_frameImage.mrcs"
    data, _ = read_mrc(path)
    with mrcfile.open(path) as m:
        raw = np.array(m.data)
    assert raw.dtype == np.float16
    np.testing.assert_array_equal(data, raw.astype(np.float32))
    mic, _ = read_mrc(shared_data / "micrographs/fei-extended.mrc")
    assert mic.min() >= 0 and mic.max() <= 65535 and mic.mean() > 0
    assert np.array_equal(mic, np.round(mic))


@pytest.mark.parametrize("name, shape, is_stack", [
    ("vol.mrc", (12, 10, 8), False), ("img.mrc", (10, 8), True), ("stack.mrcs", (5, 10, 8), True),
    ("one.mrcs", (10, 8), True), ("vol.mrc.gz", (4, 6, 8), False),
])
def test_write_read_round_trip(tmp_path, name, shape, is_stack):
    """is_stack: the header marks images (ispg 0; also a single 2D image), not a volume."""
    data = np.random.default_rng(0).normal(size=shape).astype(np.float64)
    path = tmp_path / name
    write_mrc(path, data, 1.234)
    back, voxel = read_mrc(path)
    assert voxel == pytest.approx(1.234)
    np.testing.assert_array_equal(back, data.astype(np.float32).reshape(back.shape))
    info = read_mrc_header(path)
    assert info.is_stack == is_stack
    if is_stack:
        assert info.shape[0] == (shape[0] if len(shape) == 3 else 1)
    with mrcfile.open(path) as m:
        assert m.header.dmax == pytest.approx(data.max(), rel=1e-6)
        assert m.header.dmin == pytest.approx(data.min(), rel=1e-6)
        assert m.header.dmean == pytest.approx(data.mean(), abs=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_write_overwrites_atomically_and_rejects_complex(tmp_path):
    path = tmp_path / "map.mrc"
    write_mrc(path, np.zeros((4, 4, 4)), 2.0)
    write_mrc(path, np.ones((4, 4, 4)), 3.0, is_stack=True)
    data, voxel = read_mrc(path)
    assert voxel == 3.0 and data.sum() == 64 and read_mrc_header(path).is_stack
    with pytest.raises(ValueError):
        write_mrc(path, np.zeros((4, 4), np.complex64), 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_truncated_real_file_raises_input_error(shared_data, tmp_path):
    raw = (shared_data / "maps/emd_3488.mrc").read_bytes()
    bad = tmp_path / "half_map.mrc"
    bad.write_bytes(raw[: len(raw) // 2])
    for reader in (read_mrc, open_stack):
        with pytest.raises(InputError, match="half_map.mrc") as err:
            reader(bad)
        assert "truncated" in str(err.value) and "100x100x100 float32" in str(err.value)


def test_random_bytes_and_missing_file(tmp_path):
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for reader in (read_mrc, read_mrc_header, open_stack):
        with pytest.raises(InputError, match="junk.mrc"):
            reader(junk)
    tiny = tmp_path / "tiny.mrc"
    tiny.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="tiny.mrc"):
        read_mrc(tiny)
    with pytest.raises(InputError, match="missing.mrc"):
        read_mrc(tmp_path / "missing.mrc")


def test_open_stack_memmaps_and_caches(shared_data, tmp_path):
    clear_stack_cache()
    path = shared_data / BETAGAL / "Extract/job009/Movies/20170629_00021_frameImage.mrcs"
    stack = open_stack(path)
    assert stack.shape == (242, 64, 64) and stack.dtype == np.float16
    assert isinstance(stack, np.memmap)
    assert open_stack(path) is stack
    assert open_stack(shared_data / "maps/emd_3197.map.gz").shape == (20, 20, 20)  # compressed: in memory
    single = tmp_path / "single.mrc"
    write_mrc(single, np.ones((6, 5)), 1.0)
    assert open_stack(single).shape == (1, 6, 5)
    first = open_stack(single)
    write_mrc(single, np.full((6, 5), 2.0), 1.0)  # replaced file is reopened, not served stale
    assert open_stack(single) is not first and float(open_stack(single)[0, 0, 0]) == 2.0
