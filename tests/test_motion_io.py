"""Movie readers and preprocessing: MRC/TIFF round trips, gain orientation (vs RELION), defects,
hot pixels, Fourier binning.

Conventions pinned here: TIFF frames are read flipped in y (the image RELION reads, equal to
the MRC of the same movie); ``--gain-rot k`` turns the gain k × 90° clockwise as displayed
with row 0 at the top (``np.rot90(g, -k)``), then ``--gain-flip`` 1 reverses rows, 2 columns,
exactly as ``relion_run_motioncorr`` does; corrected = raw × gain.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile
import torch

from cryolens.errors import InputError
from cryolens.io.movie_writer import MovieWriter
from cryolens.io.movies import frame_range, movie_info, read_defects, read_gain, read_movie
from cryolens.motion.preprocess import (PreprocessParams, binned_shape, fill_defects, fourier_bin, hot_pixel_mask,
                                        orient_gain, preprocess_movie)

HAVE_RELION_MC = shutil.which("relion_run_motioncorr") is not None


def counts(n=5, h=48, w=64, *, rate=6.0, seed=0, dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).poisson(rate, (n, h, w)).astype(dtype)


def write_movie(path, frames, pixel_size=1.25):
    with MovieWriter(path, n_frames=len(frames), shape=frames.shape[1:], dtype=frames.dtype,
                     pixel_size=pixel_size) as w:
        for f in frames:
            w.write(f)
    return path


# ------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.float32])
def test_mrc_movie_round_trip_and_frame_range(tmp_path, dtype):
    frames = counts(dtype=dtype)
    p = write_movie(tmp_path / "m.mrcs", frames)
    info = movie_info(p)
    assert (info.fmt, info.n_frames, info.height, info.width) == ("mrc", 5, 48, 64)
    assert info.pixel_size == pytest.approx(1.25) and info.dtype == np.dtype(dtype)
    assert np.array_equal(read_movie(p), frames)
    assert np.array_equal(read_movie(p, first_frame=2, last_frame=4), frames[1:4])  # 1-based, inclusive
    assert np.array_equal(read_movie(p, first_frame=3, last_frame=-1), frames[2:])
    assert np.array_equal(read_movie(p, last_frame=99), frames)  # clipped, as RELION does
    with pytest.raises(InputError, match="m.mrcs"):
        read_movie(p, first_frame=6)


def test_lzw_tiff_reads_as_the_mrc_of_the_same_movie(tmp_path):
    """The writer stores TIFF frames flipped in y (as EM programs expect); the reader flips them back."""
    frames = counts(n=4, h=40, w=56, dtype=np.uint8)
    frames[:, :5, :] = 200  # a bright band at the top rows of the MRC image: orientation is visible
    mrc = write_movie(tmp_path / "m.mrcs", frames.astype(np.uint16))
    tif = write_movie(tmp_path / "m.tif", frames)
    with tifffile.TiffFile(tif) as t:
        assert t.pages[0].compression == tifffile.COMPRESSION.LZW and len(t.pages) == 4
    raw = tifffile.imread(tif)
    assert np.array_equal(raw[:, -5:, :], frames[:, :5, :][:, ::-1])  # stored flipped
    info = movie_info(tif)
    assert (info.fmt, info.n_frames, info.height, info.width) == ("tiff", 4, 40, 56)
    assert info.pixel_size == pytest.approx(1.25)  # from the resolution tags
    assert np.array_equal(read_movie(tif), read_movie(mrc))
    assert np.array_equal(read_movie(tif, first_frame=2, last_frame=3), frames[1:3])


def test_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.mrcs"
    p = write_movie(tmp_path / "ok.mrcs", counts())
    bad.write_bytes(p.read_bytes()[:2000])
    for path, fragment in ((bad, "broken.mrcs"), (tmp_path / "missing.tif", "missing.tif"),
                           (tmp_path / "x.dm4", ".dm4")):
        if path.suffix == ".dm4":
            path.write_bytes(b"0")
        with pytest.raises(InputError, match=fragment):
            read_movie(path)
    tif = tmp_path / "cut.tif"
    tif.write_bytes(write_movie(tmp_path / "full.tif", counts(dtype=np.uint8)).read_bytes()[:300])
    with pytest.raises(InputError, match="cut.tif"):
        read_movie(tif)
    assert list(frame_range(24, 1, None)) == list(range(24))


def test_gain_and_defect_files(tmp_path):
    g = np.random.default_rng(1).uniform(0.8, 1.2, (6, 8)).astype(np.float32)
    with mrcfile.new(tmp_path / "gain.mrc") as m:
        m.set_data(g)
    assert np.array_equal(read_gain(tmp_path / "gain.mrc"), g)
    tifffile.imwrite(tmp_path / "gain.tif", g[::-1])  # a TIFF gain is flipped like TIFF movies
    assert np.array_equal(read_gain(tmp_path / "gain.tif"), g)
    (tmp_path / "defects.txt").write_text("1 2 1 1\n\n6 0 3 2  # clipped at the edge\n")
    mask = read_defects(tmp_path / "defects.txt", (6, 8))
    expected = np.zeros((6, 8), bool)
    expected[2, 1] = True
    expected[0:2, 6:8] = True
    assert np.array_equal(mask, expected)
    with mrcfile.new(tmp_path / "map.mrc") as m:
        m.set_data(expected.astype(np.float32))
    assert np.array_equal(read_defects(tmp_path / "map.mrc", (6, 8)), expected)
    (tmp_path / "bad.txt").write_text("1 2 three 4\n")
    with pytest.raises(InputError, match="bad.txt: line 1"):
        read_defects(tmp_path / "bad.txt", (6, 8))


# ------------------------------------------------------------------------------------------- EER
# No EER movie is at hand and nothing encodes EER, so the tests write one: the bit stream as
# imagecodecs' decoder reads it (checked by decoding it back), in a BigTIFF as Falcon cameras write.


def encode_eer_frame(positions, npix, skipbits=7, subbits=4):
    """EER bit stream (7-bit runs, then 4 zero sub-pixel bits per event) of sorted unique flat event positions;
    the final run reaches the last pixel; padded to an even number of bytes with spare bits."""
    maxskip = (1 << skipbits) - 1
    runs = np.diff(np.r_[-1, np.asarray(positions, np.int64), npix]) - 1
    full, rem = runs // maxskip, runs % maxskip
    if rem[-1] == 0 and full[-1] > 0:  # the last code must land on the end, not continue
        full[-1], rem[-1] = full[-1] - 1, maxskip
    sub = np.ones(len(runs), np.int64)
    sub[-1] = 0
    n_entries = full + 1 + sub
    start = np.r_[0, np.cumsum(n_entries)[:-1]]
    values = np.full(int(n_entries.sum()), maxskip, np.int64)
    nbits = np.full(len(values), skipbits)
    values[start + full] = rem
    values[(start + full + 1)[:-1]] = 0
    nbits[(start + full + 1)[:-1]] = subbits
    bits = ((values[:, None] >> np.arange(skipbits)) & 1)[np.arange(skipbits)[None, :] < nbits[:, None]]
    bits = np.r_[bits, np.zeros(subbits + (-(len(bits) + subbits)) % 16, np.int64)]
    return np.packbits(bits.astype(np.uint8).reshape(-1, 8)[:, ::-1]).tobytes()

def write_eer(path, frames):
    """A minimal EER movie: little-endian BigTIFF, one compression-65001 strip per readout, EER XML tag."""
    n, h, w = frames.shape
    strips = [encode_eer_frame(np.flatnonzero(f), h * w) for f in frames]
    meta = b'<metadata><item name="numberOfFrames">%d</item></metadata>' % n
    out = bytearray(b'II+\x00\x08\x00\x00\x00' + struct.pack('<Q', 0))
    offsets = []
    for s in strips:
        offsets.append(len(out)); out += s
    meta_off = len(out); out += meta
    if len(out) % 2: out += b'\x00'
    prev_link = 8
    for k, s in enumerate(strips):
        tags = [(256, 4, 1, w), (257, 4, 1, h), (259, 3, 1, 65001), (262, 3, 1, 1),
                (273, 16, 1, offsets[k]), (277, 3, 1, 1), (278, 4, 1, h), (279, 16, 1, len(s)),
                (65001, 7, len(meta), meta_off)]
        ifd = len(out)
        struct.pack_into('<Q', out, prev_link, ifd)
        out += struct.pack('<Q', len(tags))
        for tag, typ, cnt, val in tags:
            fmt = {3: '<H6x', 4: '<I4x', 16: '<Q', 7: '<Q'}[typ]
            out += struct.pack('<HHQ', tag, typ, cnt) + struct.pack(fmt, val)
        prev_link = len(out); out += struct.pack('<Q', 0)
    open(path, 'wb').write(bytes(out))


def test_eer_frames_are_grouped_readouts(tmp_path):
    rng = np.random.default_rng(5)
    readouts = (rng.random((7, 64, 96)) < 0.05).astype(np.uint8)
    readouts[0, 3:5, :] = 1  # an orientation marker near the first rows
    write_eer(tmp_path / "m.eer", readouts)
    assert np.array_equal(tifffile.imread(tmp_path / "m.eer").astype(np.uint8), readouts)  # the encoder is right
    info = movie_info(tmp_path / "m.eer", eer_grouping=3)
    assert (info.fmt, info.n_frames, info.height, info.width) == ("eer", 2, 64, 96)  # 7 // 3, remainder dropped
    frames = read_movie(tmp_path / "m.eer", eer_grouping=3)
    expected = readouts[:6].reshape(2, 3, 64, 96).sum(1)
    assert frames.dtype == np.uint16 and np.array_equal(frames, expected)  # not flipped
    assert np.array_equal(read_movie(tmp_path / "m.eer", eer_grouping=3, first_frame=2), expected[1:])
    with pytest.raises(InputError, match="m.eer"):
        movie_info(tmp_path / "m.eer", eer_grouping=8)


@pytest.mark.slow
@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_convert_to_tiff") is None, reason="relion_convert_to_tiff not on PATH")
def test_eer_frames_are_the_image_relion_renders(tmp_path):
    """RELION renders EER (4096² only) into a TIFF that it reads back flipped; our EER frames equal our
    reading of that TIFF, so EER and TIFF frames mean the same pixels as in RELION."""
    rng = np.random.default_rng(6)
    readouts = (rng.random((4, 4096, 4096)) < 0.002).astype(np.uint8)
    readouts[0, 200:203, :] = 1
    write_eer(tmp_path / "m.eer", readouts)
    p = subprocess.run(["relion_convert_to_tiff", "--i", "m.eer", "--o", "conv/", "--eer_grouping", "2"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-500:]
    ours = read_movie(tmp_path / "m.eer", eer_grouping=2)
    assert np.array_equal(ours, read_movie(tmp_path / "conv/m.tif"))


# ------------------------------------------------------------------------------------------- gain


def test_gain_orientation_by_value():
    g = torch.tensor([[1.0, 2.0, 3.0],
                      [4.0, 5.0, 6.0]])
    # one quarter turn clockwise with row 0 at the top: the left column becomes the top row
    assert orient_gain(g, rot=1).tolist() == [[4.0, 1.0], [5.0, 2.0], [6.0, 3.0]]
    assert orient_gain(g, rot=2).tolist() == [[6.0, 5.0, 4.0], [3.0, 2.0, 1.0]]
    assert orient_gain(g, rot=3).tolist() == [[3.0, 6.0], [2.0, 5.0], [1.0, 4.0]]
    assert orient_gain(g, flip=1).tolist() == [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]]  # upside down
    assert orient_gain(g, flip=2).tolist() == [[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]  # left to right
    assert orient_gain(g, rot=1, flip=1).tolist() == [[6.0, 3.0], [5.0, 2.0], [4.0, 1.0]]  # rotate, then flip
    with pytest.raises(ValueError):
        PreprocessParams(gain_rot=4).validate()


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_RELION_MC, reason="relion_run_motioncorr not on PATH")
@pytest.mark.parametrize("rot, flip", [(1, 0), (1, 2), (2, 1), (3, 1)])
def test_gain_orientation_matches_relion(tmp_path, rot, flip):
    """relion_run_motioncorr writes the oriented gain it applies to MC/gain.mrc; ours equals it, and the
    sum of flat frames it makes is raw × that gain."""
    h, w = 48, 64
    gain = np.random.default_rng(2).uniform(0.7, 1.3, (w, h) if rot % 2 else (h, w)).astype(np.float32)
    with mrcfile.new(tmp_path / "gain.mrc") as m:
        m.set_data(gain)
        m.voxel_size = 1.0
    write_movie(tmp_path / "m.mrcs", np.full((3, h, w), 10, np.uint16), pixel_size=1.0)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographOriginalPixelSize": [1.0], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    starfile.write({"optics": optics, "movies": pd.DataFrame({"rlnMicrographMovieName": ["m.mrcs"],
                                                              "rlnOpticsGroup": [1]})}, tmp_path / "movies.star")
    p = subprocess.run(["relion_run_motioncorr", "--i", "movies.star", "--o", "MC/", "--use_own", "--j", "1",
                        "--gainref", "gain.mrc", "--gain_rot", str(rot), "--gain_flip", str(flip), "--skip_defect",
                        "--patch_x", "1", "--patch_y", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-500:] + p.stderr[-500:]
    ours = orient_gain(torch.from_numpy(gain), rot=rot, flip=flip).numpy()
    with mrcfile.open(tmp_path / "MC/gain.mrc") as m:
        assert np.array_equal(np.asarray(m.data), ours)
    with mrcfile.open(tmp_path / "MC/m.mrc") as m:
        assert np.allclose(np.asarray(m.data), 30 * ours, rtol=1e-4)
    prep = preprocess_movie(torch.full((3, h, w), 10), pixel_size=1.0, gain=torch.from_numpy(gain),
                            params=PreprocessParams(gain_rot=rot, gain_flip=flip, hot_pixels=False))
    assert torch.allclose(prep.frames.sum(0), 30 * torch.from_numpy(ours))


# ------------------------------------------------------------------------------- defects, hot pixels


def test_fill_defects_uses_the_mean_of_good_neighbours():
    f = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[2, 3] = True  # interior: 8 good neighbours
    mask[0, 0] = True  # corner: 3 good neighbours
    expected_interior = (f[:, 1:4, 2:5].sum((1, 2)) - f[:, 2, 3]) / 8
    expected_corner = (f[:, 0, 1] + f[:, 1, 0] + f[:, 1, 1]) / 3
    out = fill_defects(f.clone(), mask)
    assert torch.allclose(out[:, 2, 3], expected_interior) and torch.allclose(out[:, 0, 0], expected_corner)
    assert torch.equal(out[:, ~mask], f[:, ~mask])
    big = torch.zeros(40, 40, dtype=torch.bool)
    big[5:30, 10:12] = True  # a defective column pair: filled from its sides
    flat = fill_defects(torch.full((1, 40, 40), 3.0), big)
    assert torch.allclose(flat, torch.full_like(flat, 3.0))


def test_hot_pixels_are_found_exactly_in_poisson_frames():
    rng = np.random.default_rng(3)
    n, h, w = 20, 128, 160
    lam = 1.2 * (1 + 0.1 * np.sin(np.arange(w) / 7.0))[None, None, :]  # a little structure
    raw = rng.poisson(lam, (n, h, w)).astype(np.int32)
    hot = [(5, 7), (100, 33), (159, 127), (64, 0)]  # (x, y)
    for x, y in hot:
        raw[:, y, x] = rng.poisson(20 * 1.2, n)  # 20x the mean rate, as the simulator's hot pixels
    mask = hot_pixel_mask(torch.from_numpy(raw).sum(0).float(), sigma=6.0)
    assert {(int(x), int(y)) for y, x in torch.nonzero(mask).tolist()} == set(hot)
    prep = preprocess_movie(torch.from_numpy(raw), pixel_size=1.0, params=PreprocessParams())
    assert {tuple(p) for p in prep.hot_pixels.tolist()} == set(hot)
    filled = prep.frames.sum(0)
    assert all(float(filled[y, x]) < 3 * n * 1.2 for x, y in hot)  # replaced by neighbour means


def test_hot_pixels_in_flat_and_sparse_sums():
    assert not hot_pixel_mask(torch.full((32, 32), 7.0)).any()  # nothing varies: nothing is hot
    sparse = (torch.rand(200, 200, generator=torch.Generator().manual_seed(0)) < 0.05).float()  # MAD = 0
    sparse[17, 3] = 12.0
    assert torch.nonzero(hot_pixel_mask(sparse)).tolist() == [[17, 3]]


def test_dead_gain_pixels_are_filled_and_gain_multiplies():
    raw = torch.full((4, 16, 20), 5, dtype=torch.int16)
    gain = torch.full((16, 20), 2.0)
    gain[3, 4] = 0.0  # dead
    prep = preprocess_movie(raw, pixel_size=1.5, gain=gain, params=PreprocessParams(hot_pixels=False))
    assert torch.allclose(prep.frames, torch.full((4, 16, 20), 10.0)) and prep.n_defects == 1


# ------------------------------------------------------------------------------------------- binning


def test_fourier_binning_halves_the_size_and_keeps_low_frequencies():
    rng = np.random.default_rng(4)
    h, w = 96, 128
    # a band-limited image: only frequencies well inside the binned box
    f = np.zeros((h, w // 2 + 1), complex)
    f[:10, :10] = rng.normal(size=(10, 10)) + 1j * rng.normal(size=(10, 10))
    f[-9:, :10] = rng.normal(size=(9, 10)) + 1j * rng.normal(size=(9, 10))
    img = np.fft.irfft2(f, s=(h, w)) + 5.0
    x = torch.from_numpy(np.stack([img, 2 * img])).float()
    y = fourier_bin(x, 2.0)
    assert tuple(y.shape) == (2, 48, 64)
    # the same band-limited function sampled at every second pixel, mean kept
    assert torch.allclose(y, x[:, ::2, ::2], atol=1e-4)
    assert float(y.mean()) == pytest.approx(float(x.mean()), rel=1e-5)
    prep = preprocess_movie(x, pixel_size=0.6, params=PreprocessParams(bin_factor=2, hot_pixels=False))
    assert prep.pixel_size == pytest.approx(1.2) and tuple(prep.frames.shape[1:]) == (48, 64)
    assert binned_shape(3838, 3710, 2) == (1918, 1854) and binned_shape(100, 100, 1.5) == (66, 66)
    assert tuple(fourier_bin(x, 1.5).shape) == (2, 64, 84)
