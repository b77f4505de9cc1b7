"""Tests of `cryolens abinitio`: maps from particles without poses, checked against the simulator's truth after
alignment (`cryolens.mapalign`, either hand); the command's outputs and its refusals of bad input.

The fast tests use a small phantom at high SNR; the slow ones are the issue's targets (70S ribosome,
5 000 particles, box 64, SNR 0.05: FSC 0.5 with the truth at <= 25 Å)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cryolens.abinitio import AbinitioParams, abinitio, centre_of_mass, enforce_priors
from cryolens.cli.main import app
from cryolens.core.fsc import fsc
from cryolens.core.masks import soft_sphere
from cryolens.io import merge_optics, read_mrc, read_particles, write_particles
from cryolens.mapalign import AlignMapsParams, align_maps, shift_volume
from cryolens.simulate.particles import ParticleSimParams, simulate_particles
from cryolens.simulate.phantom import asymmetric_phantom

APIX = 5.0
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _simulate(vol: torch.Tensor, n: int, *, snr: float, seed: int = 1, apix: float = APIX):
    sim = simulate_particles(vol, pixel_size=apix, params=ParticleSimParams(
        n_particles=n, snr=snr, max_shift=4.0, defocus_min=8000, defocus_max=15000, seed=seed))
    images = np.concatenate([b for _, b in sim.batches])
    return images, merge_optics(sim.optics, sim.particles)


def _batches(images: np.ndarray, size: int = 100):
    return lambda: ((np.arange(s, min(len(images), s + size)), images[s:s + size]) for s in range(0, len(images), size))


def _fsc_to_truth(truth: torch.Tensor, vol: torch.Tensor, apix: float):
    a = align_maps(truth, vol, pixel_size=apix, params=AlignMapsParams(coarse_box=16, refine_box=32, healpix_order=1))
    return fsc(truth, a.aligned, pixel_size=apix), a


def test_priors_make_a_positive_centred_masked_map():
    v = torch.zeros(24, 24, 24)
    v[14:18, 10:14, 12:16] = 1.0
    v[2, 2, 2] = -5.0
    mask = soft_sphere(24, radius=10, edge_width=2)
    out = enforce_priors(v, pixel_size=APIX, resolution=15.0, mask=mask)
    assert float(out.min()) >= 0 and float(centre_of_mass(out).norm()) < 1.0
    assert float(out[mask == 0].abs().max()) == 0.0
    moved = shift_volume(out, torch.tensor([2.0, 0.0, 0.0]))
    assert float(centre_of_mass(moved)[0]) == pytest.approx(2.0, abs=0.3)


@pytest.mark.slow  # ~45 s on 2 cores; the CLI and --continue tests run the engine in the default suite
def test_small_phantom_is_recovered():
    """200 particles of the phantom (box 24, 5 Å/px, SNR 2): the map correlates with the truth far above chance."""
    truth = asymmetric_phantom(24, APIX)
    images, table = _simulate(truth, 200, snr=2.0)
    params = AbinitioParams(iterations=6, batch_size=60, starts=2, prune_after=3, ini_resolution=30.0,
                            final_resolution=15.0, seed=3, healpix_order=1, top_k=2, final_passes=1)
    res = abinitio(_batches(images), table, pixel_size=APIX, params=params)
    assert res.maps.shape == (1, 24, 24, 24) and np.isfinite(res.maps.numpy()).all()
    assert len(res.history) == 6 and len(res.history[0].log_likelihood) == 2 and len(res.history[-1].log_likelihood) == 1
    assert res.history[-1].starts == [res.best_start]
    curve, _ = _fsc_to_truth(truth, res.maps[0], APIX)
    # a featureless blob of the right size crosses 0.5 near 40 Å here; the map must resolve far finer detail
    assert curve.resolution_at(0.5) <= 25.0, curve.fsc
    assert res.classes.min() == 1 and res.shifts.shape == (200, 2) and res.rotations.shape == (200, 3, 3)


@pytest.fixture(scope="module")
def sim_star(tmp_path_factory):
    work = tmp_path_factory.mktemp("abinitio")
    r = CliRunner().invoke(app, ["simulate", "particles", "--out", str(work / "sim"), "--n", "80", "--box", "24",
                                 "--pixel-size", "5", "--snr", "2", "--seed", "4", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return work


def test_cli_writes_all_outputs(sim_star):
    work = sim_star
    out = work / "job"
    r = CliRunner().invoke(app, ["abinitio", "--in", str(work / "sim" / "particles.star"), "--out", str(out),
                                 "--classes", "2", "--iterations", "3", "--batch-size", "40", "--starts", "1",
                                 "--ini-resolution", "30", "--final-resolution", "20", "--final-passes", "1", "--quiet",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for name in ("map.mrc", "class001.mrc", "class002.mrc", "particles.star", "fsc.star", "iterations.star",
                 "convergence.png", "slices.png", "projections.png", "fsc.png", "report.html", "job.json", "run.log"):
        assert (out / name).is_file(), name
    vol, apix = read_mrc(out / "map.mrc")
    assert vol.shape == (24, 24, 24) and apix == pytest.approx(5.0)
    _, parts = read_particles(out / "particles.star")
    for col in ("rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnMaxValueProbDistribution"):
        assert col in parts.columns, col
    assert len(parts) == 80 and set(parts["rlnClassNumber"]) <= {1, 2}
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "finished" and sum(job["results"]["class_sizes"]) == 80


def test_cli_bad_inputs_exit_2(sim_star, tmp_path):
    star = str(sim_star / "sim" / "particles.star")
    empty = tmp_path / "empty.star"
    text = (sim_star / "sim" / "particles.star").read_text()
    head = text[:text.index("data_particles")]
    empty.write_text(head + "data_particles\n\nloop_\n_rlnImageName #1\n")
    optics, parts = read_particles(sim_star / "sim" / "particles.star")
    mixed = sim_star / "sim" / "mixed.star"  # two optics groups at different pixel sizes (images beside it)
    two = pd.concat([optics, optics.assign(rlnOpticsGroup=2, rlnOpticsGroupName="opticsGroup2",
                                           rlnImagePixelSize=6.0)], ignore_index=True)
    write_particles(mixed, two, parts.assign(rlnOpticsGroup=[1 + i % 2 for i in range(len(parts))]))
    cases = [
        (["--in", str(empty)], "empty.star"),
        (["--in", str(tmp_path / "missing.star")], "missing.star"),
        (["--in", star, "--classes", "100"], "100 classes"),
        (["--in", star, "--final-resolution", "4"], "--final-resolution"),
        (["--in", star, "--final-resolution", "40", "--ini-resolution", "30"], "--final-resolution"),
        (["--in", star, "--sym", "X9"], "--sym X9"),
        (["--in", star, "--ini-resolution", "80", "--final-resolution", "20"], "box (24 px × 5 Å) is too small"),
        (["--in", str(mixed)], "different pixel sizes"),
    ]
    for extra, fragment in cases:
        r = CliRunner().invoke(app, ["abinitio", "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu", *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert fragment in r.output, (fragment, r.output)
        assert "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_ribosome_target(seed):
    """The issue's target: 70S ribosome (3.94 Å/px, box 64), 5 000 particles, SNR 0.05, CTF; FSC 0.5 with the truth
    (after alignment, either hand) at <= 25 Å."""
    path = os.path.join(SHARED, "maps", "clean70SRibosome_vol_65p.mrc")
    if not os.path.exists(path):
        pytest.skip("../shared/data is not present")
    from cryolens.core.fourier import pad_or_crop
    apix = 3.94
    truth = pad_or_crop(torch.as_tensor(read_mrc(path)[0]), 64)
    images, table = _simulate(truth, 5000, snr=0.05, seed=seed + 1, apix=apix)
    res = abinitio(_batches(images, 500), table, pixel_size=apix, params=AbinitioParams(seed=seed))
    a = align_maps(truth, res.maps[res.best_class], pixel_size=apix, params=AlignMapsParams())
    assert fsc(truth, a.aligned, pixel_size=apix).resolution_at(0.5) <= 25.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_apoferritin_target(seed, tmp_path):
    """The issue's second target: an O 24-mer of the real apoferritin chain (built as in benchmarks/refine.py; 3 Å/px,
    box 64), 5 000 particles, SNR 0.05, CTF, `--sym O` and the default options; FSC 0.5 with the truth <= 25 Å
    (seed 0: 6.6 Å in the benchmark; the success rate over seeds is benchmarks/abinitio.py's)."""
    import importlib.util
    import sys
    bench = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    if not os.path.exists(os.path.join(SHARED, "models", "7A4M_box.pdb")):
        pytest.skip("../shared/data is not present")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location("bench_refine", os.path.join(bench, "refine.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
    pdb = module.symmetric_assembly(tmp_path, "O")
    r = CliRunner().invoke(app, ["simulate", "particles", "--structure", str(pdb), "--pixel-size", "3", "--box", "64",
                                 "--n", "5000", "--snr", "0.05", "--seed", str(seed + 1), "--out", str(tmp_path / "sim"),
                                 "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["abinitio", "--in", str(tmp_path / "sim" / "particles.star"), "--sym", "O", "--seed",
                                 str(seed), "--out", str(tmp_path / "ab"), "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    truth, apix = read_mrc(tmp_path / "sim" / "truth_map.mrc")
    vol, _ = read_mrc(tmp_path / "ab" / "map.mrc")
    truth, vol = torch.as_tensor(np.array(truth)), torch.as_tensor(np.array(vol))
    a = align_maps(truth, vol, pixel_size=apix, params=AlignMapsParams(symmetry="O"))
    assert fsc(truth, a.aligned, pixel_size=apix).resolution_at(0.5) <= 25.0
