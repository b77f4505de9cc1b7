"""`cryolens postprocess`: masks, corrected FSC (Chen et al. 2013), Guinier B-factor, sharpening, hand, CLI.

Ground truth: half maps made analytically (the phantom + independent white noise of known
variance, so the expected FSC per shell is ``S/(S+N)``), a band-limited phantom (true FSC 0
beyond its cut), white-spectrum maps blurred by a known B-factor, and ``relion_postprocess``
3.1 run on the same half maps and mask.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch
from typer.testing import CliRunner

from cryolens.core.fourier import ft3, ift3, radius_3d, shell_average, shell_index
from cryolens.core.fsc import resolution_at
from cryolens.io import read_mrc, write_mrc
from cryolens.postprocess import (MaskParams, PostprocessParams, apply_bfactor, apply_shell_weights, auto_mask,
                                  check_mask, corrected_fsc, fit_guinier, flip_hand, fom_weights, fsc_weights,
                                  guinier_curve, make_mask, noise_substitution, postprocess, randomize_from_shell,
                                  spherical_mask)
from cryolens.simulate.phantom import asymmetric_phantom
from conftest import run_cli
from helpers import correlation

N, APIX = 64, 1.5
HAVE_RELION_POSTPROCESS = shutil.which("relion_postprocess") is not None


def _blur(v: torch.Tensor, bfactor: float, apix: float) -> torch.Tensor:
    n = v.shape[-1]
    return ift3(apply_bfactor(ft3(v), bfactor, pixel_size=apix), n)


@pytest.fixture(scope="module")
def truth() -> torch.Tensor:
    """The phantom at 64³, 1.5 Å/px, blurred by B = 50 Å² on top of its own 20 Å²."""
    return _blur(asymmetric_phantom(N, APIX, bfactor=20.0), 50.0, APIX)


@pytest.fixture(scope="module")
def halves(truth):
    """truth + independent white noise (σ = 0.6 · std(truth)) per half; returns (h1, h2, σ)."""
    g = torch.Generator().manual_seed(5)
    sigma = 0.6 * float(truth.std())
    h1 = truth + sigma * torch.randn(truth.shape, generator=g)
    h2 = truth + sigma * torch.randn(truth.shape, generator=g)
    return h1, h2, sigma


@pytest.fixture(scope="module")
def half_files(halves, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pp")
    h1, h2, _ = halves
    write_mrc(d / "half1.mrc", h1.numpy(), APIX)
    write_mrc(d / "half2.mrc", h2.numpy(), APIX)
    return d


# ------------------------------------------------------------------ masks

def test_auto_masks_cover_the_molecule_and_nest(truth):
    tight = auto_mask(truth, pixel_size=APIX, kind="tight")
    loose = auto_mask(truth, pixel_size=APIX, kind="loose")
    for m in (tight, loose):
        assert m.dtype == torch.float32 and float(m.min()) >= 0.0 and float(m.max()) == 1.0
    molecule = truth > 0.05 * truth.max()
    assert float(tight[molecule].min()) > 0.99, "tight mask cuts density above 5% of the peak"
    assert bool((loose >= tight - 1e-6).all()), "loose mask must contain the tight one"
    assert float(loose.mean()) > 1.5 * float(tight.mean())
    assert float(tight[0, 0, 0]) == 0.0 and float(loose[0, 0, 0]) == 0.0
    sphere = spherical_mask(N)
    c = torch.arange(N, dtype=torch.float32) - N // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    assert bool((sphere[r <= 0.85 * N / 2] == 1).all()) and bool((sphere[r >= N / 2] == 0).all())
    assert make_mask(truth, pixel_size=APIX, params=MaskParams(kind="none")) is None


def test_soft_edge_follows_the_cosine_profile_on_a_ball():
    n, apix, radius, dilate_px, edge_px = 48, 2.0, 8.0, 2.0, 5.0
    c = torch.arange(n, dtype=torch.float32) - n // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    ball = (r <= radius).float()
    m = auto_mask(ball, pixel_size=apix, kind="tight", lowpass_angstrom=None,
                  dilate_angstrom=dilate_px * apix, soft_edge_angstrom=edge_px * apix)
    t = ((r - radius - dilate_px) / edge_px).clamp(0, 1)
    expected = 0.5 * (1 + torch.cos(math.pi * t))
    # the voxelised ball's surface lies within ~half a voxel of the continuous sphere
    assert float((m - expected).abs().max()) < 0.25
    soft = (m > 0.01) & (m < 0.99)
    assert float(r[soft].min()) >= radius + dilate_px - 1.0 and float(r[soft].max()) <= radius + dilate_px + edge_px + 1.0
    assert bool((m[r <= radius + dilate_px - 1] == 1).all())


def test_check_mask_names_the_problem():
    good = torch.zeros(8, 8, 8)
    good[2:6, 2:6, 2:6] = 1
    assert check_mask(good, (8, 8, 8)) is None
    assert "shape" in check_mask(good, (9, 9, 9))
    assert "[0, 1]" in check_mask(good * 2, (8, 8, 8))
    assert "NaN" in check_mask(good.masked_fill(good > 0, float("nan")), (8, 8, 8))
    assert "empty" in check_mask(good * 0.4, (8, 8, 8))


# ------------------------------------------------------------------ FSC

def test_fsc_curves_match_the_analytic_expectation(truth, halves):
    h1, h2, sigma = halves
    mask = auto_mask(0.5 * (h1 + h2), pixel_size=APIX)
    curves = corrected_fsc(h1, h2, mask, pixel_size=APIX, seed=11)
    shells = shell_index(radius_3d(N))
    signal = shell_average(ft3(truth).abs() ** 2, shells, N // 2 + 1).double().numpy()
    noise = N ** 3 * sigma ** 2  # per Fourier coefficient, unnormalised FFT
    expected_unmasked = signal / (signal + noise)
    assert np.abs(curves.unmasked.fsc[1:] - expected_unmasked[1:]).max() < 0.06
    # inside the mask the noise power drops by mean(mask²) while the signal stays
    expected_masked = signal / (signal + noise * float((mask ** 2).mean()))
    res_expected = resolution_at(expected_masked, N, APIX)
    res = curves.corrected.resolution_at(0.143)
    assert abs(res - res_expected) / res_expected < 0.05, (res, res_expected)
    assert res < 0.9 * curves.unmasked.resolution_at(0.143)  # the mask does gain resolution
    # RELION's rule: randomise from the first shell where the unmasked FSC < 0.8
    k = curves.randomize_shell
    assert curves.unmasked.fsc[k] < 0.8 <= curves.unmasked.fsc[k - 1]


def test_noise_substitution_removes_mask_induced_correlation(truth):
    """Signal cut at 12 Å, so the true FSC is 0 beyond; a sharp tight mask inflates the masked FSC there."""
    r = radius_3d(N)
    band_limited = ift3(ft3(truth) * (r <= N * APIX / 12.0), N)
    g = torch.Generator().manual_seed(3)
    s = float(band_limited.std())
    h1 = band_limited + s * torch.randn(truth.shape, generator=g)
    h2 = band_limited + s * torch.randn(truth.shape, generator=g)
    mask = auto_mask(band_limited, pixel_size=APIX, dilate_angstrom=3.0, soft_edge_angstrom=1.5)
    c = corrected_fsc(h1, h2, mask, pixel_size=APIX, seed=103)
    start = c.randomize_shell + 2
    assert c.randomize_angstrom == pytest.approx(N * APIX / c.randomize_shell)
    assert np.abs(c.unmasked.fsc[start:]).max() < 0.1
    assert c.masked.fsc[start:start + 6].mean() > 0.2, "the sharp mask should inflate the masked FSC"
    assert abs(c.corrected.fsc[start:].mean()) < 0.06
    assert abs(c.corrected.fsc[start:start + 6].mean()) < 0.1
    assert c.corrected.resolution_at(0.143) > 1.3 * c.masked.resolution_at(0.143)


def test_noise_substitution_formula_and_weights():
    t = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    n = np.array([1.0, 0.9, 0.5, 0.4, 0.2, 0.5])
    assert randomize_from_shell(np.array([1.0, 0.95, 0.85, 0.79, 0.9])) == 3
    with pytest.raises(ValueError, match="never drops"):
        randomize_from_shell(np.ones(5))
    out = noise_substitution(t, n, 1)
    assert np.allclose(out[:3], t[:3])
    assert np.allclose(out[3:], (t[3:] - n[3:]) / (1 - n[3:]))
    w = fsc_weights(np.array([1.0, 0.5, 0.2, 0.00005, 0.3]))
    assert np.allclose(w, [1.0, math.sqrt(2 / 3), math.sqrt(0.4 / 1.2), 0.0, 0.0])
    fom = fom_weights(np.array([1.0, 0.5, -0.1, 0.4]))
    assert np.allclose(fom, [1.0, 2 / 3, 0.0, 0.0], atol=1e-3)  # fsc_to_ssnr caps FSC at 0.999


# ------------------------------------------------------------------ B-factor and sharpening

def test_guinier_fit_recovers_a_known_bfactor(truth):
    g = torch.Generator().manual_seed(2)
    white = torch.randn((N, N, N), generator=g)
    for blur in (60.0, 150.0):
        s2, ln = guinier_curve(apply_bfactor(ft3(white), blur, pixel_size=APIX), pixel_size=APIX)
        fit = fit_guinier(s2, ln, low_res=10.0, high_res=3.2)
        assert fit.bfactor == pytest.approx(-blur, rel=0.1)
        assert fit.correlation > 0.95
    # on the phantom: an extra blur of 100 Å² moves the fitted B by -100 Å²
    base = fit_guinier(*guinier_curve(ft3(truth), pixel_size=APIX), low_res=10.0, high_res=3.5)
    blurred = fit_guinier(*guinier_curve(ft3(_blur(truth, 100.0, APIX)), pixel_size=APIX), low_res=10.0, high_res=3.5)
    assert blurred.bfactor - base.bfactor == pytest.approx(-100.0, rel=0.1)


def test_postprocess_sharpening_flattens_a_blurred_spectrum():
    """Identical halves: FSC 1, no weighting; the fitted B undoes the blur and the spectrum comes out flat."""
    g = torch.Generator().manual_seed(4)
    vol = _blur(torch.randn((N, N, N), generator=g), 120.0, APIX)
    res = postprocess(vol, vol, pixel_size=APIX, params=PostprocessParams(mask=MaskParams(kind="none")))
    assert res.mask is None and res.final_resolution == pytest.approx(2 * APIX)
    assert res.bfactor == pytest.approx(-120.0, rel=0.1)
    s2, sharp = res.guinier["s2"], res.guinier["sharpened"]
    flat = fit_guinier(s2, sharp, low_res=10.0, high_res=3.2)
    assert abs(flat.bfactor) < 12.0
    # an explicit B is applied as given (positive blurs)
    res2 = postprocess(vol, vol, pixel_size=APIX,
                       params=PostprocessParams(mask=MaskParams(kind="none"), bfactor=50.0))
    assert res2.bfactor == 50.0
    blurred = fit_guinier(s2, res2.guinier["sharpened"], low_res=10.0, high_res=3.2)
    before = fit_guinier(s2, res2.guinier["weighted"], low_res=10.0, high_res=3.2)
    assert blurred.bfactor - before.bfactor == pytest.approx(-50.0, rel=0.03)


def test_flatten_with_fom_and_mtf(halves):
    h1, h2, _ = halves
    k_mtf = np.array([0.0, 0.25, 0.5])
    res = postprocess(h1, h2, pixel_size=APIX, mtf=(k_mtf, np.full(3, 0.5)), seed=1,
                      params=PostprocessParams(mask=MaskParams(kind="sphere"), flatten=True, flatten_from=8.0))
    g = res.guinier
    assert np.allclose(g["mtf_corrected"][:-1], g["original"][:-1] + math.log(2.0), atol=1e-4)
    assert res.bfactor == 0.0
    fom = fom_weights(res.final_fsc)
    k0 = round(N * APIX / 8.0)
    k = np.arange(len(fom))
    use = (k >= k0) & (fom > 0)
    assert use.sum() > 5
    level = g["sharpened"][use] - np.log(fom[use])
    assert np.ptp(level) < 1e-3, "flattened spectrum times the FOM"


def test_flip_hand_is_an_involution_and_a_mirror():
    for n in (16, 15):
        v = torch.randn(n, n, n, generator=torch.Generator().manual_seed(n))
        f = flip_hand(v)
        assert torch.equal(flip_hand(f), v)
        c = n // 2
        z = torch.arange(n)
        assert torch.equal(f, v[(2 * c - z) % n])
        assert torch.equal(f[c], v[c])


# ------------------------------------------------------------------ CLI and job

def _cli():
    import typer

    from cryolens.cli.postprocess import postprocess as command
    app = typer.Typer()
    app.command()(command)
    return app


def test_cli_writes_relion_style_outputs(half_files: Path):
    out = half_files / "pp"
    run_cli("postprocess", "--half1", "half1.mrc", "--half2", "half2.mrc", "--out", "pp", "--quiet", cwd=half_files)
    for name in ("fsc.star", "fsc.png", "guinier.png", "map_sharp.mrc", "map_sharp_masked.mrc", "mask.mrc",
                 "report.html", "job.json", "CRYOLENS_JOB_EXIT_SUCCESS"):
        assert (out / name).is_file(), name
    star = starfile.read(out / "fsc.star", always_dict=True)
    assert list(star) == ["general", "fsc", "guinier"]
    general, curves = star["general"], star["fsc"]
    for col in ("rlnFourierShellCorrelationCorrected", "rlnFourierShellCorrelationUnmaskedMaps",
                "rlnFourierShellCorrelationMaskedMaps", "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps",
                "rlnResolution", "rlnAngstromResolution", "rlnSpectralIndex"):
        assert col in curves.columns
    assert len(curves) == N // 2 + 1
    for col in ("rlnResolutionSquared", "rlnLogAmplitudesOriginal", "rlnLogAmplitudesWeighted",
                "rlnLogAmplitudesSharpened", "rlnLogAmplitudesIntercept"):
        assert col in star["guinier"].columns
    import json
    results = json.loads((out / "job.json").read_text())["results"]
    assert general["rlnFinalResolution"] == pytest.approx(results["resolution_corrected_A"], abs=1e-3)
    assert general["rlnBfactorUsedForSharpening"] == pytest.approx(results["bfactor_A2"], abs=0.01)
    assert results["bfactor_A2"] < 0 and results["resolution_masked_A"] < results["resolution_unmasked_A"]
    assert general["rlnRandomiseFrom"] == pytest.approx(results["randomise_from_A"], abs=1e-3)
    mask, apix = read_mrc(out / "mask.mrc")
    assert apix == pytest.approx(APIX) and mask.min() >= 0 and mask.max() <= 1

    # explicit (negative) B-factor and the hand flip, in process
    r = CliRunner().invoke(_cli(), ["--half1", str(half_files / "half1.mrc"), "--half2", str(half_files / "half2.mrc"),
                                    "--out", str(half_files / "flip"), "--bfactor", "-50", "--flip-hand", "--quiet"])
    assert r.exit_code == 0, r.output
    assert starfile.read(half_files / "flip" / "fsc.star", always_dict=True)["general"][
        "rlnBfactorUsedForSharpening"] == -50
    flipped = torch.tensor(read_mrc(half_files / "flip" / "map_sharp.mrc")[0])
    plain = torch.tensor(read_mrc(out / "map_sharp.mrc")[0])  # auto B, same hand as the input
    same_hand, mirrored = float(correlation(flip_hand(flipped), plain)), float(correlation(flipped, plain))
    assert same_hand > 0.75 and mirrored < 0.5 * same_hand, (same_hand, mirrored)  # B differs: -50 vs auto


def test_bad_inputs_exit_2(half_files: Path, tmp_path: Path):
    runner = CliRunner()
    h1, h2 = str(half_files / "half1.mrc"), str(half_files / "half2.mrc")
    write_mrc(tmp_path / "small.mrc", np.zeros((32, 32, 32), np.float32), APIX)
    big = np.zeros((N, N, N), np.float32)
    big[20:40, 20:40, 20:40] = 2.0
    write_mrc(tmp_path / "range.mrc", big, APIX)
    write_mrc(tmp_path / "apix.mrc", big / 2, 2 * APIX)
    cases = [
        (["--half1", h1, "--half2", str(tmp_path / "small.mrc")], "differs"),
        (["--half1", h1, "--half2", h2, "--mask", str(tmp_path / "small.mrc")], "shape"),
        (["--half1", h1, "--half2", h2, "--mask", str(tmp_path / "range.mrc")], "[0, 1]"),
        (["--half1", h1, "--half2", h2, "--mask", str(tmp_path / "apix.mrc")], "voxel size"),
        (["--half1", h1, "--half2", h2, "--mask", str(tmp_path / "nope.mrc")], "not found"),
        (["--half1", str(tmp_path / "missing.mrc"), "--half2", h2], "not found"),
        (["--half1", h1, "--half2", h2, "--bfactor", "sharp"], "--bfactor"),
        (["--half1", h1, "--half2", h2, "--mask-threshold-fraction", "1.5"], "--mask-threshold-fraction 1.5"),
        (["--half1", h1, "--half2", h2, "--randomize-at-fsc", "1.5"], "--randomize-at-fsc 1.5"),
        (["--half1", h1, "--half2", h1], "--randomize-at"),  # identical halves: FSC never drops below 0.8
    ]
    for args, fragment in cases:
        r = runner.invoke(_cli(), [*args, "--out", str(tmp_path / "job"), "--quiet"])
        assert r.exit_code == 2, (args, r.exit_code, r.output)
        assert fragment in r.output, (args, r.output)
        assert "Traceback" not in r.output


# ------------------------------------------------------------------ RELION

@pytest.mark.relion
@pytest.mark.skipif(not HAVE_RELION_POSTPROCESS, reason="relion_postprocess not on PATH")
def test_agrees_with_relion_postprocess(half_files: Path, halves):
    """Same half maps and mask: curves, randomisation shell, Guinier values, resolution and B-factor."""
    from cryolens.jobs.postprocess import run_postprocess

    h1, h2, _ = halves
    d = half_files
    write_mrc(d / "mask_rel.mrc", auto_mask(0.5 * (h1 + h2), pixel_size=APIX).numpy(), APIX)
    job = run_postprocess(d / "half1.mrc", d / "half2.mrc", d / "ours", PostprocessParams(), mask_file=d / "mask_rel.mrc",
                          seed=1)
    ours = starfile.read(d / "ours" / "fsc.star", always_dict=True)
    final = job.results["resolution_corrected_A"]

    def relion(tag: str, *extra: str) -> dict:
        cmd = ["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask_rel.mrc", "--angpix",
               str(APIX), "--auto_bfac", "--o", f"rel_{tag}/postprocess", *extra]
        (d / f"rel_{tag}").mkdir(exist_ok=True)
        p = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        assert (d / f"rel_{tag}" / "postprocess.star").is_file(), p.stdout + p.stderr
        return starfile.read(d / f"rel_{tag}" / "postprocess.star", always_dict=True)

    rel = relion("default")
    rf, of = rel["fsc"], ours["fsc"]
    for col in ("rlnFourierShellCorrelationUnmaskedMaps", "rlnFourierShellCorrelationMaskedMaps"):
        assert np.abs(rf[col].to_numpy() - of[col].to_numpy()).max() < 0.01, col
    assert np.abs(rf["rlnFourierShellCorrelationParticleMaskFraction"].to_numpy()
                  - of["rlnFourierShellCorrelationParticleMaskFraction"].to_numpy()).max() < 0.02
    assert ours["general"]["rlnRandomiseFrom"] == pytest.approx(rel["general"]["rlnRandomiseFrom"], rel=1e-4)
    assert ours["general"]["rlnParticleBoxFractionSolventMask"] == pytest.approx(
        rel["general"]["rlnParticleBoxFractionSolventMask"], rel=1e-3)
    assert np.abs(rel["guinier"]["rlnLogAmplitudesOriginal"].to_numpy()
                  - ours["guinier"]["rlnLogAmplitudesOriginal"].to_numpy()).max() < 1e-3
    # resolution: phase randomisation differs (other random numbers), so a few % apart
    rel_interp = resolution_at(rf["rlnFourierShellCorrelationCorrected"].to_numpy(), N, APIX)
    assert abs(final - rel_interp) / rel_interp < 0.05, (final, rel_interp, rel["general"]["rlnFinalResolution"])
    shell_ours = N * APIX / final
    shell_rel = N * APIX / rel["general"]["rlnFinalResolution"]  # RELION reports the last shell >= 0.143
    assert -0.5 <= shell_ours - shell_rel <= 2.0
    # given RELION's corrected FSC, our weighting + Guinier fit reproduce its default-range B exactly
    f = ft3(0.5 * (h1 + h2))
    s2, ln = guinier_curve(apply_shell_weights(f, fsc_weights(rf["rlnFourierShellCorrelationCorrected"].to_numpy())),
                           pixel_size=APIX)
    fit = fit_guinier(s2, ln, low_res=10.0, high_res=None)
    assert fit.bfactor == pytest.approx(rel["general"]["rlnBfactorUsedForSharpening"], rel=0.005)
    assert fit.correlation == pytest.approx(rel["general"]["rlnCorrelationFitGuinierPlot"], abs=0.005)
    # end to end, fitting to the same resolution: B within 10%
    rel_b = relion("highres", "--autob_highres", f"{final:.4f}")["general"]["rlnBfactorUsedForSharpening"]
    assert job.results["bfactor_A2"] == pytest.approx(rel_b, rel=0.1)


def test_read_mtf_star(tmp_path: Path):
    from cryolens.errors import InputError
    from cryolens.jobs.postprocess import read_mtf

    good = tmp_path / "mtf.star"
    good.write_text("data_\n\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n0.0 1.0\n0.1 0.9\n0.25 0.6\n0.5 0.3\n")
    freq, val = read_mtf(good)
    assert np.allclose(freq, [0, 0.1, 0.25, 0.5]) and np.allclose(val, [1, 0.9, 0.6, 0.3])
    bad = tmp_path / "bad.star"
    bad.write_text("data_\n\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n0.0 1.0\n0.1 0.0\n")
    with pytest.raises(InputError, match="positive"):
        read_mtf(bad)
    other = tmp_path / "other.star"
    other.write_text("data_x\n\nloop_\n_rlnFoo\n1\n2\n")
    with pytest.raises(InputError, match="rlnMtfValue"):
        read_mtf(other)
