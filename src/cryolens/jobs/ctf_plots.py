"""Plots of CTF fits: the 2-D diagnostic, CTFFIND's 1-D plot, the summary over micrographs and
the evidence for competing defocus candidates.

Conventions: spectra are ``(box, box)`` with DC at ``box // 2`` (centred), drawn with
``origin="lower"`` so +k_y points up and +k_x right, axes in spatial frequency (1/Å).
CTF zeros are the contours ``χ / π ∈ ℤ`` of the phase of :mod:`cryolens.core.ctf`
(RELION's form, so astigmatism, Cs and phase shift are all included).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryolens.core.ctf import CTFParams, ctf_phase_and_envelope
from cryolens.jobs.report import new_figure, save_figure

__all__ = ["ctf_phase_grid", "draw_ctf_2d", "draw_ctf_1d", "plot_ctf_diagnostic", "plot_ctf_summary",
           "plot_defocus_candidates", "rotational_average", "flatten_power"]

RING_COLOUR = "#ffcc00"


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _freq_axis(box: int, pixel_size: float) -> np.ndarray:
    """Spatial frequency (1/Å) of the centred index 0..box-1 (DC at box // 2)."""
    return (np.arange(box) - box // 2) / (box * pixel_size)


def ctf_phase_grid(box: int, pixel_size: float, *, defocus_u: float, defocus_v: float, angle: float,
                   voltage: float, cs: float, amplitude_contrast: float, phase_shift: float = 0.0) -> np.ndarray:
    """χ (radians) on the centred ``(box, box)`` grid; zeros of the CTF lie where ``χ/π`` is an integer."""
    f = torch.as_tensor(_freq_axis(box, pixel_size), dtype=torch.float64)
    sy, sx = torch.meshgrid(f, f, indexing="ij")
    s2 = sx * sx + sy * sy
    r2 = s2.clamp_min(1e-20)
    p = CTFParams(defocus_u=defocus_u, defocus_v=defocus_v, defocus_angle=angle, voltage=voltage, cs=cs,
                  amplitude_contrast=amplitude_contrast, phase_shift=phase_shift)
    chi, _ = ctf_phase_and_envelope(p, s2.float()[None], ((sx * sx - sy * sy) / r2).float(),
                                    (2 * sx * sy / r2).float())
    return chi[0].numpy()


def _display_range(img: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    vals = img[mask] if mask.any() else img.ravel()
    lo, hi = np.percentile(vals, [3, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _display(img: np.ndarray, band: np.ndarray, *, smooth: float = 0.7, equalise: bool = True) -> np.ndarray:
    """Grey levels in [0, 1] for display: lightly smoothed; with ``equalise`` standardised by the mean
    and spread over a 15-pixel-wide radial window (wider than a ring, so the rings stay and faint outer
    ones show as well as strong inner ones); mid-grey outside the fit band (the normalised spectrum
    means nothing outside the band it was fitted in)."""
    from scipy.ndimage import gaussian_filter, rotate, uniform_filter1d
    v = img
    if smooth:  # along the rings (small rotations about the centre, rings are nearly circles), then lightly
        c = img.shape[-1] // 2
        pad = np.pad(img, ((0, 1), (0, 1))) if img.shape[-1] % 2 == 0 else img  # rotate about index box//2
        v = np.mean([rotate(pad, a, reshape=False, order=1, mode="nearest") for a in np.linspace(-8, 8, 9)],
                    axis=0)[:img.shape[0], :img.shape[1]] if c else img
        v = gaussian_filter(v, smooth)
    if equalise:
        box = v.shape[-1]
        k = np.arange(box) - box // 2
        r = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij"))).astype(int).ravel()
        n = uniform_filter1d(np.bincount(r).astype(float), 15)
        mean = uniform_filter1d(np.bincount(r, v.ravel()), 15) / n
        sd = np.sqrt(np.maximum(uniform_filter1d(np.bincount(r, v.ravel() ** 2), 15) / n - mean ** 2, 1e-30))
        v = ((v.ravel() - mean[r]) / sd[r]).reshape(v.shape)
    a, b = _display_range(v, band)
    return np.where(band, np.clip((v - a) / (b - a), 0, 1), 0.5)


def _resolution_axis(ax, f_max: float) -> None:
    """A top axis labelled in Å at round resolutions (1/Å on the bottom)."""
    sec = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    ticks = [r for r in (30, 15, 10, 8, 6, 5, 4, 3, 2.5, 2) if 1 / r <= f_max]
    sec.set_xticks([1 / r for r in ticks])
    sec.set_xticklabels([f"{r:g}" for r in ticks])
    sec.set_xlabel("resolution (Å)")


def draw_ctf_2d(ax, fit, *, pixel_size: float, voltage: float, cs: float, amplitude_contrast: float,
                res_low_A: float | None = None, res_high_A: float | None = None, rings: bool = True,
                title: str | None = None) -> None:
    """The background-subtracted spectrum with the fitted CTF² in the upper-right quadrant and the
    fitted CTF's zeros drawn as rings over the left half (lower right: the spectrum untouched)."""
    spec = _np(fit.spectrum).astype(np.float64)
    model = _np(fit.model).astype(np.float64)
    box = spec.shape[-1]
    c = box // 2
    f = _freq_axis(box, pixel_size)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    s = np.hypot(fx, fy)
    lo_s = 1.0 / res_low_A if res_low_A else 0.0
    hi_s = 1.0 / res_high_A if res_high_A else f[-1]
    band = (s >= lo_s) & (s <= hi_s)
    show = _display(spec, band)
    show[c:, c:] = _display(model, band, smooth=0, equalise=False)[c:, c:]
    half = 0.5 / (box * pixel_size)
    extent = (f[0] - half, f[-1] + half, f[0] - half, f[-1] + half)
    ax.imshow(show, cmap="gray", origin="lower", extent=extent, interpolation="nearest")
    if rings:
        chi = ctf_phase_grid(box, pixel_size, defocus_u=float(fit.defocus_u_A), defocus_v=float(fit.defocus_v_A),
                             angle=float(fit.angle_deg), voltage=voltage, cs=cs,
                             amplitude_contrast=amplitude_contrast, phase_shift=float(fit.phase_shift_deg))
        order = -chi / np.pi  # increases outwards for underfocus
        dense = np.hypot(*np.gradient(order)) > 0.25  # rings closer than 4 px would paint the data over
        left = np.where((fx <= 0) & (fy < 0) & (s <= hi_s * 1.02) & ~dense, order, np.nan)
        n_max = int(np.nanmax(left)) if np.isfinite(left).any() else 0
        if n_max >= 1:
            ax.contour(fx, fy, left, levels=np.arange(1, min(n_max, 200) + 1), colors=RING_COLOUR,
                       linewidths=0.6, alpha=0.9)
    th = np.linspace(0, 2 * np.pi, 361)
    for r, ls in ((lo_s, ":"), (hi_s, "--")):
        if 0 < r < f[-1]:
            ax.plot(r * np.cos(th), r * np.sin(th), color="#4fa3ff", lw=0.7, ls=ls)
    mr = getattr(fit, "max_resolution_A", None)
    if mr and np.isfinite(mr) and 1 / mr < f[-1]:
        ax.plot(np.cos(th) / mr, np.sin(th) / mr, color="#ff5555", lw=0.8, ls="-.")
    ax.axhline(0, color="white", lw=0.4, alpha=0.5)
    ax.axvline(0, color="white", lw=0.4, alpha=0.5)
    lim = min(f[-1], 1.15 * hi_s)  # the fit band fills the panel (fine pixels leave most of it empty)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.text(0.99, 0.99, "fit", color="white", ha="right", va="top", transform=ax.transAxes, fontsize=8)
    ax.text(0.01, 0.99, "data", color="white", ha="left", va="top", transform=ax.transAxes, fontsize=8)
    ax.text(0.01, 0.01, "data + zeros of the fit", color=RING_COLOUR, ha="left", va="bottom",
            transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("spatial frequency k_x (1/Å)")
    ax.set_ylabel("k_y (1/Å)")
    ax.set_title(title or (f"U {fit.defocus_u_A:.0f} Å, V {fit.defocus_v_A:.0f} Å, {fit.angle_deg:.1f}°"
                           + (f", φ {fit.phase_shift_deg:.0f}°" if fit.phase_shift_deg else "")), fontsize=9)


def draw_ctf_1d(ax, fit, *, res_low_A: float | None = None, res_high_A: float | None = None) -> None:
    """CTFFIND's diagnostic: rotational average of the background-subtracted spectrum, the fitted
    CTF² and the quality of fit against spatial frequency, with the fit range and fit resolution."""
    fr = _np(fit.freq_1d)
    ax.plot(fr, _np(fit.spectrum_1d), color="black", lw=0.9, label="spectrum (rot. average, bg subtracted)")
    ax.plot(fr, _np(fit.fit_1d), color="#d62728", lw=1.0, label="CTF² fit")
    ax.plot(fr, _np(fit.quality_1d), color="#1f77b4", lw=1.0, label="quality of fit")
    if res_low_A:
        ax.axvspan(fr[0], 1 / res_low_A, color="grey", alpha=0.15, lw=0)
    if res_high_A and 1 / res_high_A < fr[-1]:
        ax.axvspan(1 / res_high_A, fr[-1], color="grey", alpha=0.15, lw=0)
    mr = getattr(fit, "max_resolution_A", None)
    if mr and np.isfinite(mr):
        ax.axvline(1 / mr, color="#ff5555", lw=0.8, ls="-.", label=f"fit resolution {mr:.1f} Å")
    al = getattr(fit, "aliasing_resolution_A", None)
    if al:
        ax.axvline(1 / al, color="#9467bd", lw=0.8, ls=":", label=f"aliasing from {al:.1f} Å")
    ax.set_xlim(fr[0], min(fr[-1], 1.25 / res_high_A) if res_high_A else fr[-1])
    ax.set_ylim(-0.1, 1.1)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("amplitude (normalised)")
    _resolution_axis(ax, ax.get_xlim()[1])
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    ax.set_title(f"CC {fit.cc:.3f}, astigmatism {fit.astigmatism_A:.0f} Å", fontsize=9)


def _draw_patches(ax, patch, *, width: int, height: int) -> None:
    """Patch defocus (colour) at the patch centres with the fitted plane's contours."""
    cen = _np(patch.centres_px)
    d = _np(patch.defocus_A)
    c0, gx, gy = (float(v) for v in patch.plane)
    xx, yy = np.meshgrid(np.linspace(0, width, 50), np.linspace(0, height, 50))
    plane = c0 + gx * (xx - width / 2) + gy * (yy - height / 2)
    cs = ax.contour(xx, yy, plane, colors="grey", linewidths=0.6)
    ax.clabel(cs, fontsize=6, fmt="%.0f")
    sc = ax.scatter(cen[:, 0], cen[:, 1], c=d, cmap="viridis", s=60, edgecolors="black", linewidths=0.4)
    ax.figure.colorbar(sc, ax=ax, label="patch defocus (Å)", shrink=0.8)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # image rows downwards, as the micrograph is displayed
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(f"patches: plane gradient ({gx:.3f}, {gy:.3f}) Å/px", fontsize=9)


def plot_ctf_diagnostic(fit, path: str | os.PathLike, *, pixel_size: float, voltage: float, cs: float,
                        amplitude_contrast: float, res_low_A: float | None = None, res_high_A: float | None = None,
                        title: str = "", patch=None, image_size: tuple[int, int] | None = None) -> Path:
    """One PNG per micrograph: the 2-D diagnostic next to the 1-D plot (and the patch plane when given;
    ``image_size`` is ``(width, height)`` in pixels then)."""
    n = 3 if patch is not None else 2
    fig, axes = new_figure(ncols=n, figsize=(5.6 * n, 5.2), gridspec_kw=dict(width_ratios=[1, 1.25] + [1] * (n - 2)))
    draw_ctf_2d(axes[0], fit, pixel_size=pixel_size, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                res_low_A=res_low_A, res_high_A=res_high_A)
    draw_ctf_1d(axes[1], fit, res_low_A=res_low_A, res_high_A=res_high_A)
    if patch is not None:
        _draw_patches(axes[2], patch, width=image_size[0], height=image_size[1])
    warn = "; ".join(getattr(fit, "warnings", []) or [])
    if title or warn:
        fig.suptitle(title + (f"\nwarning: {warn}" if warn else ""), fontsize=10,
                     color="black" if not warn else "#b00000")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_ctf_summary(table: pd.DataFrame, path: str | os.PathLike, *, title: str = "CTF over micrographs") -> Path:
    """Defocus U/V, astigmatism, fit resolution and figure of merit per micrograph (RELION columns)."""
    idx = np.arange(1, len(table) + 1)
    fig, axes = new_figure(nrows=2, ncols=2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.plot(idx, table["rlnDefocusU"], "o", ms=3, label="U")
    ax.plot(idx, table["rlnDefocusV"], "s", ms=3, label="V")
    if "cryolensTrueDefocusU" in table:  # benchmark tables carry the truth
        ax.plot(idx, table["cryolensTrueDefocusU"], "k_", ms=8, label="true U")
    ax.set_ylabel("defocus (Å)")
    ax.legend(fontsize=8)
    axes[0, 1].plot(idx, table["rlnCtfAstigmatism"], "o", ms=3, color="#9467bd")
    axes[0, 1].set_ylabel("astigmatism |U − V| (Å)")
    res = table["rlnCtfMaxResolution"].to_numpy(dtype=float)
    axes[1, 0].plot(idx, res, "o", ms=3, color="#d62728")
    axes[1, 0].set_ylabel("fit resolution (Å)")
    axes[1, 0].invert_yaxis()
    axes[1, 1].plot(idx, table["rlnCtfFigureOfMerit"], "o", ms=3, color="#2ca02c")
    axes[1, 1].set_ylabel("figure of merit (CC)")
    from matplotlib.ticker import MaxNLocator
    for a in axes.ravel():
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("micrograph")
        a.grid(alpha=0.3)
    med = np.nanmedian(res) if len(res) else float("nan")
    fig.suptitle(f"{title}: {len(table)} micrographs, median defocus "
                 f"{np.median((table['rlnDefocusU'] + table['rlnDefocusV']) / 2):.0f} Å, median fit resolution "
                 f"{med:.1f} Å", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def rotational_average(spectrum: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotational average of a centred spectrum in one-pixel shells: ``(frequency 1/Å, mean)``."""
    spec = _np(spectrum).astype(np.float64)
    box = spec.shape[-1]
    k = np.arange(box) - box // 2
    r = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij"))).astype(int)
    n = box // 2
    keep = r < n
    sums = np.bincount(r[keep], spec[keep], minlength=n)
    counts = np.bincount(r[keep], minlength=n)
    return np.arange(n) / (box * pixel_size), sums / np.maximum(counts, 1)


def flatten_power(power: np.ndarray, pixel_size: float, *, res_low_A: float, res_high_A: float,
                  window: int = 41) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A raw centred power spectrum made comparable with CTF² without assuming any CTF: amplitude
    ``sqrt(P)``, minus a cubic-in-s background fitted to its rotational average over the band, divided
    by the RMS of that residual over ``window`` shells. Returns ``(2-D flattened, freq 1/Å, 1-D)``."""
    from scipy.ndimage import uniform_filter1d
    amp = np.sqrt(np.maximum(_np(power).astype(np.float64), 0))
    fr, avg = rotational_average(amp, pixel_size)
    sel = (fr >= 1 / res_low_A) & (fr <= 1 / res_high_A)
    coef = np.polyfit(fr[sel], avg[sel], 3)
    resid = np.where(sel, avg - np.polyval(coef, fr), 0.0)
    env = np.sqrt(np.maximum(uniform_filter1d(resid ** 2, window), 1e-30))
    box = amp.shape[-1]
    k = np.arange(box) - box // 2
    r = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij"))).astype(int).clip(max=len(fr) - 1)
    s2d = r / (box * pixel_size)
    flat = (amp - np.polyval(coef, s2d)) / env[r]
    return flat, fr, resid / env


def plot_defocus_candidates(spectrum: np.ndarray, path: str | os.PathLike, *, pixel_size: float, voltage: float,
                            cs: float, amplitude_contrast: float, candidates: Sequence[tuple[str, float, float, float]],
                            res_low_A: float = 30.0, res_high_A: float = 5.0, title: str = "") -> Path:
    """Evidence between defocus candidates ``(label, U, V, angle)`` from a raw centred power spectrum,
    normalised independently of any fit (:func:`flatten_power`): the spectrum with each candidate's
    zeros over its left half, and the rotational average against each candidate's CTF² (mean defocus)
    in the band."""
    box = _np(spectrum).shape[-1]
    n = len(candidates)
    fig, axes = new_figure(ncols=n + 1, figsize=(5.2 * n + 6.5, 5.2), gridspec_kw=dict(width_ratios=[1] * n + [1.4]))
    f = _freq_axis(box, pixel_size)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    s = np.hypot(fx, fy)
    band = (s >= 1 / res_low_A) & (s <= 1 / res_high_A)
    spec, fr, avg = flatten_power(spectrum, pixel_size, res_low_A=res_low_A, res_high_A=res_high_A)
    shown = _display(spec, band, equalise=False)
    half = 0.5 / (box * pixel_size)
    extent = (f[0] - half, f[-1] + half, f[0] - half, f[-1] + half)
    lim = min(f[-1], 1.15 / res_high_A)
    colours = ["#ffcc00", "#00e5ff", "#ff66cc", "#7CFC00"]
    for ax, (label, u, v, ang), col in zip(axes[:n], candidates, colours):
        ax.imshow(shown, cmap="gray", origin="lower", extent=extent)
        order = -ctf_phase_grid(box, pixel_size, defocus_u=u, defocus_v=v, angle=ang, voltage=voltage, cs=cs,
                                amplitude_contrast=amplitude_contrast) / np.pi
        left = np.where((fx <= 0) & band & (np.hypot(*np.gradient(order)) <= 0.25), order, np.nan)
        if np.isfinite(left).any() and np.nanmax(left) >= 1:
            ax.contour(fx, fy, left, levels=np.arange(1, int(np.nanmax(left)) + 1), colors=col, linewidths=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(f"{label}: zeros of U {u:.0f} / V {v:.0f} Å", fontsize=9)
        ax.set_xlabel("k_x (1/Å)")
    sel = (fr >= 1 / res_low_A) & (fr <= 1 / res_high_A)
    y = avg[sel]
    y = (y - y.min()) / max(y.max() - y.min(), 1e-12)
    ax = axes[n]
    ax.plot(fr[sel], y, color="black", lw=1.0, label="rotational average (flattened)")
    s_t = torch.as_tensor(fr[sel], dtype=torch.float32)
    for (label, u, v, ang), col in zip(candidates, ["#d62728", "#1f77b4", "#e377c2", "#2ca02c"]):
        p = CTFParams(defocus_u=(u + v) / 2, defocus_v=(u + v) / 2, defocus_angle=0.0, voltage=voltage, cs=cs,
                      amplitude_contrast=amplitude_contrast)
        chi, _ = ctf_phase_and_envelope(p, (s_t * s_t)[None])
        c2 = np.sin(chi[0].numpy()) ** 2
        cc = np.corrcoef(c2, y)[0, 1]
        ax.plot(fr[sel], c2, color=col, lw=0.8, alpha=0.8, label=f"{label} CTF² (corr {cc:.3f})")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylim(-0.05, 1.25)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    ax.set_title("rotational average vs candidates (mean defocus)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
