"""2D classification's empty class (``--empty-class``) and power-matched references (``--match-power``), both
off by default (see the README's class2d section for why).

Images without particle signal (empty boxes, edge-cut particles) fit a weak class average better than a strong
one, and a class holding them averages weaker still, so without these two a weak class gathers them together with
faint good particles. The empty class is class K+1, held at zero; the references scored are the averages with the
weak ones scaled up to the median class's power.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cryolens.class2d import Class2DParams, classify_2d
from cryolens.class2d.iteration import MATCH_FRACTION, MATCH_FROM, RESEED_FRACTION, scored_classes
from cryolens.class2d.state import Class2DState
from cryolens.io import read_mrc, read_particles, write_mrc, write_particles
from cryolens.jobs.particles import open_particles
from test_class2d import APIX, BOX, make_views


def test_scored_classes_scale_weak_live_classes_up_to_the_median_power():
    k, n = 5, 16
    state = Class2DState.empty(10, k + 1, n)
    base = torch.randn(k + 1, n, n)
    base[-1] = 0.0  # the empty class
    amplitude = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.2, 0.0])
    state.classes = base / base.pow(2).sum((-2, -1), keepdim=True).clamp_min(1e-30).sqrt() * amplitude[:, None, None]
    dead = 0.2 * RESEED_FRACTION / k
    state.class_weights = torch.tensor([0.3, 0.2, 0.2, 0.29, dead, 0.01 - dead])
    params = Class2DParams(classes=k, iterations=20, empty_class=True, match_power=True)
    start = max(MATCH_FROM, math.ceil(MATCH_FRACTION * params.iterations))
    out = scored_classes(state, params, start)
    power = out.pow(2).sum((-2, -1))
    # live: classes 0-3 (powers 1, 0.25, 4, 1: median 1); class 4 is below the reseeding share, so left alone
    assert torch.allclose(power[:4], torch.tensor([1.0, 1.0, 4.0, 1.0]), rtol=1e-5)
    assert torch.allclose(out[1], state.classes[1] * 2.0, rtol=1e-5)
    assert torch.equal(out[4], state.classes[4]) and torch.equal(out[5], torch.zeros(n, n))
    assert torch.equal(out[0], state.classes[0]) and torch.equal(out[2], state.classes[2])
    assert scored_classes(state, params, start - 1) is state.classes
    assert scored_classes(state, Class2DParams(classes=k, empty_class=True), start) is state.classes
    assert params.model_classes() == k + 1 and Class2DParams(classes=k).model_classes() == k


def _views_and_empty_boxes(folder, n_views: int, n_empty: int, seed: int):
    """The three-view set of ``n_views`` images and ``n_empty`` pure-noise images of the same noise level (with
    CTF columns like the particles'), shuffled; returns the STAR file and a mask of the empty boxes."""
    star, _, _ = make_views(folder / "views", n=n_views, snr=0.1, seed=seed)
    optics, parts = read_particles(star)
    images = np.array(read_mrc(folder / "views" / "particles.mrcs")[0])
    rng = np.random.default_rng(seed + 100)
    noise = rng.standard_normal((n_empty, BOX, BOX)).astype(np.float32) * float(images.std())
    order = rng.permutation(n_views + n_empty)
    stack = np.concatenate([images, noise])[order]
    empty = (order >= n_views)
    extra = parts.iloc[rng.integers(0, n_views, n_empty)]
    table = pd.concat([parts, extra], ignore_index=True).iloc[order].reset_index(drop=True)
    write_mrc(folder / "mixed.mrcs", stack, APIX, is_stack=True)
    table["rlnImageName"] = [f"{i + 1:06d}@{folder / 'mixed.mrcs'}" for i in range(len(table))]
    write_particles(folder / "mixed.star", optics, table)
    return folder / "mixed.star", empty


@pytest.mark.parametrize("seed", [0, 5])
def test_empty_boxes_gather_in_the_empty_class(tmp_path, seed):
    """With 20 % pure-noise images among three views (K 4, SNR 0.1) the noise images end in the empty class (K+1),
    whose average is zero, and no particle does, which leaves all K classes to the particles; without the empty
    class one of the K holds the noise (measured on data seeds 0-7: 59-60 of the 60 noise images and at most one
    particle in the empty class; without it, one class of the four holds all 60)."""
    star, empty = _views_and_empty_boxes(tmp_path, 240, 60, seed)
    parts = open_particles(star, pose=False)
    runs = [classify_2d(lambda: parts.batches(64), parts.table(), pixel_size=APIX, box=BOX,
                        params=Class2DParams(classes=4, iterations=10, particle_diameter=200.0, res_start=30.0,
                                             res_end=16.0, **kw))
            for kw in ({"empty_class": True, "match_power": True}, {})]
    res, without = runs
    assert res.classes.shape == (5, BOX, BOX) and not res.classes[4].any() and res.classes[:4].any(axis=(1, 2)).all()
    assert not np.isfinite(res.resolution[4]) and without.classes.shape == (4, BOX, BOX)
    in_empty = res.particle_class == 4
    assert in_empty[empty].mean() >= 0.95 and in_empty[~empty].sum() <= 2, (in_empty[empty].mean(),
                                                                              in_empty[~empty].sum())
    noise_share = [(without.particle_class[empty] == c).mean() for c in range(4)]
    assert max(noise_share) >= 0.95, noise_share


@pytest.mark.slow
def test_default_classification_of_real_particles_keeps_them_in_classes(tmp_path, shared_data):
    """242 real beta-galactosidase particles (3.54 Å/px, box 64), K 5, the defaults: every class is populated and
    none takes most of the particles. (With ``--empty-class`` the empty class took 236 of them, measured 2026-12-05,
    which is why it is off by default.)"""
    root = shared_data / "metadata" / "relion5_betagal_project"
    table = read_particles(root / "Extract/job009/Movies/20170629_00021_frameImage_extract.star", pixel_size=3.54,
                           image_size=64)[1]
    table["rlnImageName"] = [f"{n.split('@')[0]}@{root / n.split('@')[1]}" for n in table["rlnImageName"]]
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [3.54], "rlnImageSize": [64], "rlnImageDimensionality": [2]})
    write_particles(tmp_path / "p.star", optics, table.drop(columns=["rlnClassNumber", "rlnAnglePsi"]).assign(
        rlnOpticsGroup=1))
    parts = open_particles(tmp_path / "p.star", pose=False)
    res = classify_2d(lambda: parts.batches(128), parts.table(), pixel_size=3.54, box=64,
                      params=Class2DParams(classes=5, particle_diameter=200.0))
    counts = np.bincount(res.particle_class, minlength=5)
    assert len(counts) == 5 and (counts > 0).all() and counts.max() <= 0.75 * len(parts), counts
