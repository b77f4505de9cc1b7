"""Shared helpers: atomic writes (io.atomic), figures (jobs.report), FFT sizes, the Welch
spectrum and pad_or_crop (core.fourier), and the motion/dose models living in core."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cryolens.core.fourier import good_fft_size, pad_or_crop, welch_power_spectrum
from cryolens.io.atomic import atomic_output, temporary_path, write_json_atomic, write_text_atomic
from cryolens.jobs.report import new_figure, save_figure

# ------------------------------------------------------------------------------ atomic writes


def test_temporary_path_is_hidden_unique_and_next_to_the_target(tmp_path):
    a, b = temporary_path(tmp_path / "map.mrc"), temporary_path(tmp_path / "map.mrc")
    assert a != b and a.parent == tmp_path and a.name.startswith(".map.mrc.") and a.suffix == ".tmp"


def test_atomic_output_keeps_the_suffix_and_replaces_on_success(tmp_path):
    target = tmp_path / "fsc.png"
    target.write_text("old")
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".fsc.png.")
        assert target.read_text() == "old"  # the old file stays until the body succeeds
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsc.png"]


def test_atomic_output_leaves_the_old_file_and_no_temporary_on_failure(tmp_path):
    target = tmp_path / "particles.star"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["particles.star"]


def test_text_and_json_writers(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "hello")
    write_json_atomic(tmp_path / "job.json", {"x": 1, "p": tmp_path})
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert json.loads((tmp_path / "job.json").read_text()) == {"x": 1, "p": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "job.json"]


# ------------------------------------------------------------------------------------- figures


def test_new_figure_uses_agg_and_save_figure_writes_a_png_atomically(tmp_path):
    import matplotlib
    fig, axes = new_figure(ncols=2, figsize=(3, 2), gridspec_kw=dict(width_ratios=[1, 2]))
    assert matplotlib.get_backend().lower() == "agg" and len(axes) == 2
    assert tuple(fig.get_size_inches()) == (3, 2)
    axes[0].plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []  # not registered with pyplot: nothing left open
    _, grid = new_figure(nrows=2, ncols=3, squeeze=False)
    assert grid.shape == (2, 3)


def test_save_figure_closes_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt
    new_figure()  # selects Agg
    fig, _ = plt.subplots()
    save_figure(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(fig.number)


def test_no_module_calls_matplotlib_use_outside_the_figure_helper():
    from pathlib import Path
    src = Path(__file__).resolve().parents[1] / "src" / "cryolens"
    mine = ["io", "core", "simulate", "ctf", "motion", "postprocess", "reconstruct", "refine", "abinitio", "mapalign"]
    files = [src / "jobs" / f for f in ("report.py", "select.py", "postprocess.py", "simulate_movies.py",
                                        "simulate_micrographs.py", "simulate_particles.py", "ctf_plots.py",
                                        "fsc_maps.py", "structures.py", "refine.py", "abinitio.py", "align_maps.py")]
    files += [f for d in mine for f in (src / d).rglob("*.py")]
    users = [f.name for f in files if "matplotlib.use(" in f.read_text()]
    assert users == ["report.py"]


# ------------------------------------------------------------------------------- FFT sizes


def _factors_in(m: int, primes) -> bool:
    for p in primes:
        while m % p == 0:
            m //= p
    return m == 1


@pytest.mark.parametrize("primes", [(2, 3, 5, 7), (2, 3, 5)])
def test_good_fft_size_is_the_smallest_even_smooth_length(primes):
    for n in range(1, 700):
        m = good_fft_size(n, primes=primes)
        assert m >= max(n, 2) and m % 2 == 0 and _factors_in(m, primes)
        assert not any(_factors_in(k, primes) for k in range(max(n, 2) + (max(n, 2) % 2), m, 2))
    assert good_fft_size(4097) == 4116 and good_fft_size(4097, primes=(2, 3, 5)) == 4320
    assert good_fft_size(1) == 2 and good_fft_size(14) == 14 and good_fft_size(14, primes=(2, 3, 5)) == 16


def test_alignment_grid_keeps_its_2_3_5_sizes():
    from cryolens.motion.align import alignment_shape
    from cryolens.motion.params import MotionParams
    # 3710 / 2.5 = 1484 -> next even {2,3,5}-smooth is 1500 ({2,3,5,7} would give 1488); 3838 / 2.5 -> 1536
    assert alignment_shape(3838, 3710, 1.0, MotionParams(align_bin=2.5)) == (1536, 1500)
    assert alignment_shape(100, 64, 1.0, MotionParams(align_bin=1.0)) == (100, 64)  # never above n


# -------------------------------------------------------------------------------- Welch spectrum


def test_welch_power_spectrum_is_the_average_periodogram_of_mean_free_tiles():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(100, 130, generator=g) + 3.0
    p = welch_power_spectrum(img, box=64, overlap=0.5)
    starts_y, starts_x = [0, 32, 36], [0, 32, 64, 66]  # every 32 px, plus one flush with the far edge
    tiles = [img[y:y + 64, x:x + 64] for y in starts_y for x in starts_x]
    ref = sum(torch.fft.rfft2(t.double() - t.double().mean()).abs() ** 2 for t in tiles) / (len(tiles) * 64 * 64)
    assert p.shape == (64, 33) and p.dtype == torch.float64
    assert torch.allclose(p, ref, rtol=1e-4, atol=1e-8)
    stack = torch.stack([img, 2 * img])  # sub-sums: all tiles of all images averaged
    assert torch.allclose(welch_power_spectrum(stack, box=64, overlap=0.5), 2.5 * p, rtol=1e-5)
    with pytest.raises(ValueError, match="smaller than the spectrum box"):
        welch_power_spectrum(img, box=128)
    with pytest.raises(ValueError, match="overlap"):
        welch_power_spectrum(img, box=64, overlap=1.0)


def test_ctf_and_simulator_spectra_share_the_welch_kernel():
    from cryolens.ctf import power_spectrum as ctf_spectrum
    from cryolens.simulate.spectra import power_spectrum as sim_spectrum
    img = torch.randn(256, 300, generator=torch.Generator().manual_seed(1))
    half = welch_power_spectrum(img, box=128, overlap=0.5)
    centred = ctf_spectrum(img, box=128, overlap=0.5)
    assert torch.allclose(torch.fft.ifftshift(centred)[:, :65], half.float())
    _, _, p2 = sim_spectrum(img, pixel_size=1.0, tile=128)
    assert torch.equal(p2, half.float())


# ------------------------------------------------------------------------------- pad_or_crop


def test_pad_or_crop_keeps_the_centre_voxel():
    v = torch.arange(7 ** 3, dtype=torch.float32).reshape(7, 7, 7)
    big = pad_or_crop(v, 10)
    assert big.shape == (10, 10, 10) and big[5, 5, 5] == v[3, 3, 3] and float(big.sum()) == float(v.sum())
    assert torch.equal(pad_or_crop(big, 7), v)
    small = pad_or_crop(v, 4)
    assert small[2, 2, 2] == v[3, 3, 3] and torch.equal(small, v[1:5, 1:5, 1:5])


# ------------------------------------------------------------------------- models in core


def test_motion_correction_does_not_import_the_simulator():
    code = ("import sys, cryolens.motion, cryolens.motion.align, cryolens.motion.dose_weight, "
            "cryolens.motion.patch_align, cryolens.motion.preprocess; "
            "print(sorted(m for m in sys.modules if m.startswith('cryolens.simulate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dose_and_motion_models_in_core():
    from cryolens.core.dose import critical_exposure, damage_weights
    from cryolens.core.motion import PolynomialMotion, relion_patch_centres
    assert float(critical_exposure(torch.tensor(0.25))) == pytest.approx(0.245 * 0.25 ** -1.665 + 2.81, rel=1e-6)
    assert damage_weights(3, 1.0, torch.tensor([0.0, 0.2])).shape == (3, 2)
    assert relion_patch_centres(3710, 5) == [370, 1112, 1854, 2596, 3338]
    m = PolynomialMotion.from_coefficients(np.arange(36.0))
    assert m.negated().negated() == m
