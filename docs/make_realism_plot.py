"""Make docs/micrograph_realism.png: real micrographs next to simulated ones.

For each real micrograph in ``shared/data/micrographs`` (EPU/Falcon 4k at 0.667 Å/px,
1.8 µm nominal defocus; Diamond K2 behind an energy filter at 0.854 Å/px, 0.9 µm) a
micrograph is simulated at the same pixel size, size, dose and nominal defocus, and
the figure shows, per pair: a downsampled image, the 2-D power spectrum (log) and
the rotationally averaged log power spectra normalised at 1/20 Å⁻¹.

Run from the repository root::

    .venv/bin/python docs/make_realism_plot.py [--out docs/micrograph_realism.png] [--json numbers.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryolens.io import read_mrc
from cryolens.jobs.report import new_figure
from cryolens.simulate.micrographs import MicrographParams, centred_spectrum, power_spectrum, simulate_micrograph
from cryolens.simulate.structures import phantom_structure

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "micrographs"

#: The real micrographs and the simulation settings that mimic them (documented in
#: the data README: voltage, detector, nominal defocus; doses from their count levels).
CASES = {
    "epu2.9_example.mrc": dict(
        label="EPU 2.9, Falcon counting, 0.667 Å/px, 1.8 µm",
        # a crowded sample of ~85 Å particles; EPU's on-the-fly alignment interpolates
        # the frames, which low-passes signal and noise alike (interpolation_blur)
        params=dict(width=4096, height=4096, dose=41.0, defocus_min=18000.0, defocus_max=18000.0,
                    astigmatism=300.0, particles_per_micrograph=420, ice_thickness=250.0, bfactor=120.0,
                    mtf_gaussian=0.8, interpolation_blur=0.65, seed=11),
        structure=dict(box=128, diameter=85.0)),
    "fei-extended.mrc": dict(
        label="Diamond EF-K2 counting, 0.854 Å/px, 0.9 µm",
        # sparse, faint particles; a strong thickness gradient (zero-loss imaging);
        # white counting noise (K2 super-resolution binned)
        params=dict(width=3710, height=3838, dose=46.0, defocus_min=9000.0, defocus_max=9000.0,
                    astigmatism=300.0, particles_per_micrograph=35, ice_thickness=350.0, bfactor=90.0,
                    ice_variation=0.5, ice_correlation=3000.0, energy_filter=True, ice_ring=1.8, mtf_gaussian=0.8,
                    interpolation_blur=0.0, seed=12),
        structure=dict(box=160, diameter=120.0)),
}


def spectrum(img: np.ndarray, apix: float):
    s, p1, p2 = power_spectrum(torch.as_tensor(img), pixel_size=apix, tile=512)
    return s, p1, p2.numpy()


def band_mean(s: np.ndarray, p: np.ndarray, at: float, rel: float = 0.15) -> float:
    """Mean of a 1-D spectrum over frequencies within ±``rel`` of ``at`` (averages over Thon rings)."""
    return float(p[np.abs(s - at) <= rel * at].mean())


def normalised_log(s: np.ndarray, p: np.ndarray, at: float = 1 / 20) -> np.ndarray:
    """log10 of the 1-D spectrum divided by its mean within ±15% of ``at`` (1/Å)."""
    return np.log10(np.maximum(p, 1e-30) / band_mean(s, p, at))


def decay(s: np.ndarray, p: np.ndarray, lo: float = 1 / 20, hi: float = 1 / 5) -> float:
    """Envelope decay: the spectrum's mean near ``lo`` over its mean near ``hi`` (±15% bands)."""
    return band_mean(s, p, lo) / band_mean(s, p, hi)


def simulate_like(name: str) -> tuple[np.ndarray, float, dict]:
    case = CASES[name]
    _, apix = read_mrc(DATA / name) if (DATA / name).exists() else (None, None)
    apix = float(apix)
    st = phantom_structure(case["structure"]["box"], apix, diameter=case["structure"]["diameter"])
    params = MicrographParams(n_micrographs=1, **case["params"])
    t = time.perf_counter()
    counts, truth = simulate_micrograph([st], None, pixel_size=apix, params=params, index=0)
    return counts.numpy(), apix, dict(seconds=round(time.perf_counter() - t, 2), n_particles=len(truth.particles),
                                      defocus=(truth.ctf["defocus_u"] + truth.ctf["defocus_v"]) / 2)


def downsample(img: np.ndarray, factor: int) -> np.ndarray:
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    return img[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def show_image(ax, img, title):
    small = downsample(img, 8)
    lo, hi = np.percentile(small, [1, 99])
    ax.imshow(small, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def show_psd(ax, p2, title):
    lp = np.log(np.maximum(centred_spectrum(p2), 1e-30))
    lo, hi = np.percentile(lp, [5, 99.5])
    ax.imshow(lp, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "micrograph_realism.png"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    fig, axes = new_figure(nrows=len(CASES), ncols=5, figsize=(19, 4.2 * len(CASES)),
                           gridspec_kw=dict(width_ratios=[1, 1, 1, 1, 2.2]))
    numbers = {}
    for row, name in zip(axes, CASES):
        real, apix = read_mrc(DATA / name)
        sim, apix_s, info = simulate_like(name)
        sr, p1r, p2r = spectrum(real, apix)
        ss, p1s, p2s = spectrum(sim, apix_s)
        show_image(row[0], real, f"real: {name}")
        show_image(row[1], sim, f"simulated ({info['n_particles']} particles)")
        show_psd(row[2], p2r, "real power spectrum (log)")
        show_psd(row[3], p2s, "simulated power spectrum (log)")
        ax = row[4]
        keep = (sr > 1 / 60)
        ax.plot(sr[keep], normalised_log(sr, p1r)[keep], lw=1.0, label="real")
        ax.plot(ss[keep], normalised_log(ss, p1s)[keep], lw=1.0, label="simulated")
        ax.axvline(1 / 3.7, color="grey", lw=0.6, ls=":")
        ax.text(1 / 3.7, ax.get_ylim()[1], " ice 3.7 Å", fontsize=7, va="top")
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("log10 power / power at 1/20 Å")
        ax.set_title(f"{CASES[name]['label']}\ndecay 1/20→1/5 Å⁻¹: real {decay(sr, p1r):.2f}, "
                     f"simulated {decay(ss, p1s):.2f}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        numbers[name] = dict(decay_20_5_real=decay(sr, p1r), decay_20_5_sim=decay(ss, p1s),
                             decay_20_3p7_real=decay(sr, p1r, hi=1 / 3.7), decay_20_3p7_sim=decay(ss, p1s, hi=1 / 3.7),
                             **info)
    fig.tight_layout()
    fig.savefig(args.out, dpi=75)
    print(json.dumps(numbers, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1))
    return numbers


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
