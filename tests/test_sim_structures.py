"""Simulator structures, pose distributions, heterogeneity and dose noise.

Ground truth: the real haemoglobin map EMD-3488 and its model 5ME2 (shared data),
tabulated electron scattering factors, the analytic von Mises–Fisher mean cosine,
Poisson statistics, and RELION 3.1's STAR reader.
"""

from __future__ import annotations

import math
import subprocess
import warnings
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest
import starfile
import torch
from conftest import SHARED_DATA, run_cli
from helpers import correlation
from scipy import stats

from cryolens.core.fourier import bandpass
from cryolens.errors import InputError
from cryolens.io import read_mrc
from cryolens.jobs.structures import load_morph, load_structures, parse_spec
from cryolens.params import apply_preset
from cryolens.simulate.particles import (
    MORPH_COLUMN,
    PARTICLE_PRESETS,
    ParticleSimParams,
    simulate_particles,
)
from cryolens.simulate.poses import sample_rotations, viewing_directions, vmf_mean_cosine
from cryolens.simulate.structures import (
    SCATTERING_PER_DALTON,
    Structure,
    model_scattering_power,
    model_to_map,
    morph_volume,
    phantom_structure,
    relativistic_phase_scale,
)


@pytest.fixture(scope="module")
def hb_model():
    path = SHARED_DATA / "models" / "5me2.pdb"
    if not path.is_file():
        pytest.skip("shared data not found")
    return gemmi.read_structure(str(path))


def _centroid(vol: torch.Tensor) -> np.ndarray:
    n = vol.shape[-1]
    g = torch.arange(n, dtype=torch.float64)
    w = vol.double()
    return np.array([float((w.sum(dim=(0, 1)) * g).sum()), float((w.sum(dim=(0, 2)) * g).sum()),
                     float((w.sum(dim=(1, 2)) * g).sum())]) / float(w.sum())  # (x, y, z)


# ------------------------------------------------------------------ atomic model -> map

def test_model_map_matches_emd_3488(hb_model, shared_data):
    """5ME2 at its deposited coordinates vs the real map (100³, 1.05 Å): measured r = 0.70 at 4 Å."""
    real, apix = read_mrc(shared_data / "maps" / "emd_3488.mrc")
    assert apix == pytest.approx(1.05)
    ours = model_to_map(hb_model, pixel_size=1.05, box=100, keep_coordinates=True)
    real = torch.from_numpy(real.copy())
    lp = lambda v: bandpass(v, pixel_size=1.05, high_res=4.0, ndim=3)  # noqa: E731
    c = float(correlation(lp(ours), lp(real)))
    assert c > 0.6, c
    # the same map in the wrong axis order would not correlate: the (z, y, x) layout is right
    assert float(correlation(lp(ours.permute(2, 1, 0).contiguous()), lp(real))) < 0.3


def test_model_map_integrates_to_scattering_power(hb_model):
    """∫ρ = Σ occ·f_e(0) (electron form factors at s = 0, International Tables C 4.3.2.2)."""
    f0 = {"C": 2.5088, "N": 2.2135, "O": 1.9834, "S": 5.1604, "Fe": 7.1637}
    counts: dict[str, float] = {}
    for ch in hb_model[0]:
        for res in ch:
            for at in res:
                counts[at.element.name] = counts.get(at.element.name, 0.0) + at.occ
    expected = sum(f0[e] * c for e, c in counts.items())
    assert model_scattering_power(hb_model[0]) == pytest.approx(expected, rel=1e-4)
    vol = model_to_map(hb_model, pixel_size=1.05, box=100)
    assert float(vol.double().sum()) * 1.05 ** 3 == pytest.approx(expected, rel=0.005)
    # per dalton of the chains' mass with hydrogens: the constant that calibrates the phantom and maps by mass
    st = hb_model.clone()
    st.setup_entities()
    polymers = [ch.get_polymer() for ch in st[0]]
    mass = sum(gemmi.calculate_sequence_weight([r.name for r in p]) for p in polymers)
    fe = sum(at.occ * f0[at.element.name] for p in polymers for r in p for at in r)
    assert fe / mass == pytest.approx(SCATTERING_PER_DALTON, rel=0.01)


@pytest.mark.parametrize("box, apix", [(100, 1.05), (63, 2.0)])
def test_model_map_centre_of_mass_at_box_centre(hb_model, box, apix):
    vol = model_to_map(hb_model, pixel_size=apix, box=box)
    assert np.abs(_centroid(vol) - box // 2).max() <= 0.5


def test_model_too_big_for_box_is_refused(hb_model):
    with pytest.raises(ValueError, match="does not fit"):
        model_to_map(hb_model, pixel_size=1.0, box=40)


# ------------------------------------------------------------------ specs and loading

def test_spec_parsing():
    assert parse_spec("phantom") == ("phantom", "phantom", {})
    assert parse_spec("phantom:seed=3") == ("phantom", "phantom", {"seed": 3})
    assert parse_spec("a.mrc:population=0.3,apix=1.1") == ("map", "a.mrc", {"population": 0.3, "apix": 1.1})
    assert parse_spec("m.cif:bfactor=60:keep_coordinates") == ("model", "m.cif", {"bfactor": 60.0,
                                                                                  "keep_coordinates": True})
    with pytest.raises(InputError, match="unknown option"):
        parse_spec("m.pdb:seed=1")


def test_load_structures_share_one_grid(shared_data, tmp_path):
    model = str(shared_data / "models" / "5me2.pdb")
    items = load_structures(["phantom", f"{model}:bfactor=60,population=3"], pixel_size=3.0, box=40)
    assert [s.box for s in items] == [40, 40] and {s.pixel_size for s in items} == {3.0}
    assert [s.units for s in items] == ["scattering", "scattering"] and items[1].population == 3.0
    # a map fixes the pixel size (Fourier resampling), the model follows it exactly
    items = load_structures([model, str(shared_data / "maps" / "emd_3488.mrc") + ":mass_kda=64.5"],
                            pixel_size=2.0, box=None)
    assert items[0].pixel_size == items[1].pixel_size == pytest.approx(1.05 * 100 / 52)
    assert items[0].box == items[1].box == 52 and items[1].units == "scattering"
    assert float(items[1].volume.sum()) * items[1].pixel_size ** 3 == pytest.approx(64500 * SCATTERING_PER_DALTON,
                                                                                     rel=1e-3)
    # a morph needs both ends on one scale
    with pytest.raises(InputError, match="mass_kda"):
        load_morph("phantom", str(shared_data / "maps" / "emd_3488.mrc"), pixel_size=2.1, box=50)


def _bad_map(path: Path, data: np.ndarray, voxel: float = 1.0) -> str:
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore")
        m.set_data(data.astype(np.float32))
        m.voxel_size = voxel
    return str(path)


def test_load_structures_bad_inputs(tmp_path, shared_data):
    (tmp_path / "junk.pdb").write_text("HEADER    nothing\nthis is not a coordinate file\n")
    nan = np.zeros((8, 8, 8))
    nan[1, 2, 3] = np.nan
    cases = [
        (str(tmp_path / "absent.pdb"), "file not found"),
        (str(tmp_path / "junk.pdb"), "no atoms"),
        (_bad_map(tmp_path / "flat.mrc", np.zeros((8, 8, 10))), "not a cubic volume"),
        (_bad_map(tmp_path / "nan.mrc", nan), "NaN"),
        (str(shared_data / "maps" / "clean70SRibosome_vol_65p.mrc"), "apix="),
    ]
    for spec, fragment in cases:
        with pytest.raises(InputError, match=fragment) as e:
            load_structures([spec], pixel_size=None, box=None)
        assert Path(spec.split(":")[0]).name in str(e.value)
    vol = load_structures([str(shared_data / "maps" / "clean70SRibosome_vol_65p.mrc") + ":apix=4"],
                          pixel_size=None, box=None)[0]
    assert vol.pixel_size == 4.0 and vol.box == 65


# ------------------------------------------------------------------ heterogeneity

def test_morph_endpoints_and_parameter():
    a = phantom_structure(24, 4.0, seed=1)
    b = phantom_structure(24, 4.0, seed=2)
    assert torch.equal(morph_volume(a.volume, b.volume, 0.0), a.volume)
    assert torch.equal(morph_volume(a.volume, b.volume, 1.0), b.volume)
    both = morph_volume(a.volume, b.volume, torch.tensor([0.0, 1.0]))
    assert torch.equal(both[0], a.volume) and torch.equal(both[1], b.volume)
    params = ParticleSimParams(n_particles=400, snr=math.inf, max_shift=0.0, ctf=False, seed=4)
    sim = simulate_particles(morph=(a, b), params=params)
    t = sim.particles[MORPH_COLUMN].to_numpy()
    assert t.min() >= 0 and t.max() <= 1 and stats.kstest(t, "uniform").pvalue > 1e-3
    # images are projections of (1 - t)·A + t·B: the particles nearest t = 0 / 1 look like A / B
    imgs = torch.tensor(np.concatenate([x for _, x in sim.batches]))
    pa = simulate_particles(structures=[a], params=params)
    pb = simulate_particles(structures=[b], params=params)
    ia = torch.tensor(np.concatenate([x for _, x in pa.batches]))
    ib = torch.tensor(np.concatenate([x for _, x in pb.batches]))
    tt = torch.tensor(t, dtype=torch.float32)[:, None, None]
    assert torch.allclose(imgs, (1 - tt) * ia + tt * ib, atol=1e-4 * float(ia.abs().max()))


def test_populations_are_respected():
    vols = [Structure(torch.zeros(16, 16, 16), 4.0, f"s{i}", p) for i, p in enumerate((0.2, 0.3, 0.5))]
    for s in vols:
        s.volume[8, 8, 8] = 1.0
    sim = simulate_particles(structures=vols, params=ParticleSimParams(n_particles=3000, seed=7))
    counts = np.bincount(sim.particles["rlnClassNumber"].to_numpy(), minlength=4)[1:]
    assert counts.sum() == 3000
    assert stats.chisquare(counts, 3000 * np.array([0.2, 0.3, 0.5])).pvalue > 1e-3
    assert sim.info["class_fractions"] == pytest.approx(list(counts / 3000))


# ------------------------------------------------------------------ poses

@pytest.mark.parametrize("kappa, frac", [(2.0, 0.0), (10.0, 0.0), (10.0, 0.3)])
def test_preferred_orientation_follows_vmf(kappa, frac):
    mu = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    g = torch.Generator().manual_seed(11)
    R = sample_rotations(20000, generator=g, distribution="preferred", direction=tuple(mu), concentration=kappa,
                         uniform_fraction=frac)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(20000, 3, 3), atol=1e-9)
    assert torch.allclose(torch.linalg.det(R), torch.ones(20000, dtype=R.dtype))
    v = viewing_directions(R).numpy()
    mean = v.mean(0)
    assert np.degrees(np.arccos(mean @ mu / np.linalg.norm(mean))) < 2.0
    assert (v @ mu).mean() == pytest.approx((1 - frac) * vmf_mean_cosine(kappa), abs=0.01)
    # psi is uniform
    from cryolens.core.rotations import matrix_to_euler
    psi = matrix_to_euler(R)[2].numpy()
    assert stats.kstest((psi + 180) / 360, "uniform").pvalue > 1e-3


def test_uniform_poses_have_uniform_cos_tilt():
    R = sample_rotations(20000, generator=torch.Generator().manual_seed(2))
    v = viewing_directions(R).numpy()
    assert stats.kstest((v[:, 2] + 1) / 2, "uniform").pvalue > 1e-3
    assert np.abs(v.mean(0)).max() < 0.02


def test_preferred_poses_reach_the_star_angles():
    params = ParticleSimParams(n_particles=2000, pose_distribution="preferred", preferred_direction=(0.0, 1.0, 0.0),
                               concentration=20.0, seed=5)
    df = simulate_particles(structures=[phantom_structure(16, 6.0)], params=params).particles
    rot, tilt = np.radians(df["rlnAngleRot"].to_numpy()), np.radians(df["rlnAngleTilt"].to_numpy())
    y = np.sin(tilt) * np.sin(rot)  # the viewing direction's y from RELION's Euler angles
    assert y.mean() == pytest.approx(vmf_mean_cosine(20.0), abs=0.01)


# ------------------------------------------------------------------ dose noise

def test_dose_noise_is_poisson():
    s = phantom_structure(32, 3.0)
    base = dict(n_particles=200, defocus_min=15000.0, defocus_max=20000.0, seed=3)
    clean = simulate_particles(structures=[s], params=ParticleSimParams(snr=math.inf, **base))
    noisy = simulate_particles(structures=[s], params=ParticleSimParams(dose=30.0, **base))
    c = np.concatenate([x for _, x in clean.batches]).astype(np.float64)
    x = np.concatenate([x for _, x in noisy.batches]).astype(np.float64)
    n0 = 30.0 * 3.0 ** 2
    k2 = 2 * relativistic_phase_scale(300.0) * 3.0 / math.sqrt(1 - 0.1 ** 2)
    assert noisy.info["electrons_per_pixel"] == pytest.approx(n0)
    r = x - c
    expected_var = (1 - k2 * c) / (n0 * k2 ** 2)  # Poisson: variance = mean counts, per pixel
    assert abs(r.mean()) < 3 * math.sqrt(expected_var.mean() / r.size)
    assert (r ** 2).sum() / expected_var.sum() == pytest.approx(1.0, abs=0.015)
    # recorded counts are integers: (N0 - counts) / (k2 N0) sits on a lattice of step 1 / (k2 N0)
    lattice = x * k2 * n0
    assert np.abs(lattice - np.round(lattice)).max() < 1e-2
    # white on black: the particle (centre) is brighter than the background (corners)
    mean = x.mean(0)
    assert mean[12:20, 12:20].mean() > mean[:6, :6].mean() + 3 * math.sqrt(expected_var.mean() / 200 / 36)


def test_dose_needs_scattering_units():
    arb = Structure(torch.ones(16, 16, 16), 2.0, "arb.mrc")
    with pytest.raises(ValueError, match="arb.mrc"):
        simulate_particles(structures=[arb], params=ParticleSimParams(n_particles=4, dose=40.0))


# ------------------------------------------------------------------ presets and CLI

def test_presets():
    assert PARTICLE_PRESETS["tutorial"]["box"] == 96 and PARTICLE_PRESETS["tutorial"]["pixel_size"] == 1.75
    assert PARTICLE_PRESETS["benchmark"]["box"] == 180 and PARTICLE_PRESETS["benchmark"]["pixel_size"] == 1.232
    p = apply_preset(ParticleSimParams(n_particles=10), "tutorial", explicit={"n_particles"})
    assert p.n_particles == 10 and p.snr == 0.05 and p.defocus_min == 8000.0  # the preset fills what was not given
    with pytest.raises(ValueError, match="--preset nope: unknown preset; use one of tutorial, benchmark"):
        apply_preset(ParticleSimParams(), "nope", explicit=set())


def test_cli_classes_morph_and_relion_reads_it(tmp_path):
    run_cli("simulate", "particles", "--out", "cls", "--n", "40", "--box", "24", "--pixel-size", "5",
            "--structure", "phantom:population=1", "--structure", "phantom:seed=3,population=3",
            "--preset", "tutorial", "--concentration", "5", "--dose", "40", "-q", cwd=tmp_path)
    star = starfile.read(tmp_path / "cls" / "particles.star")
    assert set(star["particles"]["rlnClassNumber"]) <= {1, 2} and float(star["optics"]["rlnImagePixelSize"][0]) == 5
    t1, t2, t = (read_mrc(tmp_path / "cls" / f)[0] for f in ("truth_map_class1.mrc", "truth_map_class2.mrc",
                                                                  "truth_map.mrc"))
    assert np.array_equal(t, t1) and not np.allclose(t1, t2) and t.shape == (24, 24, 24)
    import json
    job = json.loads((tmp_path / "cls" / "job.json").read_text())
    assert job["params"]["dose"] == 40 and job["params"]["snr"] is None
    assert job["params"]["pose_distribution"] == "preferred" and job["results"]["image_snr"] > 0
    run_cli("simulate", "particles", "--out", "mo", "--n", "20", "--box", "24", "--pixel-size", "5",
            "--morph", "phantom", "phantom:seed=2", "-q", cwd=tmp_path)
    for f in ("truth_map.mrc", "truth_map_morph0.mrc", "truth_map_morph1.mrc"):
        assert (tmp_path / "mo" / f).is_file()
    assert MORPH_COLUMN in starfile.read(tmp_path / "mo" / "particles.star")["particles"].columns


@pytest.mark.relion
def test_relion_reads_the_morph_column(tmp_path):
    from cryolens.io import write_particles
    from cryolens.simulate.particles import optics_table
    params = ParticleSimParams(n_particles=3)
    sim = simulate_particles(morph=(phantom_structure(16, 6.0), phantom_structure(16, 6.0, seed=1)), params=params)
    df = sim.particles.copy()
    df.insert(0, "rlnImageName", [f"{i + 1:06d}@p.mrcs" for i in range(3)])
    write_particles(tmp_path / "m.star", optics_table(params, pixel_size=6.0, box=16), df)
    p = subprocess.run(["relion_star_handler", "--i", "m.star", "--o", "out.star"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    back = starfile.read(tmp_path / "out.star")["particles"]
    assert np.allclose(back[MORPH_COLUMN].to_numpy(), df[MORPH_COLUMN].to_numpy(), atol=1e-5)


def test_cli_bad_model_inputs_exit_2(tmp_path):
    (tmp_path / "corrupt.pdb").write_bytes(b"ATOM  garbage\x00\x01\x02" * 20)
    for spec, name in (("missing_model.pdb", "missing_model.pdb"), ("corrupt.pdb", "corrupt.pdb")):
        p = run_cli("simulate", "particles", "--out", "o", "--n", "4", "--structure", spec, cwd=tmp_path, check=False)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and name in p.stderr
        assert p.stderr.count(".") >= 1 and len(p.stderr.strip().splitlines()) <= 3
