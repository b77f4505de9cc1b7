"""End-to-end tests of ``cryolens pick`` and ``cryolens pick-consensus`` (issue [9·pick] items 1, 2 and 4):
accuracy against the simulator's truth, the output files, re-selection without picking, preview,
consensus, extraction of the picks, resuming, user errors, and RELION 3.1 reading our autopick files.

Runs the CLI in-process on two small simulated micrographs (512², 1.75 Å/px, 12 particles each, true
CTF columns from the simulator).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from conftest import assert_user_error, invoke_cli, job_results as results, unfinish
from helpers import assert_images_correlated

from cryolens.jobs.pick_outputs import relion_coord_name
from cryolens.picking import match_picks

APIX = 1.75
DIAMETER = 150.0  # Å: the matched filter's best size for the simulator's phantom at this pixel size
RADIUS_PX = 0.2 * DIAMETER / APIX  # the match distance
F1_FLOOR = 0.6  # measured 0.80 on these two micrographs (seed 3)
PICK = ("--diameter", str(DIAMETER), "--device", "cpu", "--quiet")


def pick(work: Path, out: str, *args: str, mics: str = "sim/micrographs.star", code: int | None = 0):
    return invoke_cli("pick", "--in", mics, "--out", out, *PICK, *args, cwd=work, code=code)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two 512² micrographs with 12 particles each (true CTF), and their picks ``pk``."""
    d = tmp_path_factory.mktemp("pick")
    invoke_cli("simulate", "micrographs", "--n-micrographs", "2", "--size", "512", "512", "--particles-per-micrograph",
               "12", "--contaminants", "0", "--no-carbon", "--aggregates", "0", "--seed", "3", "--out", "sim", "--quiet",
               "--device", "cpu", cwd=d)
    pick(d, "pk")
    return d


def truth(work: Path) -> pd.DataFrame:
    return starfile.read(work / "sim" / "particles_truth.star")["particles"]


def coords(folder: Path) -> pd.DataFrame:
    return starfile.read(folder / "coords.star")


def accuracy(picks: pd.DataFrame, t: pd.DataFrame) -> dict:
    tp = fp = fn = 0
    for mic in t["rlnMicrographName"].unique():
        m = match_picks(picks.loc[picks["rlnMicrographName"] == mic, ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(),
                        t.loc[t["rlnMicrographName"] == mic, ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), RADIUS_PX)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return dict(tp=tp, fp=fp, fn=fn, precision=prec, recall=rec, f1=2 * prec * rec / max(prec + rec, 1e-12))


def test_picks_match_truth_and_outputs(work: Path):
    out = work / "pk"
    c = coords(out)
    assert list(c.columns) == ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
    acc = accuracy(c, truth(work))
    print(f"pick vs truth (2 x 512², 24 particles, match within {RADIUS_PX:.1f} px): {acc}")
    assert acc["f1"] >= F1_FLOOR, acc
    r = results(out)
    assert r["n_picks"] == len(c) and r["n_micrographs"] == 2 and r["ctf_aware"] and r["method"] == "matched"
    assert r["threshold"] == 3.0 and r["floor"] <= r["threshold"]
    assert r["micrographs_per_blob_radius"] == {"0.33": 2}  # the phantom is filled: the compact blob on both
    every = starfile.read(out / "picks_all.star")
    assert len(every["micrographs"]) == 2 and len(every["picks"]) == r["n_candidates"] >= len(c)
    chosen = every["picks"][every["picks"]["cryolensSelected"] == 1]
    assert np.array_equal(chosen[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(),
                          c[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy())
    assert (c["rlnAutopickFigureOfMerit"] > r["threshold"]).all()
    for f in ("scores.png", "picks_per_micrograph.png", "report.html", "autopick.star", "Overlays/mic_0001.png",
              "Overlays/mic_0002.png", "coords_suffix_autopick.star"):
        assert (out / f).is_file(), f
    index = starfile.read(out / "autopick.star")
    assert len(index) == 2
    for mic, f in zip(index["rlnMicrographName"], index["rlnMicrographCoordinates"]):
        per = starfile.read(work / f)
        assert len(per) == int((c["rlnMicrographName"] == mic).sum())
    assert 'src="Overlays/mic_0001.png"' in (out / "report.html").read_text()


def test_job_picks_what_the_stage_picks(work: Path):
    """The job hands the stage the micrograph, its pixel size and its CTF (at the centre): same picks."""
    from cryolens.extract import MicrographCTF
    from cryolens.io import merge_optics, read_micrographs, read_mrc
    from cryolens.picking import PickParams, pick_micrograph

    optics, mics = read_micrographs(work / "sim" / "micrographs.star")
    row = merge_optics(optics, mics).iloc[1].to_dict()
    img, _ = read_mrc(work / row["rlnMicrographName"])
    ctf = MicrographCTF.from_row(row).ctf_params(torch.tensor([[256.0, 256.0]], dtype=torch.float64),
                                                 shape=img.shape)
    picks = pick_micrograph(torch.from_numpy(np.array(img)), pixel_size=APIX, params=PickParams(diameter=DIAMETER),
                            ctf=ctf)
    c = coords(work / "pk")
    ours = c.loc[c["rlnMicrographName"] == row["rlnMicrographName"], ["rlnCoordinateX", "rlnCoordinateY"]]
    assert np.allclose(ours.to_numpy(), picks.xy().numpy(), atol=1e-3)


def test_templates_and_map(work: Path):
    """Class averages (here: three projections of the true map, white on black) or the map itself as templates."""
    with mrcfile.open(work / "sim" / "truth_map.mrc") as m:
        v = m.data.astype(np.float32)
    with mrcfile.new(work / "tpl.mrcs", overwrite=True) as m:
        m.set_data(np.stack([v.sum(0), v.sum(1), v.sum(2)]).astype(np.float32))
        m.voxel_size = APIX
    for out, args in (("pk_tpl", ("--templates", "tpl.mrcs")), ("pk_map", ("--map", "sim/truth_map.mrc"))):
        pick(work, out, *args)
        acc = accuracy(coords(work / out), truth(work))
        print(f"{out} vs truth: {acc}")  # measured F1 0.86 (templates and map)
        assert acc["f1"] >= F1_FLOOR, (out, acc)
        assert results(work / out)["method"] == "template"
        assert json.loads((work / out / "job.json").read_text())["inputs"][args[0][2:]] == args[1]
    r = pick(work, "pk_both", "--templates", "tpl.mrcs", "--map", "sim/truth_map.mrc", code=None)
    assert_user_error(r, "tpl.mrcs", "not both")
    r = pick(work, "pk_gone", "--templates", "gone.mrcs", code=None)
    assert_user_error(r, "gone.mrcs")
    assert not (work / "pk_both").exists() and not (work / "pk_gone").exists()


def test_relion_coord_name():
    assert relion_coord_name("MotionCorr/job002/Movies/a.mrc") == "Movies/a_autopick.star"
    assert relion_coord_name("sim/micrographs/m.mrc") == "sim/micrographs/m_autopick.star"
    assert relion_coord_name("m.tiff", "_x.star") == "m_x.star"


def test_rethreshold_reads_stored_scores(work: Path):
    every = starfile.read(work / "pk" / "picks_all.star")["picks"]
    hidden = work / "sim" / "micrographs_hidden"
    (work / "sim" / "micrographs").rename(hidden)  # no micrograph can be read: only the stored scores
    try:
        r = invoke_cli("pick", "--rethreshold", "pk", "--threshold", "4.5", "--out", "pk_t45", cwd=work)
        invoke_cli("pick", "--rethreshold", "pk", "--max-per-micrograph", "3", "--out", "pk_max3", cwd=work)
        low = invoke_cli("pick", "--rethreshold", "pk", "--threshold", "0.5", "--out", "pk_low", cwd=work, code=None)
    finally:
        hidden.rename(work / "sim" / "micrographs")
    n45 = int((every["rlnAutopickFigureOfMerit"] > 4.5).sum())
    assert len(coords(work / "pk_t45")) == n45 < results(work / "pk")["n_picks"]
    assert f"{n45} picks" in r.output
    assert len(coords(work / "pk_max3")) == 6
    assert int(starfile.read(work / "pk_max3" / "picks_all.star")["picks"]["cryolensSelected"].sum()) == 6
    assert results(work / "pk_max3")["threshold"] == 3.0
    assert (work / "pk_t45" / "Overlays" / "mic_0001.png").is_file()
    assert_user_error(low, "picks_all.star", "--threshold 0.5")
    assert not (work / "pk_low").exists()
    # a re-selected job can itself be re-selected
    invoke_cli("pick", "--rethreshold", "pk_t45", "--threshold", "5", "--out", "pk_t5", cwd=work)
    assert len(coords(work / "pk_t5")) == int((every["rlnAutopickFigureOfMerit"] > 5).sum())


def test_preview_writes_png(work: Path):
    r = invoke_cli("pick", "--in", "sim/micrographs.star", "--preview", "mic_0001.mrc", "--out", "prev", *PICK,
                   cwd=work)
    png = work / "prev" / "preview_mic_0001.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    n = int((coords(work / "pk")["rlnMicrographName"] == "sim/micrographs/mic_0001.mrc").sum())
    assert f"{n} picks" in r.output  # the same picks as the job (same CTF and pixel size)
    assert not (work / "prev" / "job.json").exists()
    r = invoke_cli("pick", "--preview", "sim/micrographs/mic_0002.mrc", "--out", "prev", *PICK, cwd=work)  # a file
    assert (work / "prev" / "preview_mic_0002.png").is_file() and "picks" in r.output


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "micrographs" / "fei-extended.mrc"


@pytest.mark.skipif(not REAL.is_file(), reason=f"shared data not found: {REAL}")
def test_preview_of_a_real_micrograph(tmp_path: Path):
    """A real 3710 x 3838 uint16 micrograph (FEI extended header, 0.854 Å/px from the header), no STAR file."""
    r = invoke_cli("pick", "--preview", str(REAL), "--diameter", "150", "--out", "prev", "--device", "cpu", cwd=tmp_path)
    png = tmp_path / "prev" / "preview_fei-extended.png"
    assert png.is_file()
    n = int(r.output.split(" picks")[0].split()[-1])
    assert 30 <= n <= 400, r.output  # isolated particles across the whole micrograph (99 at 150 Å here)


def test_consensus_with_truth(work: Path):
    r = invoke_cli("pick-consensus", "--in", "pk/coords.star", "--in", "sim/coords.star", "--radius", str(RADIUS_PX), "--out", "cons",
                   cwd=work)
    both = coords(work / "cons")
    assert (both["rlnAutopickFigureOfMerit"] == 2).all()
    tp = accuracy(coords(work / "pk"), truth(work))["tp"]
    assert abs(len(both) - tp) <= 2 and len(both) > 0, (len(both), tp)
    assert f"{len(both)} picks" in r.output
    invoke_cli("pick-consensus", "--in", "pk/coords.star", "--in", "sim/coords.star", "--radius", str(RADIUS_PX), "--min-agree", "1",
               "--out", "cons_any", cwd=work)
    anyone = coords(work / "cons_any")
    assert set(anyone["rlnAutopickFigureOfMerit"]) <= {1, 2} and len(anyone) > len(both)
    assert (work / "cons" / "autopick.star").is_file()
    bad = invoke_cli("pick-consensus", "--in", "pk/coords.star", "--in", "sim/coords.star", "--radius", "5", "--min-agree", "3",
                     "--out", "cons_bad", cwd=work, code=None)
    assert_user_error(bad, "--min-agree 3")
    # the spelling: a subcommand of pick, the pick sets as arguments
    r = invoke_cli("pick", "consensus", "pk/coords.star", "sim/coords.star", "--radius", str(RADIUS_PX), "--out",
                   "cons_sub", cwd=work)
    pd.testing.assert_frame_equal(coords(work / "cons_sub"), both)
    assert "pick consensus" in invoke_cli("pick", "consensus", "--help", cwd=work).output


def test_diameter_range_as_one_option(work: Path):
    """``--diameter MIN MAX`` is ``--diameter MIN --diameter-max MAX``; one number stays one size."""
    from cryolens.cli.pick import diameter_range_args

    assert diameter_range_args(["--diameter", "120", "180", "--quiet"]) == ["--diameter", "120", "--diameter-max",
                                                                           "180", "--quiet"]
    assert diameter_range_args(["--diameter=120", "180"]) == ["--diameter=120", "--diameter-max", "180"]
    assert diameter_range_args(["--diameter", "150", "--out", "x"]) == ["--diameter", "150", "--out", "x"]
    bad = invoke_cli("pick", "--in", "sim/micrographs.star", "--diameter", "180", "120", "--out", "rng_bad", cwd=work,
                     code=None)
    assert_user_error(bad, "--diameter-max 120")
    assert not (work / "rng_bad").exists()


def test_extract_reads_the_picks(work: Path):
    for inp, out in (("pk/coords.star", "ext"), ("pk/autopick.star", "ext_index")):
        invoke_cli("extract", "--in", inp, "--micrographs", "sim/micrographs.star", "--box", "64", "--out", out,
                   "--device", "cpu", "--quiet", cwd=work)
        r = results(work / out)
        assert r["n_particles"] + r["n_skipped"] == len(coords(work / "pk")) and r["n_particles"] > 0


def test_rerun_skips_finished_micrographs(work: Path):
    pick(work, "pk_resume")
    first = coords(work / "pk_resume")
    unfinish(work / "pk_resume")  # a finished folder is refused (or overwritten afresh); an interrupted one resumes
    r = pick(work, "pk_resume")
    assert results(work / "pk_resume")["n_reused"] == 2
    pd.testing.assert_frame_equal(coords(work / "pk_resume"), first)
    (work / "pk_resume" / "Candidates" / "mic_0002.json").unlink()
    unfinish(work / "pk_resume")
    pick(work, "pk_resume")
    assert results(work / "pk_resume")["n_reused"] == 1 and "picks" in r.output
    unfinish(work / "pk_resume")
    pick(work, "pk_resume", "--threshold", "4")  # another selection: the candidates are reused
    assert results(work / "pk_resume")["n_reused"] == 2
    assert len(coords(work / "pk_resume")) == int((first["rlnAutopickFigureOfMerit"] > 4).sum())
    unfinish(work / "pk_resume")
    pick(work, "pk_resume", "--min-distance", "100")  # other picking options: every micrograph again
    assert results(work / "pk_resume")["n_reused"] == 0


def test_bad_inputs_exit_2_and_write_nothing(work: Path):
    mics = starfile.read(work / "sim" / "micrographs.star")
    (work / "badp").mkdir(exist_ok=True)
    (work / "badp" / "mic_0001.mrc").write_bytes(b"this is not an MRC file" * 100)
    m = mics["micrographs"].copy()
    m["rlnMicrographName"] = ["sim/micrographs/gone.mrc", "sim/micrographs/mic_0002.mrc"]
    starfile.write({"optics": mics["optics"], "micrographs": m}, work / "missing_mic.star")
    m["rlnMicrographName"] = ["badp/mic_0001.mrc", "sim/micrographs/mic_0002.mrc"]
    starfile.write({"optics": mics["optics"], "micrographs": m}, work / "garbage_mic.star")
    cases = [
        (dict(mics="missing_mic.star"), (), ["missing_mic.star", "sim/micrographs/gone.mrc (row 1)"]),
        (dict(mics="garbage_mic.star"), (), ["badp/mic_0001.mrc"]),
        (dict(), ("--diameter", "1000"), ["mic_0001.mrc", "diameter 1000 Å", "--diameter"]),
        (dict(mics="nothere.star"), (), ["nothere.star"]),
        (dict(), ("--method", "template"), ["--method template needs --templates"]),
    ]
    for i, (kw, args, fragments) in enumerate(cases):
        r = pick(work, f"badp_out{i}", *args, code=None, **kw)
        assert_user_error(r, *fragments)
        assert len(r.output.strip().splitlines()) <= 3, r.output  # one sentence (wrapped at most)
        assert not (work / f"badp_out{i}").exists(), kw
    # a micrograph whose data are NaN is found while its unit runs: exit 2, no coords.star
    shutil.copy(work / "sim" / "micrographs" / "mic_0001.mrc", work / "badp" / "mic_0001.mrc")
    with mrcfile.open(work / "badp" / "mic_0001.mrc", "r+") as f:
        f.data[100:110, 100:110] = np.nan
    r = pick(work, "badp_nan", mics="garbage_mic.star", code=None)
    assert_user_error(r, "badp/mic_0001.mrc", "NaN")
    assert not (work / "badp_nan" / "coords.star").exists()
    assert (work / "badp_nan" / "CRYOLENS_JOB_EXIT_FAILURE").exists()
    r = invoke_cli("pick", "--in", "sim/micrographs.star", "--out", "badp_nodiam", "--quiet", cwd=work, code=None)
    assert_user_error(r, "--diameter is needed")
    r = invoke_cli("pick", "--rethreshold", "pk", "--in", "sim/micrographs.star", "--out", "badp_rt", cwd=work,
                   code=None)
    assert_user_error(r, "--rethreshold pk", "drop --in")
    r = invoke_cli("pick", "--rethreshold", "sim", "--out", "badp_rt", cwd=work, code=None)
    assert_user_error(r, "sim/job.json", "not a finished `cryolens pick` job")


def test_in_a_project(work: Path):
    """Inside a project the pick, its re-selection and a consensus are recorded as Pick/jobNNN."""
    invoke_cli("project", "init", "proj", cwd=work)
    invoke_cli("pick", "--in", "../sim/micrographs.star", *PICK, cwd=work / "proj")
    invoke_cli("pick", "--rethreshold", "Pick/job001", "--threshold", "4", cwd=work / "proj")
    invoke_cli("pick-consensus", "--in", "Pick/job001/coords.star", "--in", "Pick/job002/coords.star", "--radius", "5",
               "--min-agree", "1", cwd=work / "proj")
    for n in (1, 2, 3):
        assert (work / "proj" / "Pick" / f"job00{n}" / "CRYOLENS_JOB_EXIT_SUCCESS").is_file(), n
    assert len(coords(work / "proj" / "Pick" / "job003")) == len(coords(work / "proj" / "Pick" / "job001"))
    r = invoke_cli("project", "jobs", cwd=work / "proj")
    assert r.output.count("finished") >= 3, r.output


def test_workflow_steps_parse(tmp_path: Path):
    from cryolens.cli.run import stage_catalog
    from cryolens.errors import InputError
    from cryolens.project.workflow import build_argv, load_workflow

    body = """
        [steps.sim]
        stage = "simulate micrographs"
        params = { n-micrographs = 2, size = [512, 512] }
        [steps.pk]
        stage = "pick"
        params = { in = "{sim.micrographs}", diameter = 150, threshold = 3.5 }
        [steps.both]
        stage = "pick-consensus"
        params = { in = ["{pk.coords}", "{sim.coords}"], radius = 17 }
        [steps.ext]
        stage = "extract"
        params = { in = "{both.coords}", micrographs = "{sim.micrographs}", box = 64 }
        """
    path = tmp_path / "wf.toml"
    path.write_text(textwrap.dedent(body))
    catalog = stage_catalog()
    wf = load_workflow(path, catalog)
    pk = wf.steps[1]
    assert build_argv(pk.stage, {**pk.params, "in": "S/micrographs.star"}) == [
        "--in", "S/micrographs.star", "--diameter", "150", "--threshold", "3.5"]
    path.write_text(textwrap.dedent(body.replace("{both.coords}", "{both.particles}")))
    with pytest.raises(InputError, match="both"):  # pick-consensus declares its outputs: no particles
        load_workflow(path, catalog)
    path.write_text(textwrap.dedent(body.replace("diameter = 150", "diameter = -1")))
    with pytest.raises(InputError, match=r"step pk: pick: .*--diameter -1"):
        load_workflow(path, catalog)


HAVE_PREPROCESS = shutil.which("relion_preprocess") is not None


@pytest.mark.relion
@pytest.mark.skipif(not HAVE_PREPROCESS, reason="relion_preprocess (RELION 3.1) not on PATH")
def test_relion_preprocess_reads_our_autopick_files(work: Path):
    """relion_preprocess --extract with --coord_dir pk/ --coord_suffix _autopick.star extracts every pick, the
    same particles as `cryolens extract --in pk/coords.star` (per-particle correlation >= 0.99)."""
    p = subprocess.run(["relion_preprocess", "--i", "sim/micrographs.star", "--coord_dir", "pk/", "--coord_suffix",
                        "_autopick.star", "--part_dir", "RelPick/", "--part_star", "RelPick/particles.star", "--extract",
                        "--extract_size", "64", "--norm", "--bg_radius", "24", "--invert_contrast"],
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    theirs = starfile.read(work / "RelPick" / "particles.star")["particles"]
    c = coords(work / "pk")
    assert len(theirs) == len(c)
    assert np.allclose(np.sort(theirs["rlnCoordinateX"].to_numpy()), np.sort(c["rlnCoordinateX"].to_numpy()), atol=1e-3)
    # and they are the particles `cryolens extract` cuts at our coords.star (same box, normalisation, inversion)
    invoke_cli("extract", "--in", "pk/coords.star", "--micrographs", "sim/micrographs.star", "--box", "64",
               "--bg-radius", "24", "--edge", "replicate", "--out", "ext_vs_rel", "--device", "cpu", "--quiet", cwd=work)
    for i in (1, 2):
        rel = torch.from_numpy(mrcfile.read(work / "RelPick" / "sim" / "micrographs" / f"mic_000{i}.mrcs").astype(np.float64))
        ours = torch.from_numpy(mrcfile.read(work / "ext_vs_rel" / "Particles" / f"mic_000{i}.mrcs").astype(np.float64))
        assert ours.shape == rel.shape
        assert_images_correlated(ours, rel, 0.99, what=f"cryolens extract vs relion_preprocess on our picks, mic {i}")
