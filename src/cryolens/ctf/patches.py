"""Patch CTF: the mean defocus of each patch of a micrograph and the specimen plane through them.

Each patch's spectrum is normalised and searched for its mean defocus with the micrograph's
astigmatism and phase shift held (a patch has too few tiles to fit them on its own); the
plane ``defocus(x, y) = c0 + gx·(x − W/2) + gy·(y − H/2)`` (Å, x/y in pixels, 0-based
column/row indices) is then fitted by least squares weighted by each patch's CC. This is the
convention of the simulator's ``cryolensDefocusGradientX/Y`` columns, so the extraction stage
gives a particle at (x, y) the defocus ``U + plane(x, y) − c0`` etc.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from cryolens.ctf.scoring import (CTFFit, fit_resolution, make_fit, normalise_spectrum, one_cpu_thread,
                                  prepare_spectrum, weighted_cc)
from cryolens.ctf.optics import Optics
from cryolens.ctf.params import CTFFitParams
from cryolens.ctf.spectrum import power_spectrum

__all__ = ["PatchCTF", "fit_ctf_patches", "fit_defocus_plane"]


@dataclass
class PatchCTF:
    """Per-patch defocus and the micrograph's defocus plane.

    Attributes:
        centres_px: ``(P, 2)`` patch centres (x, y) in pixels (0-based column, row).
        defocus_A: ``(P,)`` mean defocus per patch [Å]; fits: one :class:`CTFFit` per patch.
        plane: ``(c0, gx, gy)``: ``defocus(x, y) = c0 + gx·(x − W/2) + gy·(y − H/2)`` [Å, Å/px].
        shape: ``(H, W)`` of the micrograph.
    """

    centres_px: np.ndarray
    defocus_A: np.ndarray
    fits: list[CTFFit]
    plane: tuple[float, float, float]
    shape: tuple[int, int] = (0, 0)
    cc: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def defocus_at(self, x, y) -> np.ndarray:
        """Mean defocus [Å] of the plane at pixel ``(x, y)``."""
        c0, gx, gy = self.plane
        h, w = self.shape
        return c0 + gx * (np.asarray(x, float) - w / 2) + gy * (np.asarray(y, float) - h / 2)


def fit_defocus_plane(centres_px: np.ndarray, defocus: np.ndarray, weights: np.ndarray, *, width: int,
                      height: int) -> tuple[float, float, float]:
    """Robust weighted least-squares plane ``(c0, gx, gy)`` through per-patch defocus values.

    Patches whose residual exceeds 3 robust standard deviations (1.4826 · MAD, at least
    20 Å) of the first fit are dropped and the plane refitted (a patch on carbon or ice
    contamination must not tilt the plane). See :class:`PatchCTF` for the convention.
    """
    d = np.asarray(defocus, float)
    w = np.clip(np.asarray(weights, float), 1e-3, None)
    x = np.asarray(centres_px, float)[:, 0] - width / 2
    y = np.asarray(centres_px, float)[:, 1] - height / 2
    if len(d) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float(np.average(d, weights=w)), 0.0, 0.0
    a = np.stack([np.ones_like(x), x, y], 1)
    keep = np.ones(len(d), bool)
    for _ in range(2):
        sw = np.sqrt(w[keep])
        c, *_ = np.linalg.lstsq(a[keep] * sw[:, None], d[keep] * sw, rcond=None)
        resid = np.abs(d - a @ c)
        sigma = max(1.4826 * float(np.median(resid[keep])), 20.0)
        new = resid <= 3 * sigma
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    return float(c[0]), float(c[1]), float(c[2])


def fit_ctf_patches(image: torch.Tensor, global_fit: CTFFit, *, pixel_size: float, voltage: float, cs_mm: float,
                    amplitude_contrast: float, params: CTFFitParams,
                    progress: Callable[[int, int], None] | None = None) -> PatchCTF:
    """Mean defocus per patch (astigmatism and phase from ``global_fit``) and the defocus plane.

    Each patch's CC with CTF² is computed for a ladder of mean-defocus offsets around the
    global value (± max(2 000 Å, 15 % of it), ~25 Å apart). The plane is first found by
    maximising the CC summed over all patches (a grid over c0, gx, gy: one noisy patch
    cannot mislead it); each patch's defocus is then refined near the plane's value, and
    the plane refitted robustly (:func:`fit_defocus_plane`) through them.

    Args:
        image: ``(H, W)`` micrograph or ``(S, H, W)`` frame sub-sums.
        global_fit: the whole micrograph's :func:`cryolens.ctf.fit_ctf` result.
        params: ``params.patches = (nx, ny)`` (None: 3 × 3); each patch's spectrum uses a box
            of ``min(params.box, patch size / 2)`` (even, ≥ 64), so that it averages several tiles.

    Returns:
        :class:`PatchCTF`. The spectra and fits run on one intra-op thread on the CPU
        (:func:`cryolens.ctf.scoring.one_cpu_thread`).
    """
    params.validate()
    with one_cpu_thread(torch.as_tensor(image).device):
        return _fit_ctf_patches(image, global_fit, pixel_size=pixel_size, voltage=voltage, cs_mm=cs_mm,
                                amplitude_contrast=amplitude_contrast, params=params, progress=progress)


def _fit_ctf_patches(image: torch.Tensor, global_fit: CTFFit, *, pixel_size: float, voltage: float, cs_mm: float,
                     amplitude_contrast: float, params: CTFFitParams,
                     progress: Callable[[int, int], None] | None = None) -> PatchCTF:
    img = torch.as_tensor(image)
    h, w = img.shape[-2:]
    nx, ny = params.patches or (3, 3)
    xe = np.linspace(0, w, nx + 1).round().astype(int)
    ye = np.linspace(0, h, ny + 1).round().astype(int)
    size = int(min(np.diff(xe).min(), np.diff(ye).min()))
    box = min(params.box, max(size // 2, min(size, 128)))
    box -= box % 2
    if box < 64:
        raise ValueError(f"patches of {size} px are too small for a spectrum: use fewer patches or a larger image")
    pp = replace(params, box=box)
    optics = Optics(float(pixel_size), float(voltage), float(cs_mm), float(amplitude_contrast))
    g = global_fit
    half = 0.5 * (g.defocus_u_A - g.defocus_v_A)
    a = math.radians(g.angle_deg)
    x_g = np.array([g.defocus_mean_A, half * math.cos(2 * a), half * math.sin(2 * a), math.radians(g.phase_shift_deg)])
    span = max(2000.0, 0.15 * x_g[0])
    n_off = 2 * int(math.ceil(span / 25.0)) + 1
    offsets = np.linspace(-span, span, n_off)
    step = offsets[1] - offsets[0]

    preps, curves, centres = [], [], []
    total = 2 * nx * ny
    for j in range(ny):
        for i in range(nx):
            tile = img[..., ye[j]:ye[j + 1], xe[i]:xe[i + 1]]
            prep = prepare_spectrum(power_spectrum(tile, box=box, overlap=pp.overlap), optics, pp)
            s_bins, bg, env, _, _ = fit_resolution(x_g, prep, optics, pp)
            nc = normalise_spectrum(prep, prep.grid, s_bins, bg, env)
            coef = torch.tensor(x_g, dtype=torch.float32, device=nc.y.device).repeat(n_off, 1)
            coef[:, 0] = torch.as_tensor(np.maximum(x_g[0] + offsets, 1.0), dtype=torch.float32, device=nc.y.device)
            curves.append(weighted_cc(coef, prep.grid, nc, optics).cpu().numpy())
            preps.append((prep, nc))
            centres.append(((xe[i] + xe[i + 1] - 1) / 2, (ye[j] + ye[j + 1] - 1) / 2))
            if progress is not None:
                progress(len(preps), total)
    centres_np = np.asarray(centres, float)
    cc_curves = np.stack(curves)  # (P, n_off)
    dx, dy = centres_np[:, 0] - w / 2, centres_np[:, 1] - h / 2
    c0, gx, gy = _plane_search(cc_curves, offsets, dx, dy)

    means, ccs, fits = [], [], []
    for k, (prep, nc) in enumerate(preps):
        guess = x_g[0] + c0 + gx * dx[k] + gy * dy[k]

        def f(m: float, prep=prep, nc=nc) -> float:
            c = torch.tensor(np.r_[m, x_g[1:]], dtype=torch.float64, device=nc.y.device)[None]
            return -float(weighted_cc(c, prep.grid, nc, optics)[0])

        res = minimize_scalar(f, bounds=(max(1.0, guess - 4 * step), guess + 4 * step), method="bounded",
                              options=dict(xatol=0.5))
        x = np.r_[res.x, x_g[1:]]
        s_bins, bg, env, curves_1d, max_res = fit_resolution(x, prep, optics, pp)
        fits.append(make_fit(x, -float(res.fun), max_res, prep, optics, pp, s_bins, bg, env, curves_1d))
        means.append(float(res.x))
        ccs.append(-float(res.fun))
        if progress is not None:
            progress(len(preps) + k + 1, total)
    plane = fit_defocus_plane(centres_np, np.asarray(means), np.asarray(ccs), width=w, height=h)
    return PatchCTF(centres_px=centres_np, defocus_A=np.asarray(means), fits=fits, plane=plane, shape=(h, w),
                    cc=np.asarray(ccs))


def _plane_search(curves: np.ndarray, offsets: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                  n_grad: int = 41) -> tuple[float, float, float]:
    """Plane offsets ``(c0, gx, gy)`` maximising Σ_patches CC_p(c0 + gx·dx_p + gy·dy_p) on a grid.

    ``curves (P, K)``: each patch's CC at the defocus ``offsets (K,)`` (Å from the global mean);
    the CC between ladder points is interpolated linearly, outside the ladder it is 0.
    """
    span = offsets[-1]
    ext_x, ext_y = max(np.abs(dx).max(), 1.0), max(np.abs(dy).max(), 1.0)
    gxs = np.linspace(-span / ext_x, span / ext_x, n_grad) if np.ptp(dx) > 0 else np.zeros(1)
    gys = np.linspace(-span / ext_y, span / ext_y, n_grad) if np.ptp(dy) > 0 else np.zeros(1)
    c0s = offsets
    gx, gy, c0 = np.meshgrid(gxs, gys, c0s, indexing="ij")
    total = np.zeros(gx.shape)
    step = offsets[1] - offsets[0]
    for p in range(len(dx)):  # a handful of patches; each term is one vectorised interpolation
        t = (c0 + gx * dx[p] + gy * dy[p] - offsets[0]) / step
        i = np.floor(t).astype(int)
        fr = t - i
        ok = (i >= 0) & (i < len(offsets) - 1)
        i = np.clip(i, 0, len(offsets) - 2)
        total += np.where(ok, curves[p, i] * (1 - fr) + curves[p, i + 1] * fr, 0.0)
    k = np.unravel_index(np.argmax(total), total.shape)
    return float(c0[k]), float(gx[k]), float(gy[k])
