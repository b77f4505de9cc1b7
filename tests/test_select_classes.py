"""``cryolens select classes`` (--class, --auto) and ``select particles --max-zscore`` on fabricated folders.

The class folder is made here, as a 2D classification would write it: good classes are
projections of the asymmetric phantom at different views (plus a little noise), junk
classes are an empty average (noise only), a dense round blob (ice), a carbon edge and a particle cut
by the box edge. ``--auto`` must keep every good class and drop every junk class; the
selected particles must be exactly those of the kept classes, in their hard counts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryolens.core.projector import SliceGrid, prepare_volume, project
from cryolens.core.fourier import ift2
from cryolens.core.rotations import euler_to_matrix
from cryolens.io import read_mrc, read_particles, read_star, write_mrc, write_particles, write_star
from cryolens.select.class_scores import class_features, hard_counts, score_classes
from cryolens.select.screen import image_statistics, robust_zscores
from cryolens.simulate.phantom import asymmetric_phantom

BOX, APIX, DIAMETER = 48, 3.0, 120.0
N_GOOD = 6
JUNK = ("empty", "blob", "carbon", "cut")


def cli(*args: str, code: int = 0):
    from conftest import invoke_cli
    return invoke_cli(*args, code=code)


def fabricated_averages(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``(K, BOX, BOX)`` averages: N_GOOD phantom views then the JUNK kinds; and the kind of each."""
    gen = torch.Generator().manual_seed(seed)
    fvol = prepare_volume(asymmetric_phantom(BOX))
    angles = torch.rand(N_GOOD, 2, generator=gen) * torch.tensor([360.0, 180.0])
    rot = euler_to_matrix(angles[:, 0], angles[:, 1], torch.zeros(N_GOOD))
    good = ift2(project(fvol, rot, torch.zeros(N_GOOD, 2), grid=SliceGrid.build(BOX, "cpu")), BOX)
    scale = float(good.std())
    yy, xx = (torch.arange(BOX, dtype=torch.float32) - BOX // 2,) * 2
    yy, xx = torch.meshgrid(yy, xx, indexing="ij")
    blob = 20 * scale * torch.exp(-(xx ** 2 + yy ** 2) / (2 * 6.0 ** 2))
    carbon = 2 * scale * torch.sigmoid((xx * 0.8 + yy * 0.6 - 4) / 0.7)
    cut = torch.roll(good[0], shifts=(int(0.4 * BOX), int(0.1 * BOX)), dims=(0, 1))
    cut[: int(0.4 * BOX)] = 0
    empty = torch.zeros(BOX, BOX)
    avgs = torch.cat([good, torch.stack([empty, blob, carbon, cut])])
    avgs = avgs + 0.15 * scale * torch.randn(avgs.shape, generator=gen)
    return avgs.numpy(), ["good"] * N_GOOD + list(JUNK)


@pytest.fixture
def class_folder(tmp_path):
    """A 2D classification folder with 10 classes and 400 particles (class 8 = blob is empty of particles)."""
    avgs, kinds = fabricated_averages()
    d = tmp_path / "class2d"
    d.mkdir()
    write_mrc(d / "classes.mrcs", avgs, APIX)
    k = len(avgs)
    rng = np.random.default_rng(1)
    counts = rng.integers(20, 60, k)
    counts[7] = 0
    cls = np.repeat(np.arange(1, k + 1), counts)
    rng.shuffle(cls)
    n = len(cls)
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{i + 1:06d}@{d}/classes.mrcs" for i in range(k)],
        "rlnClassDistribution": rng.dirichlet(np.ones(k)),  # soft: disagrees with the hard counts on purpose
        "rlnEstimatedResolution": [12.0, 13, 12.5, 14, 12, 13] + [40.0, 30, 35, 25],
        "rlnAccuracyRotations": 5.0, "rlnAccuracyTranslationsAngst": 1.0,
        "rlnClassNumber": np.arange(1, k + 1),
    })
    write_star(d / "classes.star", {"model_classes": classes})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [APIX], "rlnImageSize": [BOX], "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)], "rlnOpticsGroup": 1,
                              "rlnClassNumber": cls, "rlnAnglePsi": rng.uniform(0, 360, n),
                              "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0,
                              "rlnMaxValueProbDistribution": rng.uniform(0.2, 1, n)})
    write_particles(d / "particles.star", optics, particles)
    (d / "job.json").write_text('{"params": {"particle_diameter": %g}}' % DIAMETER)
    return d, kinds, counts


def test_scores_separate_good_from_each_junk_kind():
    avgs, kinds = fabricated_averages(seed=2)
    feats = class_features(avgs, pixel_size=APIX, diameter=DIAMETER)
    s = score_classes(feats, counts=np.full(len(avgs), 40), pixel_size=APIX, diameter=DIAMETER)
    good = np.array(kinds) == "good"
    assert (s.score[good] >= 0.6).all(), s.assign(kind=kinds)
    assert (s.score[~good] < 0.4).all(), s.assign(kind=kinds)
    assert hard_counts(np.array([1, 1, 3, 7]), 3).tolist() == [2, 0, 1]


def test_select_classes_auto_keeps_good_classes_with_hard_counts(class_folder, tmp_path):
    d, kinds, counts = class_folder
    out = tmp_path / "sel"
    res = cli("select", "classes", "--in", str(d), "--auto", "--min-particle-z", "0", "--max-image-z", "0", "--out",
              str(out))
    assert "kept" in res.output
    good = [i + 1 for i, k in enumerate(kinds) if k == "good"]
    _, kept = read_particles(out / "particles.star")
    _, rejected = read_particles(out / "rejected.star")
    assert sorted(set(kept.rlnClassNumber)) == good
    assert len(kept) + len(rejected) == counts.sum()
    sel = read_star(out / "classes.star")["model_classes"]
    assert sel.rlnClassNumber.tolist() == good
    # hard counts: what the class table says is what particles.star holds (RELION #815)
    assert sel.rlnCryolensParticleCount.tolist() == kept.rlnClassNumber.value_counts().sort_index().tolist()
    assert sel.rlnCryolensParticleCount.tolist() == [int(counts[c - 1]) for c in good]
    stack, apix = read_mrc(out / "classes.mrcs")
    avgs, _ = read_mrc(d / "classes.mrcs")
    np.testing.assert_array_equal(stack, avgs[np.array(good) - 1])
    assert apix == pytest.approx(APIX)
    assert sel.rlnReferenceImage.iloc[1].startswith("000002@") and sel.rlnReferenceImage.iloc[1].endswith("classes.mrcs")
    scores = read_star(out / "class_scores.star")["class_scores"]
    assert scores.kept.tolist() == [int(k == "good") for k in kinds] and (out / "classes.png").stat().st_size > 0
    assert (out / "report.html").exists()


def test_select_classes_by_list_and_the_templates_are_pickable(class_folder, tmp_path):
    d, _, counts = class_folder
    out = tmp_path / "sel"
    cli("select", "classes", "--in", str(d), "--class", "2,5,9", "--out", str(out))
    _, kept = read_particles(out / "particles.star")
    assert sorted(set(kept.rlnClassNumber)) == [2, 5, 9] and len(kept) == counts[[1, 4, 8]].sum()
    from conftest import job_results
    r = job_results(out)
    assert r["kept_classes"] == [2, 5, 9] and r["n_kept"] == len(kept) and r["counts"]["2"] == counts[1]
    stack, _ = read_mrc(out / "classes.mrcs")
    assert stack.shape == (3, BOX, BOX)


def test_select_classes_errors(class_folder, tmp_path):
    from conftest import assert_user_error
    d, _, _ = class_folder
    assert_user_error(cli("select", "classes", "--in", str(d), "--class", "8", "--out", str(tmp_path / "a"),
                          code=2), "hold no particles")
    assert not (tmp_path / "a").exists()
    noise = np.random.default_rng(3).normal(0, 1, (10, BOX, BOX)).astype(np.float32)
    write_mrc(tmp_path / "noise.mrcs", noise, APIX)
    (d / "classes.mrcs").rename(tmp_path / "kept.mrcs")
    (tmp_path / "noise.mrcs").rename(d / "classes.mrcs")  # every class an empty box
    assert_user_error(cli("select", "classes", "--in", str(d), "--auto", "--out", str(tmp_path / "b"), code=2),
                      "no class scored at least --min-score 0.5")
    assert not (tmp_path / "b").exists()
    assert_user_error(cli("select", "classes", "--in", str(d), "--class", "11", "--out", str(tmp_path / "c"),
                          code=2), "--class 11", "no such class")
    assert_user_error(cli("select", "classes", "--in", str(d), "--out", str(tmp_path / "d"), code=2),
                      "--class", "--auto")
    assert_user_error(cli("select", "classes", "--in", str(d), "--auto", "--class", "1", "--out",
                          str(tmp_path / "d"), code=2), "not both")
    assert_user_error(cli("select", "classes", "--in", str(tmp_path / "nope"), "--auto", "--out",
                          str(tmp_path / "e"), code=2), "no such folder")
    assert_user_error(cli("select", "classes", "--in", str(d), "--auto", "--min-particle-z", "-1", "--out",
                          str(tmp_path / "g"), code=2), "--min-particle-z -1")
    assert_user_error(cli("select", "classes", "--in", str(d), "--auto", "--max-image-z", "-1", "--out",
                          str(tmp_path / "g"), code=2), "--max-image-z -1")
    (d / "classes.mrcs").unlink()
    assert_user_error(cli("select", "classes", "--in", str(d), "--auto", "--out", str(tmp_path / "f"), code=2),
                      "classes.mrcs", "missing")


def write_class_folder(d: Path, images: np.ndarray, averages: np.ndarray, **columns) -> None:
    """A 2D classification folder ``d``: ``images`` as the particle stack, the first two ``averages`` as classes
    1 and 2, and particles.star with the per-particle ``columns``."""
    d.mkdir()
    write_mrc(d / "particles.mrcs", images, APIX)
    write_mrc(d / "classes.mrcs", averages[:2], APIX)
    write_star(d / "classes.star", {"classes": pd.DataFrame({"rlnClassNumber": [1, 2]})})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [APIX], "rlnImageSize": [BOX],
                           "rlnImageDimensionality": [2], "rlnVoltage": [300.0]})
    table = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{d}/particles.mrcs" for i in range(len(images))],
                          "rlnOpticsGroup": 1, **columns})
    write_particles(d / "particles.star", optics, table)


def test_particles_that_do_not_fit_their_class_are_dropped(tmp_path):
    """Class 1: 60 particles = its average rotated by psi, shifted by -origin, plus noise (z ≈ 8); 40 = noise only."""
    from cryolens.select.particle_fit import rotate_each
    from cryolens.core.fourier import ft2, shift_phase
    avgs, _ = fabricated_averages()
    rng = np.random.default_rng(4)
    n_sig, n = 60, 100
    psi = rng.uniform(-180, 180, n).astype(np.float32)
    origin = rng.uniform(-2, 2, (n, 2)).astype(np.float32)
    a = torch.as_tensor(avgs[:1]).expand(n, BOX, BOX)
    clean = ift2(shift_phase(ft2(rotate_each(a, torch.as_tensor(psi))), -torch.as_tensor(origin), BOX), BOX).numpy()
    clean[n_sig:] = 0
    sigma = clean[0].std() / math.sqrt(0.05)  # SNR 0.05
    imgs = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    d = tmp_path / "c"
    # class 2 (the last 5) is not selected: its particles are not scored
    write_class_folder(d, imgs, avgs, rlnClassNumber=1 + (np.arange(n) >= n - 5), rlnAnglePsi=psi,
                       rlnOriginXAngst=origin[:, 0] * APIX, rlnOriginYAngst=origin[:, 1] * APIX)
    out = tmp_path / "sel"
    cli("select", "classes", "--in", str(d), "--class", "1", "--min-particle-z", "3", "--particle-diameter",
        str(DIAMETER), "--out", str(out))
    _, kept = read_particles(out / "particles.star")
    _, rejected = read_particles(out / "rejected.star")
    idx = kept.rlnImageName.str[:6].astype(int).to_numpy() - 1
    assert set(idx) == set(range(n_sig)), sorted(set(range(n_sig)) ^ set(idx))
    assert (kept.rlnCryolensClassFitZ > 5).all() and (rejected.rlnCryolensClassFitZ[:35] < 3).all()
    assert (rejected.rlnCryolensClassFitZ.iloc[-5:] == -999).all()
    sel = read_star(out / "classes.star")["classes"]
    assert sel.rlnCryolensParticleCount.tolist() == [n_sig]


def test_select_classes_drops_outlying_images(tmp_path):
    """--max-image-z: images whose statistics stand out from the stack (carbon-like offset, ice-like variance) go."""
    avgs, _ = fabricated_averages()
    rng = np.random.default_rng(5)
    n, bad = 120, [3, 50, 99]
    imgs = rng.normal(0, 1, (n, BOX, BOX)).astype(np.float32)
    imgs[3] += 2.0
    imgs[50] *= 3.0
    imgs[99, : BOX // 2] += 4.0  # an edge
    d = tmp_path / "c"
    write_class_folder(d, imgs, avgs, rlnClassNumber=1 + (np.arange(n) >= n - 10))
    cli("select", "classes", "--in", str(d), "--class", "1", "--max-image-z", "5", "--out", str(tmp_path / "sel"))
    _, kept = read_particles(tmp_path / "sel" / "particles.star")
    _, rejected = read_particles(tmp_path / "sel" / "rejected.star")
    gone = sorted(set(rejected.rlnImageName.str[:6].astype(int) - 1) - set(range(n - 10, n)))
    assert gone == bad and len(kept) == n - 10 - len(bad) and (kept.rlnCryolensZScore <= 5).all()
    from conftest import job_results
    assert job_results(tmp_path / "sel")["n_dropped_by_image_z"] == len(bad)


def test_select_classes_drops_particles_with_outlying_loglik(tmp_path):
    """--max-loglik-z: particles whose rlnLogLikeliContribution lies far below the others' (robust z over all
    particles) go, with their z in rlnCryolensLogLikeliZ; without the column the option is an error."""
    from conftest import assert_user_error, job_results
    from cryolens.select.screen import loglik_zscores
    avgs, _ = fabricated_averages()
    rng = np.random.default_rng(6)
    n, bad = 200, [7, 42, 150]
    ll = rng.normal(-5000.0, 20.0, n)
    ll[bad] = [-5200.0, -5500.0, -9000.0]  # blobs, carbon: far worse fits than the rest
    ll[11] = -4800.0  # a better fit than the rest is no reason to drop
    z = loglik_zscores(ll)
    assert set(np.flatnonzero(z < -3)) == set(bad) and z[11] > 3 and abs(float(np.median(z))) < 0.1
    assert np.isnan(loglik_zscores(np.array([1.0, np.nan, 2.0, 3.0]))[1])
    d = tmp_path / "c"
    imgs = rng.normal(0, 1, (n, BOX, BOX)).astype(np.float32)
    write_class_folder(d, imgs, avgs, rlnClassNumber=1 + (np.arange(n) >= n - 20), rlnLogLikeliContribution=ll)
    cli("select", "classes", "--in", str(d), "--class", "1,2", "--max-loglik-z", "3", "--out", str(tmp_path / "sel"))
    _, kept = read_particles(tmp_path / "sel" / "particles.star")
    _, rejected = read_particles(tmp_path / "sel" / "rejected.star")
    assert sorted(rejected.rlnImageName.str[:6].astype(int) - 1) == bad and len(kept) == n - len(bad)
    assert (kept.rlnCryolensLogLikeliZ >= -3).all() and (rejected.rlnCryolensLogLikeliZ < -3).all()
    assert job_results(tmp_path / "sel")["n_dropped_by_loglik_z"] == len(bad)
    d2 = tmp_path / "no_ll"
    write_class_folder(d2, imgs, avgs, rlnClassNumber=1 + (np.arange(n) >= n - 20))
    assert_user_error(cli("select", "classes", "--in", str(d2), "--class", "1", "--max-loglik-z", "3", "--out",
                          str(tmp_path / "sel2"), code=2), "rlnLogLikeliContribution", "--max-loglik-z 0")


def test_screen_particles_by_zscore(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    imgs = rng.normal(0, 1, (n, 32, 32)).astype(np.float32)
    bad = [5, 77, 150, 299]
    imgs[5] += 3.0           # offset mean (e.g. carbon)
    imgs[77] *= 4.0          # high variance (ice)
    imgs[150] *= 0.05        # nearly empty (off the micrograph)
    imgs[299, 3, 3] = 80.0   # a hot pixel
    z = robust_zscores(image_statistics([(np.arange(n), imgs)], n))
    assert set(np.flatnonzero(z > 6)) == set(bad)
    write_mrc(tmp_path / "stack.mrcs", imgs, 2.0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnImageSize": [32],
                           "rlnImageDimensionality": [2], "rlnVoltage": [300.0]})
    table = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)], "rlnOpticsGroup": 1})
    write_particles(tmp_path / "p.star", optics, table)
    cli("select", "particles", "--in", str(tmp_path / "p.star"), "--max-zscore", "6", "--out", str(tmp_path / "s"))
    _, kept = read_particles(tmp_path / "s" / "particles.star")
    _, rejected = read_particles(tmp_path / "s" / "rejected.star")
    assert len(kept) == n - 4 and sorted(rejected.rlnImageName.str[:6].astype(int) - 1) == bad
    assert "rlnCryolensZScore" in kept.columns and (kept.rlnCryolensZScore <= 6).all()
    assert math.isfinite(kept.rlnCryolensZScore.max())
    from conftest import assert_user_error
    assert_user_error(cli("select", "particles", "--in", str(tmp_path / "p.star"), "--max-zscore", "0", "--out",
                          str(tmp_path / "t"), code=2), "--max-zscore 0")
    res = cli("select", "micrographs", "--in", str(tmp_path / "p.star"), "--max-zscore", "3", "--out",
              str(tmp_path / "u"), code=2)
    assert "No such option" in res.output or "--max-zscore" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("structure,spec,apix,diameter,seed", [
    # haemoglobin was xfail (79.2 % junk dropped; one class took 950-1 130 of the 3 000 particles and cut, carbon
    # and empty particles hid in it). Reseeding by signal gain and --max-image-z 5 (tuned on seed 5), measured
    # 2026-12-04 with one thread: seed 11 83.7 / 90.7 %, seed 21 87.5 / 86.0 % (seed 5 83.7 / 89.9 %). Rerun later
    # that day (one thread, select --particle-diameter 80): seed 11 82.7 / 91.8 %, 21 87.7 / 86.0 %, but seed 5
    # 87.7 / 80.3 %: the classification is chaotic (a third of the particles change class each iteration).
    # After class2d's DC fix and finer psi step, and select's z 3.5 / --max-loglik-z 3 / edge weight 0.5 / dense
    # contrast (3 - c) / 2 (2026-12-04, one thread): seed 5 86.3 / 88.3 %, 11 82.2 / 90.5 %, 21 84.3 / 90.8 %,
    # 31 82.8 / 90.8 %; ribosome seed 12 95.0 / 99.5 %. With the averages written on a zero background (2026-12-05,
    # one thread, benchmarks/class2d.py --accuracy): seed 11 89.8 / 90.0 %, ribosome seed 12 86.8 / 99.5 %; with
    # --empty-class --match-power, the defaults again since, and the empty class's prior capped: 88.2 / 92.1 % and
    # 97.8 / 99.3 %.
    ("haemoglobin", "maps/emd_3488.mrc", 1.5, 80.0, 11),
    ("ribosome", "maps/clean70SRibosome_vol_65p.mrc:apix=4", 4.0, 230.0, 12),
])
def test_class2d_then_auto_selection_drops_the_junk(tmp_path, shared_data, structure, spec, apix, diameter, seed):
    """The issue's accuracy check: 3 000 particles, box 64, SNR 0.05, CTF, 20 % junk; after class2d and
    ``select classes --auto``, >= 80 % of the junk is dropped and >= 85 % of the good particles kept.
    (The scores were tuned on the phantom and on other seeds, not on these sets.)"""
    pytest.importorskip("cryolens.jobs.class2d")
    from conftest import run_cli
    run_cli("simulate", "particles", "--structure", str(shared_data / spec), "--pixel-size", str(apix), "--box", "64",
            "--n", "3000", "--snr", "0.05", "--defocus", "10000", "25000", "--junk", "0.2", "--seed", str(seed),
            "--out", "sim", "--quiet", cwd=tmp_path)
    run_cli("class2d", "--in", "sim/particles.star", "--out", "c2d", "--classes", "20", "--particle-diameter",
            str(diameter), "--quiet", cwd=tmp_path)
    run_cli("select", "classes", "--in", "c2d", "--auto", "--out", "sel", cwd=tmp_path)
    _, truth = read_particles(tmp_path / "sim" / "particles.star")
    _, kept = read_particles(tmp_path / "sel" / "particles.star")
    is_kept = truth.rlnImageName.isin(kept.rlnImageName).to_numpy()
    junk = truth.rlnCryolensJunk.to_numpy() == 1
    assert 1 - is_kept[junk].mean() >= 0.8 and is_kept[~junk].mean() >= 0.85, \
        (1 - is_kept[junk].mean(), is_kept[~junk].mean())
