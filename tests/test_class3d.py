"""``cryolens class3d``: two-state ribosome data (the 70S map and the same map with a peripheral lobe removed).

The default-suite test is small (400 particles, box 40, a large 80 Å lobe, SNR 0.1, 4 iterations): the
outputs exist, the classes separate, and ``cryolens select particles --class`` takes the result. The slow
test is the issue's accuracy check (3 000 particles, box 64, 4 Å/px, SNR 0.05, CTF, true poses as the
consensus, reference = consensus low-passed to 30 Å, skip-align, K 2) on the nearest separable set: the
issue's 40 Å lobe (2.6 % of the mass) is below what even the true maps at the true poses can classify
to 90 % (85.4 %, measured), so the set removes a 60 Å lobe (5.0 % of the mass; the same oracle: 93.9 %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, run_cli
from cryolens.core.fourier import bandpass
from cryolens.io import read_mrc, read_particles, read_star, write_mrc
from cryolens.simulate.variants import remove_lobe

MAP_APIX = 4.0  # the 70S map's header says 0; 65 × ~3.94 Å ≈ 256 Å (see the shared data README)


def two_state_data(folder: Path, shared_data: Path, *, lobe: float, n: int, box: int, pixel_size: float, snr: float,
                   seed: int) -> tuple[Path, Path]:
    """Simulate the 60:40 two-state set; returns ``(particles.star, consensus reference low-passed to 30 Å)``."""
    folder.mkdir(parents=True, exist_ok=True)
    vol, _ = read_mrc(shared_data / "maps" / "clean70SRibosome_vol_65p.mrc")
    a = torch.as_tensor(np.array(vol))
    b = remove_lobe(a, pixel_size=MAP_APIX, diameter=lobe)
    write_mrc(folder / "a.mrc", a.numpy(), MAP_APIX)
    write_mrc(folder / "b.mrc", b.numpy(), MAP_APIX)
    ref = bandpass(0.6 * a + 0.4 * b, pixel_size=MAP_APIX, high_res=30.0, ndim=3)
    write_mrc(folder / "ref.mrc", ref.numpy(), MAP_APIX)  # box 65 at 4 Å: class3d resamples it (with a warning)
    sim = folder / "sim"
    run_cli("simulate", "particles", "--structure", f"{folder / 'a.mrc'}:population=0.6", "--structure",
            f"{folder / 'b.mrc'}:population=0.4", "--n", str(n), "--box", str(box), "--pixel-size", str(pixel_size),
            "--snr", str(snr), "--seed", str(seed), "--out", str(sim), "--quiet")
    return sim / "particles.star", folder / "ref.mrc"


def accuracy(result_star: Path, truth_star: Path) -> float:
    """Fraction of particles in the right class, for the better of the two labellings (K = 2)."""
    _, got = read_particles(result_star)
    _, truth = read_particles(truth_star)
    same = float(np.mean(got["rlnClassNumber"].to_numpy() == truth["rlnClassNumber"].to_numpy()))
    return max(same, 1 - same)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    folder = tmp_path_factory.mktemp("class3d")
    star, ref = two_state_data(folder, SHARED_DATA, lobe=80.0, n=400, box=40, pixel_size=6.4, snr=0.1, seed=3)
    out = folder / "c3d"
    p = run_cli("class3d", "--in", str(star), "--ref", str(ref), "--classes", "2", "--skip-align", "--iter", "4",
                "--ini-high", "30", "--particle-diameter", "230", "--out", str(out))
    return star, out, p


def test_two_state_outputs(small_run):
    star, out, p = small_run
    assert "resampled" in p.stderr  # the 65-px, 4 Å/px reference was put on the particles' grid with a warning
    for name in ("class001.mrc", "class002.mrc", "class001_unfil.mrc", "class002_unfil.mrc", "particles.star",
                 "classes.star", "iterations.star", "class_sizes.png", "class_slices.png", "fsc.png", "report.html"):
        assert (out / name).is_file(), name
    vol, apix = read_mrc(out / "class001.mrc")
    _, sim_apix = read_mrc(star.parent / "truth_map.mrc")
    assert vol.shape == (40, 40, 40) and apix == pytest.approx(sim_apix, rel=1e-4) and np.isfinite(vol).all()
    _, parts = read_particles(out / "particles.star")
    assert set(parts["rlnClassNumber"]) <= {1, 2}
    assert parts["rlnMaxValueProbDistribution"].between(0, 1).all()
    classes = read_star(out / "classes.star")["model_classes"]
    assert classes["rlnClassDistribution"].sum() == pytest.approx(1, abs=1e-3)
    assert list(classes["rlnClassNumber"]) == [1, 2]


def test_two_states_separate(small_run):
    star, out, _ = small_run
    assert accuracy(out / "particles.star", star) >= 0.8


def test_select_particles_takes_the_classes(small_run, tmp_path):
    _, out, _ = small_run
    _, parts = read_particles(out / "particles.star")
    run_cli("select", "particles", "--in", str(out / "particles.star"), "--class", "2", "--out", str(tmp_path / "s"))
    _, kept = read_particles(tmp_path / "s" / "particles.star")
    assert len(kept) == int((parts["rlnClassNumber"] == 2).sum()) and set(kept["rlnClassNumber"]) == {2}


@pytest.mark.slow
def test_accuracy_two_states_3000(tmp_path, shared_data):
    """The issue's check: >= 90 % of 3 000 particles in the right class with skip-align, K 2.

    With a 40 Å lobe (2.6 % of the mass) even the true maps at the true poses classify only 85.4 % of
    these particles (the oracle, ``benchmarks/class3d.py --bayes``), so the set uses a 60 Å lobe (5 % of
    the mass; oracle 93.9 %). Measured 2026-12-03: 92.0 % after 7 iterations (RELION 3.1 --skip_align: 61.5 %);
    with the convergence stop (--stop-change 0.005) 91.9 % after 6 (0.3 % changed class at iteration 5).
    """
    star, ref = two_state_data(tmp_path, shared_data, lobe=60.0, n=3000, box=64, pixel_size=4.0, snr=0.05, seed=1)
    out = tmp_path / "c3d"
    run_cli("class3d", "--in", str(star), "--ref", str(ref), "--classes", "2", "--skip-align", "--iter", "8",
            "--ini-high", "30", "--particle-diameter", "230", "--out", str(out), "--quiet")
    assert accuracy(out / "particles.star", star) >= 0.9


def test_shrunk_deviations_keep_reproducible_differences():
    """A deviation seen in both half sets survives the shrinkage; independent noise is mostly removed."""
    from cryolens.class3d.references import shrunk_deviations
    from cryolens.core.masks import soft_sphere
    n = 24
    gen = torch.Generator().manual_seed(0)
    cons = [torch.zeros(n, n, n), torch.zeros(n, n, n)]
    mask = soft_sphere(n, radius=10, edge_width=2, ndim=3)
    blob = soft_sphere(n, radius=3, edge_width=2, ndim=3, centre=(0.0, 0.0, 5.0))
    noise = [0.05 * torch.randn((n, n, n), generator=gen) for _ in range(2)]
    kept, curve = shrunk_deviations([blob + noise[0], blob + noise[1]], cons, pixel_size=4.0, mask=mask,
                                    local_sigma=2.0)
    assert curve[1:4].min() > 0.5
    assert float((kept[0] * blob).sum() / (blob * blob).sum()) > 0.5
    pure, _ = shrunk_deviations(noise, cons, pixel_size=4.0, mask=mask, local_sigma=2.0)
    assert float((pure[0] ** 2).sum()) < 0.1 * float(((noise[0] * mask) ** 2).sum())


def test_kmeans_separates_two_clusters():
    from cryolens.class3d.variability import kmeans
    gen = torch.Generator().manual_seed(1)
    pts = torch.cat([torch.randn(60, 1, generator=gen) * 0.3 - 1, torch.randn(40, 1, generator=gen) * 0.3 + 1])
    labels = kmeans(pts, 2, seed=0).numpy()
    truth = np.r_[np.zeros(60), np.ones(40)]
    assert max(np.mean(labels == truth), np.mean(labels != truth)) > 0.97


def test_skip_scores_equal_the_zero_range_search():
    """Skip-align scores every class from one projection per image: the zero-range local search's score (ML and CC)."""
    from cryolens.class3d.estep import ClassSetup, search_class, skip_scores
    from cryolens.class3d.params import Class3DParams
    from cryolens.core.projector import prepare_volume
    from cryolens.core.rotations import random_rotations
    from cryolens.refine.pose_search import BandProjector, FrequencyBand, SearchData
    n, B = 24, 6
    gen = torch.Generator().manual_seed(2)
    band = FrequencyBand.build(n, 8.0)
    projs = [BandProjector(prepare_volume(torch.randn((n, n, n), generator=gen), pad=2), band) for _ in range(2)]
    rot, shift = random_rotations(B, generator=gen), torch.randn((B, 2), generator=gen)
    data = SearchData(torch.randn((B, len(band)), dtype=torch.complex64, generator=gen),
                      torch.rand((B, len(band)), generator=gen), torch.rand(len(band), generator=gen) + 0.5)
    for score in ("ml", "cc"):
        s = ClassSetup(Class3DParams(classes=2), "skip", band, {1: projs}, data.inv_sigma2, torch.zeros(2), None, score,
                       False, True, torch.eye(3)[None], torch.device("cpu"))
        ll, models = skip_scores(s, projs, data, rot, shift)
        assert models.shape == (2, B, len(band))
        for k in range(2):
            ref = search_class(s, projs[k], data, rot, shift)[0]
            assert torch.allclose(ll[:, k], ref, rtol=1e-4, atol=1e-3 * float(ref.abs().max()))


def test_convergence_stop(small_run):
    """Once fewer than stop_change of the particles change class, the next iteration is the last."""
    from cryolens.class3d import classify_3d
    star, _, _ = small_run
    parts, ref, p = _small_params(star, iterations=12, skip_align=True, stop_change=0.05, plateau=0)
    res = classify_3d(lambda: parts.batches(p.batch_size), parts.table(), ref, pixel_size=parts.pixel_size, params=p)
    changes = [h.class_change for h in res.history]
    assert len(changes) < 12 and res.stop == "converged", changes
    assert changes[-2] < 0.05 and all(c >= 0.05 for c in changes[p.hard_iterations:-2]), changes


def test_local_second_pass_only_where_used_keeps_the_poses():
    """Local searches refine a pose (second pass) only where it is used; the poses are the full search's."""
    from cryolens.class3d.estep import ClassSetup, ClassSums, classify_batch, search_class
    from cryolens.class3d.params import Class3DParams
    from cryolens.core.projector import prepare_volume
    from cryolens.core.rotations import random_rotations
    from cryolens.refine.pose_search import BandProjector, FrequencyBand, SearchData
    n, B = 24, 8
    gen = torch.Generator().manual_seed(3)
    band = FrequencyBand.build(n, 8.0)
    vols = [torch.randn((n, n, n), generator=gen) for _ in range(2)]
    projs = [BandProjector(prepare_volume(v, pad=2), band) for v in vols]
    rot, shift = random_rotations(B, generator=gen), torch.zeros(B, 2)
    raw = torch.fft.rfft2(torch.randn((B, n, n), generator=gen))
    ctf = torch.ones(B, n, n // 2 + 1)
    inv = torch.full((len(band),), 0.01)
    p = Class3DParams(classes=2, search="local", local_range=6.0, angular_step=3.0, offset_range=1.0)
    s = ClassSetup(p, "local", band, {1: projs, 2: projs}, inv, torch.log(torch.tensor([0.5, 0.5])), None, "ml",
                   False, True, torch.eye(3)[None], torch.device("cpu"))
    got = classify_batch(s, ClassSums(2, n, torch.device("cpu"), n / 2), 1, raw, raw, ctf, rot, shift)
    data = SearchData(band.gather(raw), band.gather(ctf), inv)
    full = [search_class(s, pj, data, rot, shift) for pj in projs]
    ll = torch.stack([f[0] for f in full], 1)
    assert torch.allclose(got["loglik"], torch.logsumexp(ll + s.log_prior, 1), rtol=1e-5)
    for i, k in enumerate(got["cls"].tolist()):
        assert torch.allclose(got["rot"][i], full[k][1].rotations[i, 0], atol=1e-6)
        assert torch.allclose(got["shift"][i], full[k][1].shifts[i, 0], atol=1e-6)


def test_plateau_reached_counts_soft_iterations_below_the_fraction():
    from cryolens.class3d.engine import plateau_reached
    ch = [1.0, 0.3, 0.015, 0.012, 0.019]
    assert plateau_reached(ch, hard_iterations=2, iterations=3, fraction=0.02)
    assert not plateau_reached(ch, hard_iterations=2, iterations=3, fraction=0.019)  # 0.019 is not below
    assert not plateau_reached(ch[:4], hard_iterations=2, iterations=3, fraction=0.02)  # two soft iterations only
    assert not plateau_reached([1.0, 0.01, 0.01, 0.01], hard_iterations=2, iterations=3, fraction=0.02)
    assert not plateau_reached(ch, hard_iterations=2, iterations=0, fraction=0.02)  # 0: off


def _small_params(star: Path, **kw):
    from cryolens.class3d import Class3DParams
    from cryolens.jobs.particles import open_particles, read_reference
    parts = open_particles(star, pose=False, min_particles=10, purpose="3D classification", why="test")
    parts = parts.with_half_sets(seed=0)
    ref = read_reference(star.parent / "truth_map.mrc", box=parts.box, pixel_size=parts.pixel_size)[None]
    return parts, ref, Class3DParams(**{"classes": 2, "ini_high": 30.0, "particle_diameter": 230.0, **kw})


def test_plateau_stop(small_run):
    """With the convergence stop off, the run ends one iteration after ``plateau`` iterations in a row in which
    fewer than ``plateau_change`` of the particles changed class, and not earlier."""
    from cryolens.class3d import classify_3d
    star, _, _ = small_run
    parts, ref, p = _small_params(star, iterations=12, skip_align=True, stop_change=0.0, plateau=2,
                                  plateau_change=0.05)
    res = classify_3d(lambda: parts.batches(p.batch_size), parts.table(), ref, pixel_size=parts.pixel_size, params=p)
    ch = [h.class_change for h in res.history][p.hard_iterations:]
    assert res.stop == "plateau" and len(res.history) < 12, ch
    assert all(c < 0.05 for c in ch[-3:-1]), ch
    assert not any(a < 0.05 and b < 0.05 for a, b in zip(ch[:-3], ch[1:-2])), ch


def test_local_search_narrows_once_the_poses_settle(small_run):
    """Local searches switch to the narrow window (mode ``local-narrow``) the iteration after the poses moved
    less than half a step, stay there, and still separate the two states."""
    from cryolens.class3d import classify_3d
    from cryolens.class3d.engine import poses_settled
    star, _, _ = small_run
    parts, ref, p = _small_params(star, iterations=4, search="local", local_range=10.0, angular_step=5.0,
                                  offset_range=1.0, stop_change=0.0, plateau=0)
    res = classify_3d(lambda: parts.batches(p.batch_size), parts.table(), ref, pixel_size=parts.pixel_size, params=p)
    modes = [h.mode for h in res.history]
    first = next(i for i, m in enumerate(modes) if m == "local-narrow")
    assert first >= p.hard_iterations and all(m == "local-narrow" for m in modes[first:]), modes
    assert poses_settled(res.history[first - 1], p) and not any(poses_settled(h, p)
                                                                for h in res.history[p.hard_iterations - 1:first - 1])
    _, truth = read_particles(star)
    same = float(np.mean(res.particle_class + 1 == truth["rlnClassNumber"].to_numpy()))
    assert max(same, 1 - same) >= 0.8


def test_narrow_pass_searches_the_nearest_neighbours():
    """The narrow pass scores the current pose and its 6 angular and 4 shift lattice neighbours (35 poses): its
    evidence is their log-sum-exp, and a noise-free image at a neighbouring pose is found exactly."""
    from cryolens.class3d.estep import ClassSetup, narrow_pass
    from cryolens.class3d.params import Class3DParams
    from cryolens.core.projector import prepare_volume
    from cryolens.core.rotations import random_rotations, rotvec_to_matrix
    from cryolens.refine.pose_search import BandProjector, Candidates, FrequencyBand, SearchData, best_projections
    n, B, step = 24, 6, 4.0
    gen = torch.Generator().manual_seed(4)
    band = FrequencyBand.build(n, 8.0)
    vol = torch.nn.functional.avg_pool3d(torch.randn((1, 1, n, n, n), generator=gen), 3, 1, 1)[0, 0]
    proj = BandProjector(prepare_volume(vol, pad=2), band)
    rot0, shift0 = random_rotations(B, generator=gen), torch.zeros(B, 2)
    axes = torch.eye(3)[torch.arange(B) % 3] * torch.where(torch.arange(B) % 2 == 0, 1.0, -1.0)[:, None]
    rot_true = rot0 @ rotvec_to_matrix(step * axes)
    shift_true = torch.eye(2)[torch.arange(B) % 2] * torch.where(torch.arange(B) < 3, 1.0, -1.0)[:, None]
    ctf = torch.rand((B, len(band)), generator=gen) + 0.5
    inv = torch.full((len(band),), 0.05)
    data = SearchData(ctf * best_projections(proj, rot_true, shift_true), ctf, inv)
    p = Class3DParams(classes=2, search="local", angular_step=step, offset_step=1.0, local_range=3 * step,
                      offset_range=3.0)
    s = ClassSetup(p, "local", band, {1: [proj]}, inv, torch.zeros(2), None, "ml", False, True, torch.eye(3)[None],
                   torch.device("cpu"), True)
    got = narrow_pass(s, [proj], data, Candidates(torch.zeros(B, 1), rot0[:, None], shift0[:, None]))[0]
    assert torch.allclose(got.rotations[:, 0], rot_true, atol=1e-5)
    assert torch.allclose(got.shifts[:, 0], shift_true, atol=1e-6)
    omegas = torch.cat([torch.zeros(1, 3), step * torch.eye(3), -step * torch.eye(3)])
    shifts = torch.cat([torch.zeros(1, 2), torch.eye(2), -torch.eye(2)])
    wv = band.weight * inv
    scores = []
    for om in omegas:
        for d in shifts:
            m = ctf * best_projections(proj, rot0 @ rotvec_to_matrix(om[None]), shift0 + d)
            scores.append(2 * (data.x * m.conj()).real.mul(wv).sum(1) - (m.abs() ** 2).mul(wv).sum(1))
    ref = torch.logsumexp(torch.stack(scores, 1), 1)
    assert torch.allclose(got.log_evidence, ref, rtol=1e-4, atol=1e-3 * float(ref.abs().max()))


def test_init_components_sets_the_principal_directions(small_run, monkeypatch):
    """``init_components`` is the number of principal directions the starting K-means clusters (default K − 1)."""
    import cryolens.class3d.engine as engine
    star, _, _ = small_run
    seen = []
    real = engine.variability_coordinates

    def spy(*a, **kw):
        z = real(*a, **kw)
        seen.append(z.shape[1])
        return z
    monkeypatch.setattr(engine, "variability_coordinates", spy)
    for comps, want in ((None, 2), (1, 1)):
        parts, ref, p = _small_params(star, classes=3, iterations=1, skip_align=True, init_components=comps,
                                      init_iterations=2)
        engine.classify_3d(lambda: parts.batches(p.batch_size), parts.table(), ref, pixel_size=parts.pixel_size,
                           params=p)
        assert seen[-1] == want
