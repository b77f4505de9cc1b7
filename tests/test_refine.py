"""Tests of the pose-search engine and gold-standard auto-refinement (`cryolens refine`).

Ground truth comes from the particle simulator (true poses, origins and map); the score is
checked against the explicit Gaussian log-likelihood; the half maps are checked against an
independent reconstruction (`reconstruct_half_maps`) from the refined poses of each half set.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cryolens.cli.main import app
from cryolens.core.ctf import ctf_2d
from cryolens.core.fourier import bandpass
from cryolens.core.fsc import fsc
from cryolens.core.masks import soft_sphere
from cryolens.core.projector import prepare_volume
from cryolens.core.rotations import euler_to_matrix, geodesic_distance, random_rotations
from cryolens.core.so3_grid import so3_grid
from cryolens.core.symmetry import symmetrize_volume, symmetry_matrices
from cryolens.io import merge_optics, read_particles, write_mrc
from cryolens.particles import assign_half_sets, ctf_params_from_table, rotations_from_table
from cryolens.reconstruct import ReconstructParams, reconstruct_half_maps
from cryolens.refine import (BandProjector, Candidates, FrequencyBand, RefineParams, SearchData, auto_refine,
                             global_search, local_search, project_band, shift_grid)
from cryolens.refine.pose_search import best_projections, local_search_many, phase_ramps
from cryolens.simulate.particles import ParticleSimParams, simulate_particles
from cryolens.simulate.phantom import asymmetric_phantom

APIX = 4.0


def _simulate(vol: torch.Tensor, n: int, *, snr: float, seed: int = 1):
    sim = simulate_particles(vol, pixel_size=APIX, params=ParticleSimParams(
        n_particles=n, snr=snr, max_shift=4.0, defocus_min=8000, defocus_max=15000, seed=seed))
    images = np.concatenate([b for _, b in sim.batches])
    table = assign_half_sets(merge_optics(sim.optics, sim.particles), seed=0)
    return images, table


def _batches(images: np.ndarray, size: int = 100):
    return lambda: ((np.arange(s, min(len(images), s + size)), images[s:s + size]) for s in range(0, len(images), size))


def _errors(res, table: pd.DataFrame, sym: str = "C1") -> tuple[torch.Tensor, np.ndarray]:
    g = symmetry_matrices(sym)
    ang = geodesic_distance(torch.as_tensor(res.rotations)[:, None] @ g[None], rotations_from_table(table)[:, None])
    true_px = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / APIX
    return ang.amin(1), np.linalg.norm(res.shifts - true_px, axis=1)


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    return asymmetric_phantom(32, APIX)


@pytest.fixture(scope="module")
def refined(phantom):
    """240 particles of the phantom (box 32, 4 Å/px, SNR 1, CTF) refined from the truth low-passed to 30 Å."""
    images, table = _simulate(phantom, 240, snr=1.0)
    poseless = table.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"])
    params = RefineParams(ini_high=30.0, max_iterations=3, global_iterations=2, offset_range=2.0, batch_size=120)
    res = auto_refine(_batches(images), poseless, phantom, pixel_size=APIX, params=params)
    return images, table, res


# -- the engine --------------------------------------------------------------------------------

def test_band_projector_matches_the_projector(phantom):
    """Band-limited slices equal core.projector.project at the band's coefficients (any band up to n/2)."""
    from cryolens.core.projector import project
    fvol = prepare_volume(phantom)
    rots = random_rotations(16)
    full = project(fvol, rots)
    for r_max in (5.0, 11.5, 16.0):
        band = FrequencyBand.build(32, r_max)
        got = project_band(fvol, rots, band)
        assert torch.allclose(got, band.gather(full), atol=1e-5 * float(full.abs().max()))


def test_ml_score_is_the_gaussian_log_likelihood(phantom, device):
    """score = Σ w(|X|² − |X·e(t) − CTF·P|²)/σ²: the engine's GEMM form equals the explicit sum."""
    torch.manual_seed(0)  # the random inputs are drawn on the CPU: the same numbers on every device
    n = 32
    band = FrequencyBand.build(n, 9.0, device=device)
    fvol = prepare_volume(phantom.to(device))
    rots = random_rotations(7).to(device)
    shifts = shift_grid(1.0, 1.5, device=device)
    B = 3
    x = (torch.randn(B, len(band), dtype=torch.complex64) * 5).to(device)
    ctf = (torch.rand(B, len(band)) * 2 - 1).to(device)
    inv = (torch.rand(len(band)) + 0.5).to(device)
    data = SearchData(x, ctf, inv)
    cand = global_search(BandProjector(fvol, band), data, rots, shifts, top_k=len(rots) * len(shifts), mode="ml")
    assert cand.score.device.type == device.type
    for b in range(B):
        for j in (0, 5, 20):
            R, t = cand.rotations[b, j], cand.shifts[b, j]
            p = project_band(fvol, R[None], band)[0]
            resid = x[b] * phase_ramps(band, t[None])[0] - ctf[b] * p
            expect = ((x[b].abs() ** 2 - resid.abs() ** 2) * band.weight * inv).sum()
            assert math.isclose(float(cand.score[b, j]), float(expect), rel_tol=2e-4, abs_tol=1e-2)
    assert (cand.score[:, :-1] >= cand.score[:, 1:]).all()  # best first


def test_global_and_local_search_find_noise_free_poses(phantom, device):
    """Noise-free CTF-modulated projections at off-grid poses and sub-pixel origins are found again."""
    torch.manual_seed(1)  # poses drawn on the CPU: the same on every device
    n = 32
    true_r = random_rotations(12).to(device)
    true_t = ((torch.rand(12, 2) - 0.5) * 4).to(device)  # px
    band = FrequencyBand.build(n, 12.0, device=device)
    fvol = prepare_volume(phantom.to(device))
    table = pd.DataFrame({"rlnDefocusU": [12000.0] * 12, "rlnDefocusV": [11000.0] * 12, "rlnDefocusAngle": [30.0] * 12})
    ctf = band.gather(ctf_2d(ctf_params_from_table(table), box=n, pixel_size=APIX, device=device))
    proj = BandProjector(fvol, band)
    x = ctf * best_projections(proj, true_r, true_t)  # the image model, in the image frame
    data = SearchData(x, ctf, torch.ones(len(band), device=device))
    grid = so3_grid(2).matrices.to(device)
    cand = global_search(proj, data, grid, shift_grid(1.0, 3.0, device=device), top_k=4, mode="cc")
    assert cand.rotations.device.type == device.type
    assert float(geodesic_distance(cand.rotations[:, 0], true_r).median()) < 12.0
    for step, rng_, ostep, orng in ((7.5, 15.0, 0.5, 1.0), (3.75, 7.5, 0.25, 0.5), (1.0, 2.0, 0.1, 0.2)):
        cand = local_search(proj, data, cand, angular_step=step, angular_range=rng_, offset_step=ostep,
                            offset_range=orng, mode="ml")
    err = geodesic_distance(cand.rotations[:, 0], true_r)
    assert float(err.max()) < 1.5, err
    assert float((cand.shifts[:, 0] - true_t).norm(dim=1).max()) < 0.3
    assert torch.all(cand.log_evidence >= cand.score[:, 0] - 1e-3)


def test_searches_are_memory_chunked_consistently(phantom):
    """Chunking over images and rotations (small max_block) gives the same answer as one block."""
    torch.manual_seed(2)
    band = FrequencyBand.build(32, 8.0)
    fvol = prepare_volume(phantom)
    r = random_rotations(6)
    proj = BandProjector(fvol, band)
    x = best_projections(proj, r, torch.zeros(6, 2)) + 0.1 * torch.randn(6, len(band), dtype=torch.complex64)
    data = SearchData(x, torch.ones(6, len(band)), torch.ones(len(band)))
    start = Candidates(torch.zeros(6, 1), (r @ euler_to_matrix(2.0, 3.0, 1.0))[:, None], torch.zeros(6, 1, 2))
    kw = dict(angular_step=2.0, angular_range=4.0, offset_step=0.5, offset_range=1.0)
    a = local_search(proj, data, start, max_block=2**24, **kw)
    b = local_search(proj, data, start, max_block=2**12, **kw)
    assert torch.allclose(a.score, b.score, rtol=1e-4, atol=1e-3) and torch.allclose(a.rotations, b.rotations, atol=1e-5)
    grid, shifts = random_rotations(40), shift_grid(1.0, 2.0)
    g1 = global_search(proj, data, grid, shifts, top_k=3, max_block=2**24)
    g2 = global_search(proj, data, grid, shifts, top_k=3, max_block=2**12)  # images and rotations chunked
    assert torch.allclose(g1.score, g2.score, rtol=1e-4, atol=1e-3) and torch.equal(g1.rotations, g2.rotations)



def test_local_search_many_equals_one_map_at_a_time(phantom):
    """Several maps searched at once (shared rotations, coordinates, shifted images, one sampling pass over
    the stacked tables) give each map's own local search, with two candidates per image and chunking."""
    torch.manual_seed(3)
    band = FrequencyBand.build(32, 9.0)
    projs = [BandProjector(prepare_volume(v), band) for v in (phantom, phantom.flip(0), 0.5 * phantom)]
    r = random_rotations(7)
    x = best_projections(projs[0], r, torch.zeros(7, 2)) + 0.1 * torch.randn(7, len(band), dtype=torch.complex64)
    data = SearchData(x, 0.5 + torch.rand(7, len(band)), 0.5 + torch.rand(len(band)))
    start = Candidates(torch.zeros(7, 2), torch.stack([r @ euler_to_matrix(2.0, 3.0, 1.0), r], 1),
                       torch.randn(7, 2, 2))
    kw = dict(angular_step=2.0, angular_range=4.0, offset_step=0.5, offset_range=1.0)
    many = local_search_many(projs, data, start, max_block=2**13, **kw)
    for proj, got in zip(projs, many):
        one = local_search(proj, data, start, max_block=2**24, **kw)
        assert torch.allclose(got.score, one.score, rtol=1e-4, atol=1e-3)
        assert torch.allclose(got.log_evidence, one.log_evidence, rtol=1e-4, atol=1e-3)
        assert torch.allclose(got.rotations, one.rotations, atol=1e-5) and torch.allclose(got.shifts, one.shifts)
        p = data.ctf * proj.project(got.rotations[:, 0])  # the ML score written out at the pose found
        y = data.x * phase_ramps(band, got.shifts[:, 0])
        direct = ((2 * (y * p.conj()).real - p.abs() ** 2) * band.weight * data.inv_sigma2).sum(1)
        assert torch.allclose(got.score[:, 0], direct, rtol=1e-4, atol=1e-2)


# -- auto-refinement ---------------------------------------------------------------------------

def test_refine_recovers_true_poses_and_improves_the_map(refined, phantom):
    images, table, res = refined
    ang, sh = _errors(res, table)
    assert float(ang.median()) < 4.0, float(ang.median())
    assert float((ang > 20).float().mean()) < 0.05
    assert float(np.median(sh)) < 0.5  # px
    start = bandpass(phantom, pixel_size=APIX, high_res=30.0, ndim=3)
    mask = soft_sphere(32, radius=12, edge_width=3)
    r_start = fsc(start, phantom, pixel_size=APIX, mask=mask).resolution_at(0.143)
    r_map = fsc(res.full_unweighted, phantom, pixel_size=APIX, mask=mask).resolution_at(0.143)
    assert r_map < 0.6 * r_start, (r_map, r_start)
    assert res.resolution < 20.0
    assert [h.mode for h in res.history] == ["cc-global", "ml-global", "ml-local"]
    assert np.isfinite(res.log_likelihood).all() and ((res.max_probability > 0) & (res.max_probability <= 1)).all()


def test_half_maps_are_built_only_from_their_half(refined):
    """Each half map equals an independent reconstruction of that half set's particles at the refined poses."""
    images, table, res = refined
    from cryolens.core.rotations import matrix_to_euler
    out = table.copy()
    rot, tilt, psi = (t.numpy() for t in matrix_to_euler(torch.as_tensor(res.rotations)))
    out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = rot, tilt, psi
    out["rlnOriginXAngst"], out["rlnOriginYAngst"] = res.shifts[:, 0] * APIX, res.shifts[:, 1] * APIX
    ref = reconstruct_half_maps(_batches(images)(), out, box=32, pixel_size=APIX, params=ReconstructParams())
    for mine, theirs in ((res.half1, ref.half1), (res.half2, ref.half2)):
        assert torch.allclose(mine, theirs, atol=1e-4 * float(theirs.abs().max()))
    assert not torch.allclose(res.half1, res.half2, atol=1e-2 * float(res.half1.abs().max()))


def test_symmetric_refinement_poses_modulo_symmetry():
    """A D2 assembly refined with D2: poses are right modulo the group and the map is symmetric."""
    sub = asymmetric_phantom(32, APIX, diameter=40.0, seed=5)
    vol = symmetrize_volume(torch.roll(sub, shifts=(3, 4, 5), dims=(0, 1, 2)), "D2")
    vol = vol / vol.max()
    images, table = _simulate(vol, 120, snr=2.0, seed=3)
    params = RefineParams(symmetry="D2", ini_high=30.0, max_iterations=2, global_iterations=1, offset_range=2.0,
                          batch_size=120)
    res = auto_refine(_batches(images, 120), table, vol, pixel_size=APIX, params=params)
    ang, _ = _errors(res, table, "D2")
    assert float(ang.median()) < 5.0, float(ang.median())
    plain, _ = _errors(res, table, "C1")
    assert float(plain.median()) > float(ang.median())  # some poses landed on symmetry mates
    sym_map = symmetrize_volume(res.full_unweighted, "D2")
    num = float(((sym_map - res.full_unweighted) ** 2).sum() / (res.full_unweighted ** 2).sum())
    assert num < 0.05


# -- the command -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    work = tmp_path_factory.mktemp("refine")
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", "particles", "--out", str(work / "sim"), "--n", "60", "--box", "24",
                            "--pixel-size", "5", "--snr", "2", "--seed", "4", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    from cryolens.io import read_mrc
    truth, apix = read_mrc(work / "sim" / "truth_map.mrc")
    write_mrc(work / "ref.mrc", bandpass(torch.as_tensor(np.array(truth)), pixel_size=apix, high_res=30.0,
                                         ndim=3).numpy(), apix)
    return work, runner


def test_cli_writes_all_outputs(small_job):
    work, runner = small_job
    r = runner.invoke(app, ["refine", "--in", str(work / "sim" / "particles.star"), "--ref", str(work / "ref.mrc"),
                            "--ini-high", "30", "--max-iter", "2", "--offset-range", "2", "--out", str(work / "job"), "--quiet",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = work / "job"
    for name in ("half1.mrc", "half2.mrc", "map.mrc", "particles.star", "fsc.star", "iterations.star", "angdist.png",
                 "fsc.png", "report.html", "job.json", "run.log"):
        assert (out / name).is_file(), name
    optics, parts = read_particles(out / "particles.star")
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnRandomSubset", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution"):
        assert col in parts.columns, col
    _, sim = read_particles(work / "sim" / "particles.star")
    assert len(parts) == len(sim) and (parts["rlnImageName"].to_numpy() == sim["rlnImageName"].to_numpy()).all()
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["iterations"] == 2 and job["params"]["symmetry"] == "C1"
    assert "iteration 1" in (out / "run.log").read_text()


def test_cli_bad_inputs_exit_2(small_job, tmp_path):
    work, runner = small_job
    star, ref = str(work / "sim" / "particles.star"), str(work / "ref.mrc")
    write_mrc(tmp_path / "flat.mrc", np.zeros((24, 24, 20), np.float32), 5.0)
    write_mrc(tmp_path / "badmask.mrc", np.full((24, 24, 24), 3.0, np.float32), 5.0)
    half_ctf = tmp_path / "half_ctf.star"  # rlnDefocusU without rlnDefocusV: not silently "no CTF"
    half_ctf.write_text((work / "sim" / "particles.star").read_text().replace("rlnDefocusV", "rlnDefocusQ"))
    cases = [
        (["--ref", ref, "--in", str(half_ctf)], "rlnDefocusV"),
        (["--ref", str(tmp_path / "missing.mrc")], "missing.mrc"),
        (["--ref", str(tmp_path / "flat.mrc")], "cubic"),
        (["--ref", ref, "--mask", str(tmp_path / "badmask.mrc")], "mask"),
        (["--ref", ref, "--sym", "X9"], "--sym X9"),
        (["--ref", ref, "--ini-high", "-5"], "--ini-high"),
    ]
    for extra, fragment in cases:
        r = runner.invoke(app, ["refine", "--in", star, "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu",
                                *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert fragment in r.output, (fragment, r.output)
        assert "Traceback" not in r.output
