"""Junk in ``cryolens simulate particles --junk F``: kinds, counts, truth columns, and good particles untouched.

Checks are analytic: noise-free empty boxes are zero, a cut particle's mass lies off-centre
where its origin says, a carbon edge carries as much signal outside the particle circle as
inside, a blob is centred, and the good particles are bit-identical to a run without junk.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cryolens.simulate.junk import JUNK_COLUMN, JUNK_KIND_COLUMN, JUNK_KINDS
from cryolens.simulate.particles import ParticleSimParams, simulate_particles
from cryolens.simulate.phantom import asymmetric_phantom

N, BOX, APIX = 200, 48, 3.0


def _stack(**kw):
    sim = simulate_particles(asymmetric_phantom(BOX), pixel_size=APIX,
                             params=ParticleSimParams(n_particles=N, seed=3, batch_size=64, **kw))
    return sim, np.concatenate([im for _, im in sim.batches])


@pytest.fixture(scope="module")
def clean():
    return _stack(snr=math.inf, junk=0.2), _stack(snr=math.inf)


def test_junk_counts_kinds_and_truth_columns(clean):
    (sim, _), (plain, _) = clean
    p = sim.particles
    assert p[JUNK_COLUMN].sum() == round(0.2 * N) == sum(sim.info["junk_counts"].values())
    counts = p[JUNK_KIND_COLUMN].value_counts()
    assert counts["good"] == N - 40 and all(counts[k] == 10 for k in JUNK_KINDS)
    assert ((p[JUNK_COLUMN] == 1) == (p[JUNK_KIND_COLUMN] != "good")).all()
    same = [c for c in plain.particles.columns if c not in ("rlnOriginXAngst", "rlnOriginYAngst")]
    assert p[same].equals(plain.particles[same])
    cut = p[JUNK_KIND_COLUMN] == "cut"
    r = np.hypot(p.rlnOriginXAngst, p.rlnOriginYAngst) / APIX
    assert (r[cut] >= 0.3 * BOX - 1e-6).all() and (r[cut] <= 0.5 * BOX * math.sqrt(2)).all()


def test_junk_images_of_each_kind(clean):
    (sim, img), (_, plain) = clean
    kind = sim.particles[JUNK_KIND_COLUMN].to_numpy()
    good = kind == "good"
    np.testing.assert_array_equal(img[good], plain[good])  # junk leaves the good particles as they were
    assert np.abs(img[kind == "empty"]).max() == 0
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    inside = np.hypot(yy, xx) < BOX / 4
    sd_in, sd_out = img[:, inside].std(1), img[:, ~inside].std(1)
    assert np.median(sd_out[kind == "carbon"] / sd_in[kind == "carbon"]) > 0.5
    assert np.median(sd_out[good] / sd_in[good]) < 0.5
    for k, near in (("blob", True), ("cut", False)):
        p = np.clip(img[kind == k], 0, None) ** 2
        com = np.hypot((p * xx).sum((1, 2)), (p * yy).sum((1, 2))) / p.sum((1, 2))
        assert (np.median(com) < BOX * 0.15) == near, (k, com)
    cut = np.flatnonzero(kind == "cut")
    p = np.clip(img[cut], 0, None) ** 2
    cx, cy = (p * xx).sum((1, 2)) / p.sum((1, 2)), (p * yy).sum((1, 2)) / p.sum((1, 2))
    ox = -sim.particles.rlnOriginXAngst.to_numpy()[cut] / APIX  # the particle sits at -origin
    oy = -sim.particles.rlnOriginYAngst.to_numpy()[cut] / APIX
    assert np.median(np.cos(np.arctan2(cy, cx) - np.arctan2(oy, ox))) > 0.9


def test_junk_with_noise_and_bounds(tmp_path):
    sim, img = _stack(snr=0.1, junk=0.5)
    assert np.isfinite(img).all() and sim.particles[JUNK_COLUMN].sum() == N // 2
    kind = sim.particles[JUNK_KIND_COLUMN].to_numpy()
    np.testing.assert_allclose(img[kind == "empty"].std(), sim.noise_sigma, rtol=0.05)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="--junk"):
            ParticleSimParams(junk=bad).validate()


def test_cli_junk_column_reaches_the_star(tmp_path):
    from conftest import invoke_cli
    from cryolens.io import read_particles
    invoke_cli("simulate", "particles", "--n", "40", "--box", "32", "--junk", "0.25", "--out", str(tmp_path / "s"),
               "--quiet")
    _, p = read_particles(tmp_path / "s" / "particles.star")
    assert p[JUNK_COLUMN].sum() == 10 and set(p[JUNK_KIND_COLUMN]) == {"good", *JUNK_KINDS}


def test_cli_impossible_junk_fraction_exits_2(tmp_path):
    from conftest import assert_user_error, invoke_cli
    assert_user_error(invoke_cli("simulate", "particles", "--n", "10", "--junk", "1.5", "--out", str(tmp_path / "s"),
                                 code=2), "--junk 1.5")
    assert not (tmp_path / "s").exists()
