"""`cryolens import movies|micrographs|particles|coords|map` end to end (in-process CLI), groups in the project.

Oracles: values written by hand (gain orientation element by element, EMAN box centres),
RELION 3.1 binaries (``relion_import`` writes the same STAR layout, ``relion_star_handler``
reads our STAR files back unchanged, ``relion_run_motioncorr`` orients a gain exactly as we do
and motion-corrects our imported movies with our gain.mrc).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile
import torch

from cryolens.io import read_mrc, read_mrc_header, write_mrc, write_star
from cryolens.motion.preprocess import orient_gain
from cryolens.project.db import SCHEMA_VERSION, Project, open_project
from cryolens.project.schema import MIGRATIONS

H, W, NF = 48, 64, 5  # movie frame rows, columns, frames (non-square: rotations change the shape)
ACQ = ["--pixel-size", "0.885", "--voltage", "300", "--cs", "2.7", "--amplitude-contrast", "0.1"]


def cli(*args: str, cwd: Path, code: int = 0) -> str:
    """Run ``cryolens ARGS`` in this process from ``cwd``; returns stdout + stderr."""
    from conftest import invoke_cli
    result = invoke_cli(*args, cwd=cwd, code=code)
    assert "Traceback" not in result.output
    return " ".join(result.output.split())  # unwrap rich's line breaks


def raw_gain(shape: tuple[int, int]) -> np.ndarray:
    """An asymmetric gain whose value encodes its position: 1 + (1000 y + x) / 1e5."""
    y, x = np.mgrid[:shape[0], :shape[1]]
    return (1 + (1000 * y + x) / 1e5).astype(np.float32)


def make_movies(folder: Path, n: int = 3, *, fmt: str = "tiff", prefix: str = "movie") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        frames = rng.poisson(2, (NF, H, W))
        p = folder / f"{prefix}_{i + 1:03d}.{'tiff' if fmt == 'tiff' else 'mrcs'}"
        if fmt == "tiff":
            tifffile.imwrite(p, frames.astype(np.uint8), compression="lzw")
        else:
            write_mrc(p, frames.astype(np.float32), 0.885, is_stack=True)
        paths.append(p)
    return paths


def star(path: Path) -> dict[str, pd.DataFrame]:
    return starfile.read(path, always_dict=True)


# ----------------------------------------------------------------------------------------- movies

def test_movies_star_gain_oriented_once_and_defects(tmp_path: Path):
    make_movies(tmp_path / "Movies")
    write_mrc(tmp_path / "gain_raw.mrc", raw_gain((W, H)), 0.885)  # stored as the camera gives it: W x H
    (tmp_path / "defects.txt").write_text("10 12 1 1\n0 5 64 1\n")
    out = cli("import", "movies", "--glob", "Movies/*.tiff", *ACQ, "--exposure-per-frame", "1.2",
              "--gain", "gain_raw.mrc", "--gain-rot", "1", "--gain-flip", "1", "--defect", "defects.txt",
              "--out", "imp", cwd=tmp_path)
    assert "3 movies" in out and "5 frames" in out and "6 e/Å² total" in out
    blocks = star(tmp_path / "imp" / "movies.star")
    optics, movies = blocks["optics"], blocks["movies"]
    assert list(optics.columns) == ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize",
                                    "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                                    "rlnMicrographDoseRate", "rlnMicrographPreExposure"]
    assert optics.iloc[0].tolist() == ["opticsGroup1", 1, 0.885, 300.0, 2.7, 0.1, 1.2, 0.0]
    assert movies["rlnMicrographMovieName"].tolist() == [f"Movies/movie_{i:03d}.tiff" for i in (1, 2, 3)]
    assert (movies["rlnOpticsGroup"] == 1).all()
    assert set(movies["rlnMicrographGainName"]) == {"imp/gain.mrc"}
    assert set(movies["rlnMicrographDefectFile"]) == {"imp/defects.txt"}
    assert (tmp_path / "imp" / "defects.txt").read_text() == "10 12 1 1\n0 5 64 1\n"
    assert (tmp_path / "imp" / "movies.star").read_text().count("# version 30001") == 2
    # rotate one quarter turn clockwise then flip upside down, by value: out[i, j] = raw[Hr-1-j, Wr-1-i] (raw is Hr x Wr = 64 x 48)
    raw = raw_gain((W, H))
    gain, apix = read_mrc(tmp_path / "imp" / "gain.mrc")
    assert gain.shape == (H, W) and apix == pytest.approx(0.885)
    for i, j in ((0, 0), (5, 7), (47, 63), (20, 3)):
        assert gain[i, j] == raw[W - 1 - j, H - 1 - i]
    job = json.loads((tmp_path / "imp" / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["n_frames"] == NF and job["results"]["gain"] is True
    assert job["params"]["gain"] == {"path": "gain_raw.mrc", "rotation": 1, "flip": 1}


@pytest.mark.parametrize("rot,flip,expect", [
    (0, 2, lambda r, i, j: r[i, r.shape[1] - 1 - j]),  # left to right
    (2, 0, lambda r, i, j: r[r.shape[0] - 1 - i, r.shape[1] - 1 - j]),
    (3, 0, lambda r, i, j: r[j, r.shape[1] - 1 - i]),  # counter-clockwise: out[i, j] = in[j, W-1-i]
])
def test_orient_gain_by_value(rot: int, flip: int, expect):
    raw = raw_gain((6, 9))
    out = orient_gain(torch.from_numpy(raw), rot=rot, flip=flip).numpy()
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            assert out[i, j] == expect(raw, i, j)


def test_old_gain_spelling_names_the_relion_value(tmp_path: Path):
    """--gain-rot in degrees and --gain-flip x/y (the spelling before RELION's) get one sentence with the value."""
    make_movies(tmp_path / "Movies", n=1)
    write_mrc(tmp_path / "g.mrc", raw_gain((W, H)), 1.0)
    base = ["import", "movies", "--glob", "Movies/*.tiff", *ACQ, "--exposure-per-frame", "1", "--gain", "g.mrc",
            "--out", "x"]
    out = cli(*base, "--gain-rot", "90", cwd=tmp_path, code=2)
    assert "--gain-rot 90: give quarter turns 0-3 as relion_run_motioncorr --gain_rot, i.e. --gain-rot 1" in out
    out = cli(*base, "--gain-rot", "1", "--gain-flip", "y", cwd=tmp_path, code=2)
    assert "i.e. --gain-flip 1" in out and "relion_run_motioncorr --gain_flip" in out
    out = cli(*base, "--gain-rot", "1", "--gain-flip", "x", cwd=tmp_path, code=2)
    assert "i.e. --gain-flip 2" in out
    out = cli(*base, "--gain-rot", "1", "--gain-flip", "3", cwd=tmp_path, code=2)
    assert "--gain-flip 3" in out
    assert not (tmp_path / "x" / "movies.star").exists()


@pytest.mark.relion
def test_gain_orientation_matches_relion_motioncorr(tmp_path: Path):
    """relion_run_motioncorr --gain_rot k --gain_flip f writes the oriented gain.mrc: ours is identical for all 12."""
    make_movies(tmp_path / "Movies", n=1, fmt="mrc")
    raw = raw_gain((H, W))
    write_mrc(tmp_path / "gain_raw.mrc", raw, 0.885)
    cli("import", "movies", "--glob", "Movies/*.mrcs", *ACQ, "--exposure-per-frame", "1", "--out", "imp",
        cwd=tmp_path)
    for k in range(4):
        for f in range(3):
            if (k, f) == (0, 0):
                continue  # RELION writes no gain.mrc when nothing changes
            mc = tmp_path / f"MC_{k}{f}"
            mc.mkdir()
            subprocess.run(["relion_run_motioncorr", "--i", "imp/movies.star", "--o", f"{mc.name}/", "--use_own",
                            "--gainref", "gain_raw.mrc", "--gain_rot", str(k), "--gain_flip", str(f),
                            "--patch_x", "1", "--patch_y", "1", "--j", "1"], cwd=tmp_path, capture_output=True)
            theirs = mrcfile.read(mc / "gain.mrc")
            np.testing.assert_array_equal(orient_gain(torch.from_numpy(raw), rot=k, flip=f).numpy(), theirs)


@pytest.mark.relion
def test_relion_reads_and_motion_corrects_our_import(tmp_path: Path):
    """Our movies.star and oriented gain.mrc go straight into relion_run_motioncorr; relion_star_handler
    round-trips the STAR unchanged; relion_import writes the same optics/movies layout (without the dose)."""
    make_movies(tmp_path / "Movies", n=2, fmt="mrc")
    write_mrc(tmp_path / "gain_raw.mrc", raw_gain((W, H)), 0.885)
    cli("import", "movies", "--glob", "Movies/*.mrcs", *ACQ, "--exposure-per-frame", "1.2", "--gain",
        "gain_raw.mrc", "--gain-rot", "3", "--out", "imp", cwd=tmp_path)
    (tmp_path / "MC").mkdir()
    p = subprocess.run(["relion_run_motioncorr", "--i", "imp/movies.star", "--o", "MC/", "--use_own", "--gainref",
                        "imp/gain.mrc", "--patch_x", "1", "--patch_y", "1", "--j", "1", "--dose_per_frame", "1.2",
                        "--angpix", "0.885"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert read_mrc_header(tmp_path / "MC" / "Movies" / "movie_001.mrc").shape == (1, H, W)
    p = subprocess.run(["relion_star_handler", "--i", "imp/movies.star", "--o", "rt.star", "--select",
                        "rlnOpticsGroup", "--minval", "1", "--maxval", "1"], cwd=tmp_path, capture_output=True)
    assert p.returncode == 0
    ours, back = star(tmp_path / "imp" / "movies.star"), star(tmp_path / "rt.star")
    for name in ("optics", "movies"):
        pd.testing.assert_frame_equal(ours[name], back[name], check_dtype=False)
    (tmp_path / "R").mkdir()
    subprocess.run(["relion_import", "--do_movies", "--i", "Movies/*.mrcs", "--odir", "R/", "--ofile", "movies.star",
                    "--angpix", "0.885", "--kV", "300", "--Cs", "2.7", "--Q0", "0.1"], cwd=tmp_path,
                   capture_output=True, check=True)
    theirs = star(tmp_path / "R" / "movies.star")
    assert list(theirs["optics"].columns) == list(ours["optics"].columns)[:6]
    pd.testing.assert_frame_equal(theirs["optics"], ours["optics"][theirs["optics"].columns], check_dtype=False)
    pd.testing.assert_frame_equal(theirs["movies"], ours["movies"][theirs["movies"].columns], check_dtype=False)


def test_append_optics_groups_and_filename_rule(tmp_path: Path):
    make_movies(tmp_path / "A", n=2)
    make_movies(tmp_path / "B", n=2, prefix="other")
    cli("import", "movies", "--glob", "A/*.tiff", *ACQ, "--exposure-per-frame", "1.2", "--optics-group", "day1",
        "--out", "i1", cwd=tmp_path)
    cli("import", "movies", "B/other_001.tiff", "--files", "B/other_002.tiff", "--pixel-size", "1.1",
        "--voltage", "200", "--exposure-per-frame", "0.8", "--optics-group", "day2", "--append", "i1/movies.star",
        "--out", "i2", cwd=tmp_path)
    blocks = star(tmp_path / "i2" / "movies.star")
    assert blocks["optics"][["rlnOpticsGroupName", "rlnOpticsGroup", "rlnVoltage", "rlnMicrographDoseRate"]] \
        .values.tolist() == [["day1", 1, 300.0, 1.2], ["day2", 2, 200.0, 0.8]]
    assert blocks["movies"]["rlnOpticsGroup"].tolist() == [1, 1, 2, 2]
    # the same name with other values is refused, naming the previous STAR
    out = cli("import", "movies", "--glob", "B/*.tiff", *ACQ, "--exposure-per-frame", "1.0", "--optics-group", "day1",
              "--append", "i1/movies.star", "--out", "i3", cwd=tmp_path, code=2)
    assert "already lists" in out or "day1" in out
    # one optics group per value of a filename rule
    cli("import", "movies", "--glob", "A/*.tiff", "--glob", "B/*.tiff", *ACQ, "--exposure-per-frame", "1",
        "--optics-from", r"^(\w+?)_", "--optics-group", "og", "--out", "i4", cwd=tmp_path)
    blocks = star(tmp_path / "i4" / "movies.star")
    assert blocks["optics"]["rlnOpticsGroupName"].tolist() == ["og_movie", "og_other"]
    assert blocks["movies"]["rlnOpticsGroup"].tolist() == [1, 1, 2, 2]


def test_movie_input_errors_name_the_file(tmp_path: Path):
    make_movies(tmp_path / "Movies", n=1)
    base = ["import", "movies", *ACQ, "--out", "x"]
    out = cli(*base, "--glob", "Movies/*.mrc", "--exposure-per-frame", "1", cwd=tmp_path, code=2)
    assert "Movies/*.mrc" in out and "no file matches" in out
    out = cli(*base, "--glob", "Movies/*.tiff", cwd=tmp_path, code=2)
    assert "--exposure-per-frame" in out
    write_mrc(tmp_path / "g.mrc", raw_gain((H + 2, W)), 1.0)
    out = cli(*base, "--glob", "Movies/*.tiff", "--exposure-per-frame", "1", "--gain", "g.mrc", cwd=tmp_path, code=2)
    assert "g.mrc" in out and "64x50" in out
    out = cli(*base, "--glob", "Movies/*.tiff", "--exposure-per-frame", "1", "--gain", "g.mrc", "--gain-rot", "45",
              cwd=tmp_path, code=2)
    assert "--gain-rot" in out
    (tmp_path / "Movies" / "broken.tiff").write_bytes(b"II*\x00garbage")
    out = cli(*base, "--glob", "Movies/*.tiff", "--exposure-per-frame", "1", "--check-all", cwd=tmp_path, code=2)
    assert "broken.tiff" in out
    (tmp_path / "Movies" / "broken.tiff").unlink()
    (tmp_path / "bad_defects.txt").write_text("1 2 3\n")
    out = cli(*base, "--glob", "Movies/*.tiff", "--exposure-per-frame", "1", "--defect", "bad_defects.txt",
              cwd=tmp_path, code=2)
    assert "bad_defects.txt" in out
    assert not (tmp_path / "x" / "movies.star").exists()


def test_every_movie_is_checked_from_its_header_and_size(tmp_path: Path):
    """Each movie (not only the first) must open and be as long as its header says; nothing is written otherwise."""
    make_movies(tmp_path / "Movies", n=3)
    make_movies(tmp_path / "Stacks", n=3, fmt="mrc")
    base = ["import", "movies", *ACQ, "--exposure-per-frame", "1", "--out", "x"]
    last = tmp_path / "Movies" / "movie_003.tiff"
    last.write_bytes(last.read_bytes()[:-50])  # cut inside the last frame's data
    out = cli(*base, "--glob", "Movies/*.tiff", cwd=tmp_path, code=2)
    assert "movie_003.tiff: the file is truncated" in out and "re-copy the movie" in out
    last.write_bytes(last.read_bytes()[:400])  # cut before the later pages' directories
    out = cli(*base, "--glob", "Movies/*.tiff", cwd=tmp_path, code=2)
    assert "movie_003.tiff: the file is truncated" in out
    second = tmp_path / "Stacks" / "movie_002.mrcs"
    second.write_bytes(second.read_bytes()[:-100])
    out = cli(*base, "--glob", "Stacks/*.mrcs", cwd=tmp_path, code=2)
    assert "movie_002.mrcs: the file is truncated" in out and "header says 64x48x5" in out
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------- micrographs

def make_micrographs(folder: Path, n: int = 3, shape: tuple[int, int] = (80, 100)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"mic{i + 1}.mrc" for i in range(n)]
    for i, p in enumerate(paths):
        write_mrc(p, np.full(shape, float(i), np.float32), 1.06)
    return paths


def test_micrographs_star(tmp_path: Path):
    make_micrographs(tmp_path / "Mics")
    out = cli("import", "micrographs", "--glob", "Mics/*.mrc", "--pixel-size", "1.06", "--voltage", "200", "--cs",
              "1.4", "--out", "im", cwd=tmp_path)
    assert "3 micrographs (100x80, 1.06 Å/px)" in out
    blocks = star(tmp_path / "im" / "micrographs.star")
    assert list(blocks["optics"].columns) == ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographPixelSize",
                                              "rlnMicrographOriginalPixelSize", "rlnVoltage",
                                              "rlnSphericalAberration", "rlnAmplitudeContrast"]
    assert blocks["optics"].iloc[0].tolist() == ["opticsGroup1", 1, 1.06, 1.06, 200.0, 1.4, 0.1]
    assert blocks["micrographs"]["rlnMicrographName"].tolist() == ["Mics/mic1.mrc", "Mics/mic2.mrc", "Mics/mic3.mrc"]
    make_movies(tmp_path / "Movies", n=1, fmt="mrc")
    out = cli("import", "micrographs", "Movies/movie_001.mrcs", "--pixel-size", "1", "--out", "bad", cwd=tmp_path,
              code=2)
    assert "not a micrograph file" in out or "movie" in out
    # a missing or truncated micrograph (not the first) is named, and nothing is written
    base = ["import", "micrographs", "--pixel-size", "1.06", "--out", "bad"]
    out = cli(*base, "--glob", "Mics/*.mrc", "--files", "Mics/mic9.mrc", cwd=tmp_path, code=2)
    assert "Mics/mic9.mrc: file not found" in out
    third = tmp_path / "Mics" / "mic3.mrc"
    third.write_bytes(third.read_bytes()[:-8])
    out = cli(*base, "--glob", "Mics/*.mrc", cwd=tmp_path, code=2)
    assert "mic3.mrc: the file is truncated" in out and "header says 100x80x1 float32" in out
    assert not (tmp_path / "bad").exists()
    cli("project", "init", "P", cwd=tmp_path)  # inside a project the bad file takes no job number either
    out = cli("import", "micrographs", "--glob", "../Mics/*.mrc", "--pixel-size", "1.06", cwd=tmp_path / "P", code=2)
    assert "mic3.mrc: the file is truncated" in out
    assert open_project(tmp_path / "P").jobs() == [] and not (tmp_path / "P" / "Import").exists()


# ----------------------------------------------------------------------------------------- particles

def make_relion30_particles(tmp_path: Path, n: int = 10, box: int = 16) -> Path:
    """A RELION 3.0 STAR (no optics, pixel size via detector/magnification) in a subfolder, its stack beside it."""
    sub = tmp_path / "old" / "Extract"
    sub.mkdir(parents=True)
    write_mrc(sub / "parts.mrcs", np.random.default_rng(0).normal(size=(n, box, box)).astype(np.float32), 2.0)
    df = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@parts.mrcs" for i in range(n)],
                       "rlnDefocusU": np.full(n, 15000.0), "rlnDefocusV": np.full(n, 14000.0),
                       "rlnDefocusAngle": np.zeros(n), "rlnOriginX": np.arange(n, dtype=float),
                       "rlnDetectorPixelSize": np.full(n, 5.0), "rlnMagnification": np.full(n, 25000.0)})
    starfile.write({"images": df}, sub / "particles.star", overwrite=True)
    return sub / "particles.star"


def test_particles_relion30_upgraded_and_paths_rewritten(tmp_path: Path):
    src = make_relion30_particles(tmp_path)
    out = cli("import", "particles", "--in", str(src.relative_to(tmp_path)), "--voltage", "300", "--cs", "2.7",
              "--out", "ip", cwd=tmp_path, code=2)
    assert "particles.star" in out and "--amplitude-contrast" in out
    out = cli("import", "particles", "--in", "old/Extract/particles.star", "--voltage", "300", "--cs", "2.7",
              "--amplitude-contrast", "0.07", "--pixel-size", "3", "--out", "ip", cwd=tmp_path, code=2)
    assert "rlnImagePixelSize is 2" in out  # 5 µm / 25000 = 2 Å disagrees with --pixel-size 3
    out = cli("import", "particles", "--in", "old/Extract/particles.star", "--voltage", "300", "--cs", "2.7",
              "--amplitude-contrast", "0.07", "--optics-group", "legacy", "--out", "ip", cwd=tmp_path)
    assert "10 particles (box 16, 2 Å/px, RELION 3.0 file" in out
    blocks = star(tmp_path / "ip" / "particles.star")
    o, p = blocks["optics"], blocks["particles"]
    assert o.iloc[0][["rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                      "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"]].tolist() == \
        ["legacy", 300.0, 2.7, 0.07, 2.0, 16, 2]
    assert p["rlnImageName"].iloc[3] == "000004@old/Extract/parts.mrcs"  # resolvable from the current folder
    np.testing.assert_allclose(p["rlnOriginXAngst"], np.arange(10) * 2.0)
    # a missing stack is named
    (tmp_path / "old" / "Extract" / "parts.mrcs").rename(tmp_path / "old" / "moved.mrcs")
    out = cli("import", "particles", "--in", "old/Extract/particles.star", "--voltage", "300", "--cs", "2.7",
              "--amplitude-contrast", "0.07", "--out", "ip2", cwd=tmp_path, code=2)
    assert "parts.mrcs" in out and "not found" in out
    # a truncated stack is found from its header and file size alone
    moved = tmp_path / "old" / "moved.mrcs"
    moved.write_bytes(moved.read_bytes()[:-100])
    moved.rename(tmp_path / "old" / "Extract" / "parts.mrcs")
    out = cli("import", "particles", "--in", "old/Extract/particles.star", "--voltage", "300", "--cs", "2.7",
              "--amplitude-contrast", "0.07", "--out", "ip3", cwd=tmp_path, code=2)
    assert "parts.mrcs: the file is truncated" in out and "re-copy or re-export it" in out
    assert not (tmp_path / "ip3").exists()
    cli("project", "init", "P", cwd=tmp_path)  # inside a project the bad stack takes no job number either
    out = cli("import", "particles", "--in", "../old/Extract/particles.star", "--voltage", "300", "--cs", "2.7",
              "--amplitude-contrast", "0.07", cwd=tmp_path / "P", code=2)
    assert "parts.mrcs: the file is truncated" in out
    assert open_project(tmp_path / "P").jobs() == [] and not (tmp_path / "P" / "Import").exists()
    # an index beyond the stack is named with its row, and nothing is written
    moved = tmp_path / "old" / "Extract" / "parts.mrcs"
    write_mrc(moved, np.zeros((10, 16, 16), np.float32), 2.0)
    text = (tmp_path / "old" / "Extract" / "particles.star").read_text()
    (tmp_path / "old" / "Extract" / "particles.star").write_text(text.replace("000010@parts.mrcs", "000011@parts.mrcs"))
    out = cli("import", "particles", "--in", "old/Extract/particles.star", "--voltage", "300", "--cs", "2.7",
              "--amplitude-contrast", "0.07", "--out", "ip4", cwd=tmp_path, code=2)
    assert "row 10 asks for image 11 of parts.mrcs, which holds 10 images" in out
    assert not (tmp_path / "ip4").exists()


@pytest.mark.relion
def test_relion_reads_imported_particles(tmp_path: Path):
    make_relion30_particles(tmp_path)
    cli("import", "particles", "--in", "old/Extract/particles.star", "--voltage", "300", "--cs", "2.7",
        "--amplitude-contrast", "0.07", "--out", "ip", cwd=tmp_path)
    p = subprocess.run(["relion_star_handler", "--i", "ip/particles.star", "--o", "rt.star", "--select",
                        "rlnDefocusU", "--minval", "0", "--maxval", "1e6"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    ours, back = star(tmp_path / "ip" / "particles.star"), star(tmp_path / "rt.star")
    pd.testing.assert_frame_equal(ours["optics"], back["optics"], check_dtype=False)
    pd.testing.assert_frame_equal(ours["particles"], back["particles"], check_dtype=False)


# ----------------------------------------------------------------------------------------- coordinates

def test_coords_star_box_txt(tmp_path: Path):
    make_micrographs(tmp_path / "Mics")
    cli("import", "micrographs", "--glob", "Mics/*.mrc", "--pixel-size", "1.06", "--out", "im", cwd=tmp_path)
    picks = tmp_path / "picks"
    picks.mkdir()
    write_star(picks / "mic1_autopick.star", {"": pd.DataFrame({"rlnCoordinateX": [10.5, 20.0],
                                                                "rlnCoordinateY": [30.0, 40.0],
                                                                "rlnAutopickFigureOfMerit": [0.9, 0.8]})})
    (picks / "mic2.box").write_text("10 20 32 32\n50\t60\t32\t32\n")  # EMAN: lower-left corner + size
    (picks / "mic3_manual.txt").write_text("x,y\n# comment\n1.5,2.5\n200,3\n")
    out = cli("import", "coords", "--glob", "picks/*", "--micrographs", "im/micrographs.star", "--out", "ic",
              cwd=tmp_path)
    assert "6 picks on 3 of 3 micrographs, 1 outside" in out
    index = star(tmp_path / "ic" / "coords.star")["coordinate_files"]
    assert index["rlnMicrographName"].tolist() == ["Mics/mic1.mrc", "Mics/mic2.mrc", "Mics/mic3.mrc"]
    assert index["rlnMicrographCoordinates"].tolist() == [f"ic/Mics/mic{i}_coords.star" for i in (1, 2, 3)]
    c1, c2, c3 = (starfile.read(tmp_path / f"ic/Mics/mic{i}_coords.star") for i in (1, 2, 3))
    assert c1["rlnAutopickFigureOfMerit"].tolist() == [0.9, 0.8] and c1["rlnCoordinateX"].tolist() == [10.5, 20.0]
    assert c2[["rlnCoordinateX", "rlnCoordinateY"]].values.tolist() == [[26.0, 36.0], [66.0, 76.0]]
    assert c3[["rlnCoordinateX", "rlnCoordinateY"]].values.tolist() == [[1.5, 2.5], [200.0, 3.0]]
    (picks / "unrelated.box").write_text("1 2 3 4\n")
    out = cli("import", "coords", "--glob", "picks/*", "--micrographs", "im/micrographs.star", "--out", "ic2",
              cwd=tmp_path, code=2)
    assert "unrelated.box" in out
    (picks / "unrelated.box").unlink()
    (picks / "mic2.box").write_text("10 20\n")
    out = cli("import", "coords", "--glob", "picks/*", "--micrographs", "im/micrographs.star", "--out", "ic3",
              cwd=tmp_path, code=2)
    assert "mic2.box" in out and "x y width height" in out


# ----------------------------------------------------------------------------------------- map

@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_map_copied_checked_and_pixel_size_corrected(tmp_path: Path):
    vol = np.random.default_rng(1).normal(size=(12, 12, 12)).astype(np.float32)
    write_mrc(tmp_path / "ref.mrc", vol, 1.0)
    out = cli("import", "map", "--in", "ref.mrc", "--pixel-size", "1.5", "--out", "m", cwd=tmp_path)
    assert "12x12x12 at 1.5 Å/px (header corrected)" in out
    data, apix = read_mrc(tmp_path / "m" / "map.mrc")
    assert apix == pytest.approx(1.5)
    np.testing.assert_array_equal(data, vol)
    cli("import", "map", "--in", "ref.mrc", "--link", "--out", "m2", cwd=tmp_path)
    assert (tmp_path / "m2" / "map.mrc").is_symlink() and read_mrc(tmp_path / "m2" / "map.mrc")[1] == 1.0
    vol[3, 4, 5] = np.nan
    write_mrc(tmp_path / "nan.mrc", vol, 1.0)
    assert "nan.mrc" in cli("import", "map", "--in", "nan.mrc", "--out", "m3", cwd=tmp_path, code=2)
    write_mrc(tmp_path / "flat.mrc", vol[0], 1.0)
    assert "flat.mrc" in cli("import", "map", "--in", "flat.mrc", "--out", "m4", cwd=tmp_path, code=2)
    (tmp_path / "cut.mrc").write_bytes((tmp_path / "ref.mrc").read_bytes()[:2000])  # truncated copy
    assert "cut.mrc: the file is truncated" in cli("import", "map", "--in", "cut.mrc", "--out", "m5", cwd=tmp_path,
                                                   code=2)


# ----------------------------------------------------------------------------------------- project and groups

def test_imports_in_project_recorded_with_groups(tmp_path: Path):
    proj = tmp_path / "P"
    cli("project", "init", str(proj), cwd=tmp_path)
    make_movies(proj / "Movies", n=3)
    out = cli("import", "movies", "--glob", "Movies/*.tiff", *ACQ, "--exposure-per-frame", "1.2", "--group",
              "session1", cwd=proj)
    assert "group session1 now has 3 items" in out
    make_micrographs(proj / "Mics", n=2)
    cli("import", "micrographs", "--glob", "Mics/*.mrc", "--pixel-size", "1.06", "--group", "mics", cwd=proj)
    jobs = json.loads(cli("project", "jobs", "--json", cwd=proj))
    assert [(j["stage"], j["folder"], j["status"]) for j in jobs] == [
        ("import_movies", "Import/job001", "finished"), ("import_micrographs", "Import/job002", "finished")]
    assert (proj / "Import" / "job001" / "movies.star").is_file()
    p = open_project(proj)
    assert p.lineage(proj / "Import/job001/movies.star")["job"]["name"] == "job001"
    groups = json.loads(cli("project", "groups", "--json", cwd=proj))
    assert [(g["name"], g["n_members"], g["sources"], g["jobs"]) for g in groups] == [
        ("mics", 2, ["Import/job002/micrographs.star"], ["job002"]),
        ("session1", 3, ["Import/job001/movies.star"], ["job001"])]
    assert [m["item"] for m in p.group_members("session1")] == [f"Movies/movie_{i:03d}.tiff" for i in (1, 2, 3)]
    # a subset from a STAR file, and a job's files
    blocks = star(proj / "Import" / "job001" / "movies.star")
    write_star(proj / "subset.star", {"optics": blocks["optics"], "movies": blocks["movies"].iloc[[0, 2]]})
    shown = cli("project", "group", "best", "--from-star", "subset.star", "--description", "thin ice", cwd=proj)
    assert "best: 2 items (thin ice)" in shown and "movie_003.tiff" in shown and "movie_002" not in shown
    files = json.loads(cli("project", "group", "job1files", "--from-job", "job001", "--json", cwd=proj))
    assert "Import/job001/movies.star" in [m["item"] for m in files["members"]]
    assert all(m["asset"] for m in files["members"])
    cli("project", "group", "best", "--delete", cwd=proj)
    assert "best" not in cli("project", "groups", cwd=proj)
    assert "no such group" in cli("project", "group", "nope", cwd=proj, code=2)
    # --group outside a project is refused before anything is written
    out = cli("import", "micrographs", "--glob", "P/Mics/*.mrc", "--pixel-size", "1", "--group", "g", "--out", "o",
              cwd=tmp_path, code=2)
    assert "--group needs a project" in out


def test_schema_1_project_migrates_to_groups(tmp_path: Path):
    con = sqlite3.connect(tmp_path / "cryolens.db")
    con.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL, applied REAL NOT NULL);"
                      + MIGRATIONS[0] + "; INSERT INTO schema_version VALUES (1, 0);")
    con.close()
    assert Project(tmp_path).schema_version() == 1
    p = open_project(tmp_path)
    assert p.schema_version() == SCHEMA_VERSION >= 2
    assert p.add_to_group("g", ["a.mrc", "b.mrc"]).n_members == 2
    assert p.add_to_group("g", ["b.mrc", "c.mrc"]).n_members == 3  # repeats kept once


# ----------------------------------------------------------------------------------------- real RELION 5 project

def test_real_relion5_picks_and_particles(shared_data: Path, tmp_path: Path):
    """The beta-gal tutorial project: its AutoPick/ManualPick STARs and its extracted particles (a table without
    data_optics, float16 stack) import against its own micrographs, values unchanged."""
    proj = shared_data / "metadata" / "relion5_betagal_project"
    out = cli("import", "coords", "--glob", "AutoPick/job008/Movies/*_autopick.star", "--micrographs",
              "CtfFind/job005/micrographs_ctf.star", "--out", str(tmp_path / "ic"), cwd=proj)
    assert "242 picks on 1 of 24 micrographs" in out
    index = star(tmp_path / "ic" / "coords.star")["coordinate_files"]
    theirs = star(proj / "AutoPick" / "job008" / "autopick.star")["coordinate_files"]
    assert index["rlnMicrographName"].tolist() == theirs["rlnMicrographName"].tolist()[:1]
    ours = starfile.read(index["rlnMicrographCoordinates"].iloc[0])
    picks = starfile.read(proj / "AutoPick/job008/Movies/20170629_00021_frameImage_autopick.star")
    pd.testing.assert_frame_equal(ours, picks)
    out = cli("import", "particles", "--in", "Extract/job009/Movies/20170629_00021_frameImage_extract.star",
              "--pixel-size", "3.54", "--voltage", "200", "--cs", "1.4", "--amplitude-contrast", "0.1",
              "--out", str(tmp_path / "ip"), cwd=proj)
    assert "242 particles (box 64, 3.54 Å/px, RELION 3.0 file, 1 stacks)" in out
    blocks = star(tmp_path / "ip" / "particles.star")
    assert blocks["optics"].iloc[0][["rlnVoltage", "rlnSphericalAberration", "rlnImageSize"]].tolist() == \
        [200.0, 1.4, 64]
    names = blocks["particles"]["rlnImageName"]
    assert names.iloc[241] == "000242@Extract/job009/Movies/20170629_00021_frameImage.mrcs"
    assert blocks["particles"]["rlnDefocusU"].iloc[0] == pytest.approx(37034.929688)
