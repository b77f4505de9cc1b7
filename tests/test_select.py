"""``cryolens select micrographs|particles``: rule grammar, thresholds, class lists, CTF consensus, errors.

Expected selections come from pandas boolean algebra written independently here, from
RELION's ``relion_star_handler --select`` (marker ``relion``) and from a second STAR
file constructed with known defocus and angle disagreements.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryolens.io import read_micrographs, read_particles, write_micrographs, write_particles
from cryolens.select import SelectParams, angle_difference, parse_classes, parse_rule, select_rows

N = 60


def cli(*args: str, code: int = 0) -> str:
    from conftest import invoke_cli
    return invoke_cli(*args, code=code).output


@pytest.fixture
def mics(tmp_path: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A RELION 3.1 micrographs.star with CTF estimation columns (seeded random values)."""
    rng = np.random.default_rng(7)
    u = rng.uniform(8000, 30000, N)
    table = pd.DataFrame({
        "rlnMicrographName": [f"MotionCorr/job002/mics/mic_{i:04d}.mrc" for i in range(N)],
        "rlnOpticsGroup": 1,
        "rlnDefocusU": u,
        "rlnDefocusV": u - rng.uniform(0, 2000, N),
        "rlnDefocusAngle": rng.uniform(-180, 180, N),
        "rlnCtfMaxResolution": rng.uniform(2.5, 9, N),
        "rlnCtfFigureOfMerit": rng.uniform(0, 0.4, N),
    })
    table["rlnCtfAstigmatism"] = table.rlnDefocusU - table.rlnDefocusV
    table.loc[5, "rlnCtfMaxResolution"] = np.nan  # a failed fit never passes a rule
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnMicrographPixelSize": [1.06]})
    path = tmp_path / "ctf_a.star"
    write_micrographs(path, optics, table)
    return path, optics, table


def test_rule_grammar():
    assert parse_rule("rlnCtfMaxResolution < 5") == parse_rule("rlnCtfMaxResolution<5.0")
    r = parse_rule("  rlnDefocusU >= 1.5e4 ")
    assert (r.column, r.op, r.value, str(r)) == ("rlnDefocusU", ">=", 15000.0, "rlnDefocusU >= 15000")
    for op in ("<", "<=", ">", ">=", "==", "!="):
        assert parse_rule(f"rlnClassNumber {op} 2").op == op
    for bad in ("rlnDefocusU", "rlnDefocusU =< 3", "rlnDefocusU < five", "5 < rlnDefocusU", "rlnDefocusU < 3 4"):
        with pytest.raises(ValueError):
            parse_rule(bad)
    assert parse_classes("1, 3") == (1, 3) and parse_classes(None) == () and parse_classes([]) == ()
    with pytest.raises(ValueError):
        parse_classes("0,2")
    t = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0]})
    assert parse_rule("a != 2").mask(t).tolist() == [True, False, False, True]  # NaN passes nothing
    np.testing.assert_allclose(angle_difference(np.array([179.0, -90, 10]), np.array([2.0, 90, 100])), [3, 0, 90])


def test_select_micrographs_by_thresholds(tmp_path: Path, mics):
    path, optics, table = mics
    out = tmp_path / "sel"
    cli("select", "micrographs", "--in", str(path), "--where", "rlnCtfMaxResolution < 5",
        "--where", "rlnCtfFigureOfMerit >= 0.1", "--where", "rlnMicrographPixelSize == 1.06", "--out", str(out))
    res, fom = table.rlnCtfMaxResolution, table.rlnCtfFigureOfMerit
    expected = (res < 5) & (fom >= 0.1)
    assert 5 < expected.sum() < N - 5
    kept_optics, kept = read_micrographs(out / "micrographs.star")
    _, rejected = read_micrographs(out / "rejected.star")
    assert kept.rlnMicrographName.tolist() == table.rlnMicrographName[expected].tolist()
    assert rejected.rlnMicrographName.tolist() == table.rlnMicrographName[~expected].tolist()
    pd.testing.assert_frame_equal(kept_optics, optics, check_dtype=False)
    np.testing.assert_allclose(kept.rlnDefocusU, table.rlnDefocusU[expected])
    assert (out / "micrographs.star").read_text().count("# version 30001") == 2  # RELION 3.1
    r = json.loads((out / "job.json").read_text())
    assert r["outputs"].keys() == {"micrographs", "rejected"} and r["status"] == "finished"
    assert (r["results"]["n_in"], r["results"]["n_kept"], r["results"]["n_rejected"]) == (
        N, expected.sum(), N - expected.sum())
    crit = r["results"]["criteria"]
    assert crit["rlnCtfMaxResolution < 5"] == {"passed": int((res < 5).sum()), "failed": int(N - (res < 5).sum())}
    assert crit["rlnCtfFigureOfMerit >= 0.1"]["passed"] == int((fom >= 0.1).sum())
    assert crit["rlnMicrographPixelSize == 1.06"] == {"passed": N, "failed": 0}
    assert (out / "select.png").is_file() and (out / "report.html").is_file()


@pytest.mark.relion
def test_thresholds_agree_with_relion_star_handler(tmp_path: Path, mics):
    path, _, _ = mics
    cli("select", "micrographs", "--in", str(path), "--where", "rlnCtfMaxResolution >= 3.5",
        "--where", "rlnCtfMaxResolution <= 6", "--out", str(tmp_path / "ours"), "--quiet")
    subprocess.run(["relion_star_handler", "--i", str(path), "--o", str(tmp_path / "relion.star"),
                    "--select", "rlnCtfMaxResolution", "--minval", "3.5", "--maxval", "6"],
                   check=True, capture_output=True)
    _, theirs = read_micrographs(tmp_path / "relion.star")
    _, ours = read_micrographs(tmp_path / "ours" / "micrographs.star")
    assert ours.rlnMicrographName.tolist() == theirs.rlnMicrographName.tolist() and len(ours) > 10
    # RELION reads what we wrote
    subprocess.run(["relion_star_handler", "--i", str(tmp_path / "ours" / "micrographs.star"),
                    "--o", str(tmp_path / "again.star"), "--select", "rlnCtfMaxResolution", "--maxval", "99"],
                   check=True, capture_output=True)
    assert len(read_micrographs(tmp_path / "again.star")[1]) == len(ours)


def test_select_particles_by_class_and_rule_in_a_project(tmp_path: Path):
    rng = np.random.default_rng(3)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@Extract/job005/particles.mrcs" for i in range(40)],
        "rlnOpticsGroup": 1, "rlnClassNumber": np.arange(40) % 4 + 1,
        "rlnDefocusU": rng.uniform(10000, 20000, 40), "rlnDefocusV": rng.uniform(10000, 20000, 40),
        "rlnMaxValueProbDistribution": rng.uniform(0, 1, 40)})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [1.5], "rlnImageSize": [64], "rlnImageDimensionality": [2]})
    write_particles(tmp_path / "in.star", optics, particles)
    cli("project", "init", str(tmp_path / "P"))
    cli("select", "particles", "--in", str(tmp_path / "in.star"), "--class", "1,3",
        "--where", "rlnMaxValueProbDistribution > 0.3", "--project", str(tmp_path / "P"))
    expected = particles.rlnClassNumber.isin([1, 3]) & (particles.rlnMaxValueProbDistribution > 0.3)
    _, kept = read_particles(tmp_path / "P/Select/job001/particles.star")
    _, rejected = read_particles(tmp_path / "P/Select/job001/rejected.star")
    assert kept.rlnImageName.tolist() == particles.rlnImageName[expected].tolist()
    assert len(kept) + len(rejected) == 40 and set(kept.rlnClassNumber) <= {1, 3}
    from cryolens.project.db import open_project
    (job,) = open_project(tmp_path / "P").jobs()
    assert (job.stage, job.status, job.results["n_kept"]) == ("select_particles", "finished", int(expected.sum()))
    assert job.results["criteria"]["rlnClassNumber in {1, 3}"] == {"passed": 20, "failed": 20}


def test_ctf_consensus_with_a_constructed_second_estimate(tmp_path: Path, mics):
    path, optics, a = mics
    b = a.copy()
    # another CTF job wrote the same micrographs under its own folder: paired by file name
    b["rlnMicrographName"] = [os.path.basename(n) for n in a.rlnMicrographName]
    scale = np.ones(N)
    scale[0:10] = 1.03  # mean defocus 3 % off: agrees at 5 %
    scale[10:20] = 1.12  # 12 % off: disagrees
    b["rlnDefocusU"], b["rlnDefocusV"] = a.rlnDefocusU * scale, a.rlnDefocusV * scale
    mean = (a.rlnDefocusU + a.rlnDefocusV).to_numpy() / 2
    b.loc[20:24, ["rlnDefocusU", "rlnDefocusV"]] = np.c_[mean[20:25] + 1000, mean[20:25] - 1000]
    b.loc[20:24, "rlnDefocusAngle"] = a.rlnDefocusAngle[20:25] + 40  # astigmatic in B; A may not be
    b.loc[25:29, ["rlnDefocusU", "rlnDefocusV"]] = np.c_[mean[25:30] + 2.5, mean[25:30] - 2.5]
    b.loc[25:29, "rlnDefocusAngle"] = a.rlnDefocusAngle[25:30] + 60  # B barely astigmatic: angle not compared
    b.loc[30, "rlnDefocusAngle"] = a.rlnDefocusAngle[30] + 180  # the same axis
    b = b.drop(index=[40, 41])  # not estimated by the second job
    write_micrographs(tmp_path / "ctf_b.star", optics, b)

    cli("select", "micrographs", "--in", str(path), "--consensus", str(tmp_path / "ctf_b.star"),
        "--tolerance-defocus", "0.05", "--tolerance-angle", "15", "--astigmatism-threshold", "300",
        "--out", str(tmp_path / "agreed"), "--quiet")
    # independent expectation
    mean_a = (a.rlnDefocusU + a.rlnDefocusV) / 2
    bb = b.set_index(b.index)
    mean_b = ((bb.rlnDefocusU + bb.rlnDefocusV) / 2).reindex(a.index)
    rel = (mean_a - mean_b).abs() / ((mean_a + mean_b) / 2)
    astig = np.minimum((a.rlnDefocusU - a.rlnDefocusV).abs(), (bb.rlnDefocusU - bb.rlnDefocusV).abs().reindex(a.index))
    d = ((a.rlnDefocusAngle - bb.rlnDefocusAngle.reindex(a.index)).abs() % 180)
    d = np.minimum(d, 180 - d)
    expected = (rel <= 0.05) & ((astig <= 300) | (d <= 15)) & mean_b.notna()
    assert expected[0:10].all() and not expected[10:20].any() and not expected[[40, 41]].any()
    assert expected[25:30].all() and expected[30]
    assert (~expected[20:25]).sum() == (np.minimum((a.rlnDefocusU - a.rlnDefocusV)[20:25], 2000) > 300).sum()
    _, kept = read_micrographs(tmp_path / "agreed" / "micrographs.star")
    assert kept.rlnMicrographName.tolist() == a.rlnMicrographName[expected].tolist()
    crit = json.loads((tmp_path / "agreed" / "job.json").read_text())["results"]["criteria"]
    assert crit["present in ctf_b.star"] == {"passed": N - 2, "failed": 2}
    assert crit["defocus within 0.05 of the mean vs ctf_b.star"]["failed"] == 12

    # the same through the stage function, angles not compared: the 20:25 block comes back
    sel = select_rows(a, SelectParams(tolerance_defocus=0.05), other=b)
    assert sel.keep.tolist() == ((rel <= 0.05) & mean_b.notna()).tolist()


def test_errors_exit_2_with_one_sentence(tmp_path: Path, mics):
    path, _, _ = mics
    out = cli("select", "micrographs", "--in", str(path), "--where", "rlnCtfIceRingDensity < 1",
              "--out", str(tmp_path / "x"), code=2)
    assert str(path) in out and "rlnCtfIceRingDensity is not in data_micrographs" in out
    assert "available: rlnMicrographName" in out and "rlnCtfFigureOfMerit" in out and "Traceback" not in out
    assert not (tmp_path / "x" / "micrographs.star").exists()
    out = cli("select", "micrographs", "--in", str(path), "--where", "rlnDefocusU => 3", "--out", str(tmp_path / "y"),
              code=2)
    assert "COLUMN OP NUMBER" in out
    out = cli("select", "micrographs", "--in", str(path), "--class", "1", "--out", str(tmp_path / "z"), code=2)
    assert "rlnClassNumber is not in data_micrographs" in out
    no_angle = tmp_path / "no_angle.star"
    o, t = read_micrographs(path)
    write_micrographs(no_angle, o, t.drop(columns=["rlnDefocusAngle"]))
    out = cli("select", "micrographs", "--in", str(path), "--consensus", str(no_angle), "--tolerance-angle", "10",
              "--out", str(tmp_path / "w"), code=2)
    assert str(no_angle) in out and "rlnDefocusAngle" in out
    out = cli("select", "micrographs", "--in", str(tmp_path / "missing.star"), "--out", str(tmp_path / "v"), code=2)
    assert "file not found" in out
