"""The shared input folder of the hostile-input tests (tests/test_hostile.py): valid inputs, hostile ones.

:func:`build_world` fills a folder with small valid inputs (``sp``: 40 simulated particles at
box 32; ``sm``: two 256 x 256 micrographs with CTF and coordinates; ``smv``: one 4-frame
movie with gain and defects; ``rec``: half maps; ``proj``: a project with one job;
``unrelated``: files no command should touch) and the hostile files made from them
(``bad``: truncated, NaN, empty, garbage, mismatched, impossible). :func:`snapshot` tells
whether any file there changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from conftest import invoke_cli

from cryolens.io import read_mrc, read_star, write_mrc, write_star

__all__ = ["build_world", "snapshot", "PARTICLE_STAR", "POSES", "MAPS", "MICS", "MOVIES", "COORDS"]

#: Hostile inputs by kind: file (relative to the world folder) -> what the one-sentence error must name.
PARTICLE_STAR = {  # STAR file -> what the sentence names
    "bad/empty.star": "empty.star", "bad/garbage.star": "garbage.star", "bad/text.star": "text.star",
    "bad/cut.star": "cut.star", "bad/gone.star": "gone.star", "bad/p_trunc.star": "trunc.mrcs",
    "bad/p_nan_image.star": "nan.mrcs", "bad/p_missing_stack.star": "gone.mrcs", "bad/p_index.star": "p_index.star",
    "bad/p_zero_rows.star": "p_zero_rows.star", "bad/p_no_images.star": "rlnImageName",
    "bad/p_optics_group.star": "p_optics_group.star", "bad/p_apix_header.star": "apix2.mrcs",
    "bad/p_apix_star.star": "rlnImagePixelSize", "bad/p_apix_zero.star": "p_apix_zero.star",
    "bad/p_box.star": "p_box.star",
}
POSES = {"bad/p_no_angles.star": "rlnAngleRot", "bad/p_nan_angle.star": "rlnAngleTilt",
         "bad/p_text_angle.star": "rlnAngleRot", "bad/p_nan_defocus.star": "rlnDefocusU",
         "bad/p_voltage_zero.star": "p_voltage_zero.star"}
MAPS = {"bad/trunc.mrc": "trunc.mrc", "bad/header_only.mrc": "header_only.mrc", "bad/empty.mrc": "empty.mrc",
        "bad/garbage.mrc": "garbage.mrc", "bad/nan.mrc": "nan.mrc", "bad/inf.mrc": "inf.mrc",
        "bad/gone.mrc": "gone.mrc", "bad/image2d.mrc": "image2d.mrc", "bad/not_a_folder": "not_a_folder"}
MICS = {"bad/empty.star": "empty.star", "bad/garbage.star": "garbage.star", "bad/gone.star": "gone.star",
        "bad/m_trunc.star": "mic_trunc.mrc", "bad/m_nan.star": "mic_nan.mrc", "bad/m_missing.star": "gone.mrc",
        "bad/m_zero_rows.star": "m_zero_rows.star", "bad/m_apix_star.star": "rlnMicrographPixelSize",
        "bad/m_apix_zero.star": "m_apix_zero.star", "bad/m_small.star": "small",
        "bad/m_voltage_neg.star": "m_voltage_neg.star", "bad/m_apix2.star": "mic_apix2.mrc"}
MOVIES = {"bad/empty.star": "empty.star", "bad/garbage.star": "garbage.star", "bad/p_trunc.star": "p_trunc.star",
          "bad/mv_trunc.star": "movie_trunc.mrcs", "bad/mv_nan.star": "movie_nan.mrcs",
          "bad/mv_missing.star": "gone.mrcs", "bad/mv_zero_rows.star": "mv_zero_rows.star",
          "bad/mv_gain_trunc.star": "trunc.mrc", "bad/mv_gain_missing.star": "gone.mrc",
          "bad/mv_apix_zero.star": "mv_apix_zero.star"}
COORDS = {"bad/gone.star": "gone.star", "bad/garbage.star": "garbage.star", "bad/c_missing.star": "gone.star",
          "bad/c_garbage.star": "garbage.star", "bad/c_zero_rows.star": "c_zero_rows.star",
          "bad/c_other_mics.star": "c_other_mics.star", "bad/c_nan.star": "picks_nan.star"}


def _edit_star(src: Path, dst: Path, block: str, edit) -> None:
    """Copy STAR ``src`` to ``dst`` with ``edit(table)`` applied to data_``block`` (returns the new table)."""
    blocks = read_star(src)
    blocks[block] = edit(blocks[block].copy())
    write_star(dst, blocks)


def _set(column: str, value):
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df[column] = value
        return df
    return edit


def _build_bad(w: Path) -> None:
    """Hostile files in ``w/bad`` made from the valid inputs."""
    bad = w / "bad"
    bad.mkdir()
    truth, apix = read_mrc(w / "sp" / "truth_map.mrc")
    raw = (w / "sp" / "truth_map.mrc").read_bytes()
    (bad / "trunc.mrc").write_bytes(raw[: len(raw) // 2])
    (bad / "header_only.mrc").write_bytes(raw[:1024])
    (bad / "empty.mrc").write_bytes(b"")
    (bad / "empty.star").write_bytes(b"")
    (bad / "empty.toml").write_bytes(b"")
    (bad / "garbage.mrc").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "garbage.star").write_bytes(np.random.default_rng(1).bytes(3000))
    (bad / "text.star").write_text("this is not a STAR file\njust words\n")
    (bad / "garbage.txt").write_text("one two three\nfour five\n")
    star_text = (w / "sp" / "particles.star").read_text()
    (bad / "cut.star").write_text(star_text[: len(star_text) // 2 + 7])
    nan = truth.copy()
    nan[10, 10, 10] = np.nan
    write_mrc(bad / "nan.mrc", nan, apix)
    inf = truth.copy()
    inf[3, 4, 5] = np.inf
    write_mrc(bad / "inf.mrc", inf, apix)
    write_mrc(bad / "zeros.mrc", np.zeros_like(truth), apix)
    write_mrc(bad / "twos.mrc", np.full_like(truth, 2.0), apix)  # a "mask" outside 0..1
    write_mrc(bad / "small.mrc", truth[8:24, 8:24, 8:24], apix)
    write_mrc(bad / "apix2.mrc", truth, 2.0)
    write_mrc(bad / "apix0.mrc", truth, 0.0)
    write_mrc(bad / "image2d.mrc", truth[16], apix)
    write_mrc(bad / "rect.mrc", truth[:, :, :16].copy(), apix)
    write_mrc(bad / "ps_rect.mrc", np.ones((64, 96), np.float32), 1.0)

    # particles
    sp = w / "sp" / "particles.star"
    stack = (w / "sp" / "particles.mrcs").read_bytes()
    (bad / "trunc.mrcs").write_bytes(stack[: len(stack) * 2 // 3])
    images, _ = read_mrc(w / "sp" / "particles.mrcs")
    nan_images = images.copy()
    nan_images[5, 3, 3] = np.nan
    write_mrc(bad / "nan.mrcs", nan_images, apix, is_stack=True)
    write_mrc(bad / "apix2.mrcs", images, 2.0, is_stack=True)
    n = len(images)
    names = lambda stack: [f"{i + 1:06d}@{stack}" for i in range(n)]  # noqa: E731
    _edit_star(sp, bad / "p_trunc.star", "particles", _set("rlnImageName", names("bad/trunc.mrcs")))
    _edit_star(sp, bad / "p_nan_image.star", "particles", _set("rlnImageName", names("bad/nan.mrcs")))
    _edit_star(sp, bad / "p_apix_header.star", "particles", _set("rlnImageName", names("bad/apix2.mrcs")))
    _edit_star(sp, bad / "p_missing_stack.star", "particles", _set("rlnImageName", names("bad/gone.mrcs")))
    _edit_star(sp, bad / "p_index.star", "particles",
               _set("rlnImageName", [f"{i + 900:06d}@sp/particles.mrcs" for i in range(n)]))
    _edit_star(sp, bad / "p_zero_rows.star", "particles", lambda df: df.iloc[:0])
    _edit_star(sp, bad / "p_no_angles.star", "particles", lambda df: df.drop(columns=["rlnAngleRot"]))
    _edit_star(sp, bad / "p_no_images.star", "particles", lambda df: df.drop(columns=["rlnImageName"]))
    _edit_star(sp, bad / "p_nan_angle.star", "particles", _set("rlnAngleTilt", np.nan))
    _edit_star(sp, bad / "p_text_angle.star", "particles", _set("rlnAngleRot", "abc"))
    _edit_star(sp, bad / "p_nan_defocus.star", "particles", _set("rlnDefocusU", np.nan))
    _edit_star(sp, bad / "p_optics_group.star", "particles", _set("rlnOpticsGroup", 7))
    _edit_star(sp, bad / "p_apix_star.star", "optics", _set("rlnImagePixelSize", 2.0))
    _edit_star(sp, bad / "p_apix_zero.star", "optics", _set("rlnImagePixelSize", 0.0))
    _edit_star(sp, bad / "p_box.star", "optics", _set("rlnImageSize", 64))
    _edit_star(sp, bad / "p_voltage_zero.star", "optics", _set("rlnVoltage", 0.0))
    _edit_star(sp, bad / "p_no_ctf.star", "particles", lambda df: df.drop(columns=["rlnDefocusU", "rlnDefocusV"]))
    _build_cs(bad, n)

    # micrographs
    sm = w / "sm" / "micrographs.star"
    mic = w / "sm" / "micrographs" / "mic_0001.mrc"
    mic_raw = mic.read_bytes()
    (bad / "mic_trunc.mrc").write_bytes(mic_raw[: len(mic_raw) // 2])
    m, mapix = read_mrc(mic)
    m_nan = m.copy()
    m_nan[100:110, 100:110] = np.nan
    write_mrc(bad / "mic_nan.mrc", m_nan, mapix)
    write_mrc(bad / "mic_zero.mrc", np.zeros_like(m), mapix)
    write_mrc(bad / "mic_apix2.mrc", m, 2.0)
    write_mrc(bad / "mic_small.mrc", m[:40, :40].copy(), mapix)
    for tag in ("trunc", "nan", "zero", "apix2", "small"):
        _edit_star(sm, bad / f"m_{tag}.star", "micrographs", _set("rlnMicrographName", f"bad/mic_{tag}.mrc"))
    _edit_star(sm, bad / "m_missing.star", "micrographs", _set("rlnMicrographName", "bad/gone.mrc"))
    _edit_star(sm, bad / "m_zero_rows.star", "micrographs", lambda df: df.iloc[:0])
    _edit_star(sm, bad / "m_nan_defocus.star", "micrographs", _set("rlnDefocusU", np.nan))
    _edit_star(sm, bad / "m_no_ctf.star", "micrographs",
               lambda df: df.drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]))
    _edit_star(sm, bad / "m_apix_star.star", "optics", _set("rlnMicrographPixelSize", 2.0))
    _edit_star(sm, bad / "m_apix_zero.star", "optics", _set("rlnMicrographPixelSize", 0.0))
    _edit_star(sm, bad / "m_voltage_neg.star", "optics", _set("rlnVoltage", -300.0))

    # coordinates
    coords = w / "sm" / "coords.star"
    _edit_star(coords, bad / "c_missing.star", "coordinate_files", _set("rlnMicrographCoordinates", "bad/gone.star"))
    _edit_star(coords, bad / "c_garbage.star", "coordinate_files",
               _set("rlnMicrographCoordinates", "bad/garbage.star"))
    _edit_star(coords, bad / "c_zero_rows.star", "coordinate_files", lambda df: df.iloc[:0])
    _edit_star(coords, bad / "c_other_mics.star", "coordinate_files", _set("rlnMicrographName", "nowhere/x.mrc"))
    truth_coords = w / "sm" / "micrographs" / "mic_0001_truth.star"
    _edit_star(truth_coords, bad / "picks_nan.star", "", _set("rlnCoordinateX", np.nan))
    _edit_star(truth_coords, bad / "picks_text.star", "", _set("rlnCoordinateX", "left"))
    for tag in ("trunc", "nan", "apix2", "small", "missing"):  # the positions of mic_0001 on a hostile micrograph
        name = "bad/gone.mrc" if tag == "missing" else f"bad/mic_{tag}.mrc"
        _edit_star(coords, bad / f"c_on_{tag}.star", "coordinate_files",
                   lambda df, name=name: df.iloc[:1].assign(rlnMicrographName=name))
    _edit_star(coords, bad / "c_nan.star", "coordinate_files", _set("rlnMicrographCoordinates", "bad/picks_nan.star"))
    (bad / "picks.box").write_text("10 20 32\nleft right 32 32\n")

    # movies
    smv = w / "smv" / "movies.star"
    movie = w / "smv" / "Movies" / "movie_0001.mrcs"
    movie_raw = movie.read_bytes()
    (bad / "movie_trunc.mrcs").write_bytes(movie_raw[: len(movie_raw) * 3 // 4])
    frames, _ = read_mrc(movie)
    write_mrc(bad / "movie_nan.mrcs", np.where(np.arange(frames.size).reshape(frames.shape) == 77, np.nan, frames),
              4.0, is_stack=True)
    (bad / "movie.tiff").write_bytes(b"II*\x00" + np.random.default_rng(2).bytes(300))
    for tag in ("trunc", "nan"):
        _edit_star(smv, bad / f"mv_{tag}.star", "movies", _set("rlnMicrographMovieName", f"bad/movie_{tag}.mrcs"))
    _edit_star(smv, bad / "mv_missing.star", "movies", _set("rlnMicrographMovieName", "bad/gone.mrcs"))
    _edit_star(smv, bad / "mv_zero_rows.star", "movies", lambda df: df.iloc[:0])
    _edit_star(smv, bad / "mv_gain_trunc.star", "movies", _set("rlnMicrographGainName", "bad/trunc.mrc"))
    _edit_star(smv, bad / "mv_gain_missing.star", "movies", _set("rlnMicrographGainName", "bad/gone.mrc"))
    _edit_star(smv, bad / "mv_apix_zero.star", "optics", _set("rlnMicrographOriginalPixelSize", 0.0))
    gain, _ = read_mrc(w / "smv" / "gain.mrc")
    write_mrc(bad / "gain_shape.mrc", gain[:64, :96].copy(), 4.0)
    write_mrc(bad / "gain_nan.mrc", np.where(gain > 0, np.nan, gain), 4.0)

    # workflows and profiles
    (bad / "broken.toml").write_text("[steps.a\nstage = \n")
    (bad / "wf_stage.toml").write_text('[workflow]\nproject = "wfp"\n[steps.a]\nstage = "dance"\nparams = {}\n')
    (bad / "wf_param.toml").write_text('[workflow]\nproject = "wfp"\n[steps.a]\nstage = "reconstruct"\n'
                                       'params = { in = "../sp/particles.star", batch_size = -3 }\n')
    (bad / "wf_ref.toml").write_text('[workflow]\nproject = "wfp"\n[steps.a]\nstage = "reconstruct"\n'
                                     'params = { in = "{nope.particles}" }\n')
    (bad / "wf_flag.toml").write_text('[workflow]\nproject = "wfp"\n[steps.a]\nstage = "reconstruct"\n'
                                      'params = { in = "../sp/particles.star", frobnicate = 3 }\n')
    (bad / "prof").mkdir()
    (bad / "prof" / "profiles.toml").write_text("[profiles.x\nscheduler = \n")
    (bad / "prof2").mkdir()
    (bad / "prof2" / "profiles.toml").write_text('[profiles.cpu]\nscheduler = "toaster"\ncores = -2\n')
    (bad / "not_a_folder").write_text("a file\n")
    (bad / "no_profiles.toml").write_text("")  # $CRYOLENS_PROFILES of the cases: no user profiles
    (bad / "wf_ok.toml").write_text('[workflow]\nproject = "wfp"\n[steps.a]\nstage = "reconstruct"\n'
                                    'params = { in = "../sp/particles.star" }\n')


def _build_cs(bad: Path, n: int) -> None:
    """cryoSPARC .cs files for ``import particles`` (blob/path ``sp/particles.mrcs``: found above ``bad``)."""
    from cryosparc.dataset import Dataset

    def cs(name: str, **edits) -> None:
        ds = Dataset.allocate(n, [("blob/path", "O"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                                  ("blob/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
                                  ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
                                  ("ctf/df_angle_rad", "<f4")])
        ds["blob/path"] = np.array(["sp/particles.mrcs"] * n, dtype=object)
        ds["blob/idx"], ds["blob/shape"], ds["blob/psize_A"] = np.arange(n), 32, 4.0
        ds["ctf/accel_kv"], ds["ctf/cs_mm"], ds["ctf/amp_contrast"] = 300.0, 2.7, 0.1
        ds["ctf/df1_A"], ds["ctf/df2_A"], ds["ctf/df_angle_rad"] = 15000.0, 14000.0, 0.3
        for field, value in edits.items():
            ds[field.replace("__", "/")] = value
        if name == "cs_no_ctf.cs":
            ds = ds.filter_fields(lambda f: not f.startswith("ctf/"))
        if name == "cs_zero_rows.cs":
            ds = ds.mask(np.zeros(n, bool))
        ds.save(bad / name)

    cs("cs_ok.cs")
    cs("cs_no_ctf.cs")
    cs("cs_zero_rows.cs")
    cs("cs_missing_stack.cs", blob__path=np.array(["bad/gone.mrcs"] * n, dtype=object))
    cs("cs_nan.cs", ctf__df1_A=np.where(np.arange(n) == 3, np.nan, 15000.0))
    cs("cs_index.cs", blob__idx=np.arange(n) + 900)
    cs("cs_rect.cs", blob__shape=np.array([[32, 40]] * n))
    cs("cs_apix.cs", blob__psize_A=2.0)
    cs("cs_voltage.cs", ctf__accel_kv=0.0)
    raw = (bad / "cs_ok.cs").read_bytes()
    (bad / "cs_trunc.cs").write_bytes(raw[: len(raw) // 2])
    (bad / "cs_text.cs").write_text("this is not a cryoSPARC file\n")
    (bad / "cs_empty.cs").write_bytes(b"")
    other = Dataset.allocate(n, [("ctf/bfactor", "<f4")])  # new uids: another job's passthrough
    other.save(bad / "cs_other_uids.cs")


def build_world(w: Path) -> Path:
    """Fill folder ``w`` with the valid inputs (sp, sm, smv, rec, proj), the hostile ones (bad) and an unrelated
    folder; returns ``w``."""
    run = lambda *a: invoke_cli(*a, "--quiet", cwd=w)  # noqa: E731
    run("simulate", "particles", "--out", "sp", "--n", "40", "--box", "32", "--pixel-size", "4", "--seed", "1")
    run("simulate", "micrographs", "--out", "sm", "--n-micrographs", "2", "--size", "256", "256", "--pixel-size", "4",
        "--box", "32", "--particles-per-micrograph", "8", "--seed", "1")
    run("simulate", "movies", "--out", "smv", "--n-movies", "1", "--size", "128", "128", "--pixel-size", "4",
        "--box", "32", "--particles-per-movie", "4", "--frames", "4", "--seed", "1")
    run("reconstruct", "--in", "sp/particles.star", "--out", "rec")
    invoke_cli("project", "init", "proj", cwd=w)
    run("import", "map", "--in", "sp/truth_map.mrc", "--project", "proj")
    (w / "unrelated").mkdir()
    (w / "unrelated" / "notes.txt").write_text("precious\n")
    write_mrc(w / "unrelated" / "map.mrc", np.ones((8, 8, 8), np.float32), 1.0)
    _build_bad(w)
    return w


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """``{relative path: (size, mtime in ns, inode)}`` of every file under ``folder``: any write, truncation,
    replacement (a rename gives a new inode) or new file shows (cheaper than hashing 400 times)."""
    return {str(p.relative_to(folder)): (st.st_size, st.st_mtime_ns, st.st_ino)
            for p in sorted(folder.rglob("*")) if p.is_file() and (st := p.stat())}
