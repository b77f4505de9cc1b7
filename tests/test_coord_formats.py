"""Coordinate formats of `cryolens import coords` and `cryolens extract`: crYOLO CBOX and STAR, Topaz,
cisTEM (text in Å and .plt), and the real RELION-5 picks of ../shared/data read unchanged.

Oracles: centres written by hand (crYOLO writes a CBOX box's corner as centre - box/2; cisTEM's
RELION export writes x/pixel size as rlnCoordinateX, its .plt export row = height - y/pixel size
+ 1), the RELION-5 autopick files as RELION wrote them, and RELION 3.1's extraction reading the
coordinate STAR files we write.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from conftest import assert_user_error, invoke_cli, job_results
from cryolens.errors import InputError
from cryolens.io import write_mrc
from cryolens.jobs.coord_formats import detect_format, read_coordinates, read_pick_list
from cryolens.jobs.extract_inputs import read_positions

APIX = 1.06
XY = ["rlnCoordinateX", "rlnCoordinateY"]
FOM = "rlnAutopickFigureOfMerit"
RELION5 = "metadata/relion5_betagal_project"
MIC21 = "MotionCorr/job002/Movies/20170629_00021_frameImage.mrc"
PICKS21 = "AutoPick/job008/Movies/20170629_00021_frameImage_autopick.star"

CBOX = """data_global

_cbox_format_version 1.0

data_cryolo

loop_
_CoordinateX #1
_CoordinateY #2
_CoordinateZ #3
_Width #4
_Height #5
_Depth #6
_EstWidth #7
_EstHeight #8
_Confidence #9
_NumBoxes #10
_Angle #11
{rows}

data_cryolo_include

loop_
_slice_index #1

"""
CRYOLO_STAR = """
data_

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnClassNumber #3
_rlnAnglePsi #4
_rlnAutopickFigureOfMerit #5
40.0 50.0 -999 -999.0 0.9
60.0 10.0 -999 -999.0 0.5
"""


def cbox(rows: list[tuple[float, float, float, float, float]]) -> str:
    """A CBOX file as crYOLO writes it: corner x, y, width, height, confidence per row."""
    return CBOX.format(rows="\n".join(f"{x} {y} <NA> {w} {h} <NA> {w} {h} {c} <NA> <NA>" for x, y, w, h, c in rows))


def make_project(tmp_path: Path, n: int = 3) -> Path:
    """n micrographs (80 x 100 px, 1.06 Å/px) imported into ``im/micrographs.star``; returns that STAR."""
    (tmp_path / "Mics").mkdir()
    for i in range(n):
        write_mrc(tmp_path / "Mics" / f"mic{i + 1}.mrc", np.full((80, 100), float(i), np.float32), APIX)
    invoke_cli("import", "micrographs", "--glob", "Mics/*.mrc", "--pixel-size", str(APIX), "--out", "im",
               cwd=tmp_path)
    return tmp_path / "im" / "micrographs.star"


def import_coords(tmp_path: Path, *args: str, code: int = 0):
    return invoke_cli("import", "coords", *args, "--micrographs", "im/micrographs.star", cwd=tmp_path, code=code)


def written(tmp_path: Path, out: str, mic: str) -> pd.DataFrame:
    return starfile.read(tmp_path / out / "Mics" / f"{mic}_coords.star")


# ------------------------------------------------------------------------------------------- readers

def test_cbox_corner_plus_half_size_and_confidence(tmp_path: Path):
    p = tmp_path / "a.cbox"
    p.write_text(cbox([(100.0, 200.0, 64, 64, 0.85), (300.5, 20.0, 64, 48, 0.45)]))
    t = read_coordinates(p)
    assert detect_format(p) == "cbox"
    assert t[XY].values.tolist() == [[132.0, 232.0], [332.5, 44.0]]
    assert t[FOM].tolist() == [0.85, 0.45]
    empty = tmp_path / "none.cbox"  # crYOLO writes a file without rows for a micrograph without picks
    empty.write_text(cbox([]))
    assert len(read_coordinates(empty)) == 0


def test_cryolo_star_reads_as_relion(tmp_path: Path):
    p = tmp_path / "mic_1.star"
    p.write_text(CRYOLO_STAR)
    for fmt in ("auto", "cryolo"):
        t = read_coordinates(p, fmt)
        assert t[XY].values.tolist() == [[40.0, 50.0], [60.0, 10.0]] and t[FOM].tolist() == [0.9, 0.5]


def test_topaz_and_cistem_lists(tmp_path: Path):
    topaz = tmp_path / "picks.txt"
    topaz.write_text("image_name\tx_coord\ty_coord\tscore\nmic1\t10\t20\t3.5\nmic2\t5\t6\t-1.25\n")
    assert detect_format(topaz) == "topaz"
    t = read_pick_list(topaz, "topaz")
    assert t["rlnMicrographName"].tolist() == ["mic1", "mic2"] and t[FOM].tolist() == [3.5, -1.25]
    with pytest.raises(InputError, match="many micrographs"):
        read_coordinates(topaz)
    cis = tmp_path / "cistem.txt"
    cis.write_text("# cisTEM particle positions\nMics/mic1.mrc 106.0 212.0\nmic2.mrc 10.6 0\n")
    assert detect_format(cis) == "xy"  # never guessed: Å must be asked for
    c = read_pick_list(cis, "cistem")
    assert c[XY].values.tolist() == [[106.0, 212.0], [10.6, 0.0]]


# ------------------------------------------------------------------------------------- import coords

def test_import_cbox_and_cryolo_star_then_extract_reads_them(tmp_path: Path):
    make_project(tmp_path)
    (tmp_path / "picks").mkdir()
    (tmp_path / "picks" / "mic1.cbox").write_text(cbox([(10, 20, 32, 32, 0.7), (50, 40, 20, 30, 0.6)]))
    (tmp_path / "picks" / "mic2.star").write_text(CRYOLO_STAR)
    import_coords(tmp_path, "--glob", "picks/*", "--out", "ic")
    assert job_results(tmp_path / "ic")["n_picks"] == 4
    c1 = written(tmp_path, "ic", "mic1")
    assert c1[XY].values.tolist() == [[26.0, 36.0], [60.0, 55.0]] and c1[FOM].tolist() == [0.7, 0.6]
    pos = read_positions(tmp_path / "ic" / "coords.star")
    assert pos.table[XY].values.tolist() == [[26.0, 36.0], [60.0, 55.0], [40.0, 50.0], [60.0, 10.0]]
    # extract also reads an index that names the crYOLO files directly
    starfile.write({"coordinate_files": pd.DataFrame({"rlnMicrographName": ["Mics/mic1.mrc"],
                                                      "rlnMicrographCoordinates": ["picks/mic1.cbox"]})},
                   tmp_path / "index.star")
    direct = read_positions(tmp_path / "index.star").table
    assert direct[XY].values.tolist() == [[26.0, 36.0], [60.0, 55.0]] and direct[FOM].tolist() == [0.7, 0.6]


def test_import_topaz_scale_and_score(tmp_path: Path):
    make_project(tmp_path)
    (tmp_path / "topaz.txt").write_text("image_name\tx_coord\ty_coord\tscore\n"
                                        "mic2\t10\t12\t2.5\nmic1\t3\t4\t-0.5\nmic2\t20\t5\t1.0\n")
    result = import_coords(tmp_path, "topaz.txt", "--scale", "4", "--out", "it")
    assert "3 picks on 2 of 3 micrographs" in " ".join(result.output.split())
    index = starfile.read(tmp_path / "it" / "coords.star")
    assert index["rlnMicrographName"].tolist() == ["Mics/mic1.mrc", "Mics/mic2.mrc"]
    c1, c2 = written(tmp_path, "it", "mic1"), written(tmp_path, "it", "mic2")
    assert c1[XY].values.tolist() == [[12.0, 16.0]] and c1[FOM].tolist() == [-0.5]
    assert c2[XY].values.tolist() == [[40.0, 48.0], [80.0, 20.0]] and c2[FOM].tolist() == [2.5, 1.0]


def test_import_cistem_angstrom_to_pixels(tmp_path: Path):
    make_project(tmp_path)
    (tmp_path / "cistem.txt").write_text("# from cisTEM\nMics/mic3.mrc 106.0 21.2\n/data/mic1.mrc 10.6 0.0 extra\n")
    import_coords(tmp_path, "cistem.txt", "--format", "cistem", "--out", "ik")
    assert np.allclose(written(tmp_path, "ik", "mic3")[XY].values, [[100.0, 20.0]])
    assert np.allclose(written(tmp_path, "ik", "mic1")[XY].values, [[10.0, 0.0]])
    r = import_coords(tmp_path, "cistem.txt", "--format", "cistem", "--scale", "2", "--out", "ik2", code=2)
    assert_user_error(r, "--scale")


def test_import_cistem_plt_export(tmp_path: Path):
    """cisTEM writes row = height - y/apix + 1, column = x/apix + 1: a pick at (20, 30) px of an 80-row
    micrograph is '51 21 1'."""
    make_project(tmp_path)
    (tmp_path / "mic1.plt").write_text(f"{51:14.5f} {21:14.5f} {1:14.5f}\n{80:14.5f} {1:14.5f} {1:14.5f}\n")
    import_coords(tmp_path, "mic1.plt", "--out", "ip")
    assert written(tmp_path, "ip", "mic1")[XY].values.tolist() == [[20.0, 30.0], [0.0, 1.0]]
    (tmp_path / "Mics" / "mic1.mrc").unlink()
    assert_user_error(import_coords(tmp_path, "mic1.plt", "--out", "ip2", code=2), "mic1.plt", "must be readable")


def test_unknown_format_names_the_flag(tmp_path: Path):
    make_project(tmp_path)
    (tmp_path / "mic1.txt").write_text("1 2\n")
    assert_user_error(import_coords(tmp_path, "mic1.txt", "--format", "emx", "--out", "bad", code=2), "--format")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("fmt, name, text, fragment", [
    ("topaz", "t.txt", "", "empty"),
    ("topaz", "t.txt", "name x y\nmic1 1 2\n", "header"),
    ("topaz", "t.txt", "image_name\tx_coord\ty_coord\tscore\nmic1\t1\n", "line 2"),
    ("topaz", "t.txt", "image_name\tx_coord\ty_coord\tscore\nmic1\tone\t2\t0.5\n", "not numbers"),
    ("topaz", "t.txt", "image_name\tx_coord\ty_coord\tscore\nmic9\t1\t2\t0.5\n", "mic9 is not in"),
    ("topaz", "t.txt", "image_name\tx_coord\ty_coord\tscore\n", "no picks"),
    ("cistem", "c.txt", "\n\n", "empty"),
    ("cistem", "c.txt", "mic1.mrc 10.0\n", "line 1"),
    ("cistem", "c.txt", "12 10.0 20.0\n", "asset id"),
    ("cistem", "c.txt", "other.mrc 10.0 20.0\n", "other.mrc is not in"),
    ("cbox", "mic1.cbox", "", "empty"),
    ("cbox", "mic1.cbox", "data_cryolo\n\nloop_\n_CoordinateX #1\n_CoordinateY #2\n1 2\n", "_Width"),
    ("cbox", "mic1.cbox", "just some text\n", "mic1.cbox"),
    ("cbox", "mic1.cbox", cbox([(1, 2, 8, 8, 0.5)]).replace("<NA> 8 8 <NA>", "12 8 8 8", 1), "3D picks"),
])
def test_hostile_coordinate_files(tmp_path: Path, fmt: str, name: str, text: str, fragment: str):
    make_project(tmp_path)
    (tmp_path / name).write_text(text)
    result = import_coords(tmp_path, name, "--format", fmt, "--out", "bad", code=2)
    assert_user_error(result, name, fragment)
    assert not (tmp_path / "bad" / "coords.star").exists()


# ----------------------------------------------------------------------------- real RELION-5 picks

def test_real_relion5_autopick_read_unchanged(shared_data: Path, tmp_path: Path, monkeypatch):
    project = shared_data / RELION5
    theirs = starfile.read(project / PICKS21)
    assert len(theirs) == 242
    cols = ["rlnCoordinateX", "rlnCoordinateY", FOM, "rlnClassNumber", "rlnAnglePsi"]
    # an index none of whose coordinate files exists is refused, naming the index
    index = starfile.read(project / "AutoPick/job008/autopick.star")
    starfile.write({"coordinate_files": index.iloc[1:]}, tmp_path / "autopick.star")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="autopick.star: none of its 9 coordinate files was found"):
        read_positions(tmp_path / "autopick.star")
    # autopick.star lists 10 micrographs, of which only 00021's picks are kept in shared/data: the other
    # nine are skipped, as RELION skips micrographs without a coordinate file
    monkeypatch.chdir(project)  # RELION's names are relative to the project folder
    pos = read_positions(project / "AutoPick/job008/autopick.star")
    assert pos.kind == "files" and (pos.table["rlnMicrographName"] == MIC21).all()
    assert len(pos.missing) == 9 and "20170629_00022_frameImage_autopick.star" in pos.missing[0]
    pd.testing.assert_frame_equal(pos.table[cols], theirs[cols], check_dtype=False)

    result = invoke_cli("import", "coords", str(project / PICKS21), "--micrographs",
                        str(project / "MotionCorr/job002/corrected_micrographs.star"), "--out", str(tmp_path / "ic"))
    assert "242 picks on 1 of 24 micrographs" in " ".join(result.output.split())
    ours = starfile.read(tmp_path / "ic" / "MotionCorr/job002/Movies/20170629_00021_frameImage_coords.star")
    pd.testing.assert_frame_equal(ours[cols], theirs[cols], check_dtype=False)
    assert np.array_equal(ours[XY].to_numpy(), theirs[XY].to_numpy())
    again = read_positions(tmp_path / "ic" / "coords.star").table
    assert np.array_equal(again[XY].to_numpy(), theirs[XY].to_numpy()) and (again["rlnMicrographName"] == MIC21).all()


@pytest.mark.relion
def test_relion_extracts_from_our_coordinates(tmp_path: Path):
    """RELION 3.1's extraction (relion_preprocess --extract) reads the coordinate STAR we write from a
    Topaz table: same particles, same coordinates and scores."""
    make_project(tmp_path)
    (tmp_path / "topaz.txt").write_text("image_name\tx_coord\ty_coord\tscore\nmic1\t30.25\t40\t-0.5\n"
                                        "mic1\t70\t39\t1.5\nmic3\t50\t50\t0.25\n")
    import_coords(tmp_path, "topaz.txt", "--out", "it")
    p = subprocess.run(["relion_preprocess", "--i", "im/micrographs.star", "--coord_dir", "it/", "--coord_suffix",
                        "_coords.star", "--part_dir", "Ex/", "--part_star", "Ex/particles.star", "--extract",
                        "--extract_size", "16"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    theirs = starfile.read(tmp_path / "Ex" / "particles.star")["particles"]
    assert theirs["rlnMicrographName"].tolist() == ["Mics/mic1.mrc", "Mics/mic1.mrc", "Mics/mic3.mrc"]
    assert theirs[XY].values.tolist() == [[30.25, 40.0], [70.0, 39.0], [50.0, 50.0]]
    assert theirs[FOM].tolist() == [-0.5, 1.5, 0.25]


# ------------------------------------------------------------------------------------- export coords

def test_export_coords_round_trips_through_import(tmp_path: Path):
    """`export coords` writes Topaz, cisTEM (Å), crYOLO CBOX and STAR; `import coords` reads each back to the same
    centres (Topaz: integer pixels, as topaz extract writes them) and scores."""
    make_project(tmp_path)
    picks = pd.DataFrame({"rlnMicrographName": ["Mics/mic1.mrc", "Mics/mic1.mrc", "Mics/mic3.mrc"],
                          "rlnCoordinateX": [30.25, 70.0, 50.5], "rlnCoordinateY": [40.0, 39.75, 50.0],
                          FOM: [2.5, 4.0, 3.25]})
    starfile.write({"particles": picks}, tmp_path / "coords.star")
    cases = {"topaz": ([], "tp/picks_topaz.txt", []), "cistem": (["--micrographs", "im/micrographs.star"],
                                                                  "cs/picks_cistem.txt", ["--format", "cistem"]),
             "cbox": (["--box", "32"], "--glob", "cb/CBOX/*.cbox"), "cryolo": ([], "--glob", "cr/STAR/*.star")}
    for fmt, (extra, *files) in cases.items():
        out = {"topaz": "tp", "cistem": "cs", "cbox": "cb", "cryolo": "cr"}[fmt]
        r = invoke_cli("export", "coords", "--in", "coords.star", "--format", fmt, *extra, "--out", out, cwd=tmp_path)
        assert "3 picks of 2 micrographs" in r.output
        args = [files[0], *files[1]] if fmt in ("topaz", "cistem") else list(files)
        import_coords(tmp_path, *args, "--out", f"back_{fmt}")
        for mic in ("mic1", "mic3"):
            back = written(tmp_path, f"back_{fmt}", mic)
            want = picks[picks["rlnMicrographName"] == f"Mics/{mic}.mrc"]
            tol = 0.5 if fmt == "topaz" else 1e-3
            assert np.allclose(back[XY].to_numpy(), want[XY].to_numpy(), atol=tol), (fmt, mic)
            if fmt != "cistem":  # cisTEM's text has no score
                assert np.allclose(back[FOM].to_numpy(), want[FOM].to_numpy()), (fmt, mic)
    assert (tmp_path / "cs" / "picks_cistem.txt").read_text().splitlines()[1] == f"Mics/mic1.mrc {30.25 * APIX:.3f} " \
                                                                                 f"{40.0 * APIX:.3f}"
    assert job_results(tmp_path / "cb")["n_picks"] == 3


def test_export_coords_bad_options(tmp_path: Path):
    make_project(tmp_path, n=1)
    starfile.write({"particles": pd.DataFrame({"rlnMicrographName": ["Mics/other.mrc"], "rlnCoordinateX": [1.0],
                                               "rlnCoordinateY": [2.0]})}, tmp_path / "coords.star")
    for args, fragment in ((["--format", "cbox"], "--box"), (["--format", "cistem"], "--micrographs"),
                           (["--format", "cistem", "--micrographs", "im/micrographs.star"], "other.mrc"),
                           (["--format", "cistem", "--scale", "2"], "--scale"), ([], "--format")):
        r = invoke_cli("export", "coords", "--in", "coords.star", *args, "--out", "bad", cwd=tmp_path, code=None)
        assert_user_error(r, fragment)
        assert not (tmp_path / "bad" / "job.json").exists()
