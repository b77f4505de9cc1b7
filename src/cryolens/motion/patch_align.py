"""Local (patch) motion: patch trajectories, RELION's polynomial model, and model-corrected sums.

1. :func:`measure_patches`: after global alignment, every patch of a grid is aligned
   frame by frame against the sum of its other frames (a running group of frames for
   signal), all patches at once.
2. :func:`fit_polynomial_model`: weighted least squares of RELION's third-order model
   (MotionCor2's; :class:`cryolens.core.motion.PolynomialMotion`, 18 coefficients
   per axis, zero at frame 0) to the patch shifts, with a free offset per patch (the
   reference of a patch sits at its frames' mean position) and one pass of outlier
   down-weighting.
3. :func:`local_sums`: the corrected (and dose-weighted) sums with the model applied:
   the image is cut into overlapping tiles, each frame's tile is taken at the integer part
   of its total shift and moved by the rest in Fourier space (no real-space interpolation),
   and the tiles are blended with a partition of unity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cryolens.motion.dose_weight import DoseWeights
from cryolens.motion.global_align import align_frames, bfactor_filter, cross_mask, phase_ramp, freq_axes
from cryolens.core.fourier import irfftn
from cryolens.core.motion import PolynomialMotion, relion_patch_centres

__all__ = ["PatchMeasurement", "measure_patches", "fit_polynomial_model", "evaluate_model", "local_sums"]


class PatchMeasurement:
    """Patch centres ``(P, 2)`` [input px], measured local shifts ``(P, F, 2)`` [input px, not
    re-centred] and mean peak SNR ``(P,)``."""

    def __init__(self, centres: torch.Tensor, shifts: torch.Tensor, snr: torch.Tensor):
        self.centres, self.shifts, self.snr = centres, shifts, snr


def _taper(n: int, edge: int, device) -> torch.Tensor:
    """1 inside, raised-cosine to ~0 over ``edge`` pixels at both ends."""
    t = torch.ones(n, device=device)
    if edge > 0:
        ramp = torch.sin(0.5 * math.pi * (torch.arange(edge, device=device) + 0.5) / edge) ** 2
        t[:edge] = ramp
        t[n - edge:] = ramp.flip(0)
    return t


def measure_patches(aligned: torch.Tensor, *, full_shape: tuple[int, int], grid: tuple[int, int], overlap: float,
                    pixel_size: float, bfactor: float, max_shift_A: float, group: int, cross: tuple[int, int] | None,
                    termination: float, max_iterations: int, chunk_bytes: int = 1 << 30) -> PatchMeasurement:
    """Align the patches of globally aligned frames.

    Args:
        aligned: ``(F, h, w)`` globally aligned frames at the alignment scale.
        full_shape: ``(H, W)`` of the input frames (the patch centres are RELION's on it).
        grid: ``(nx, ny)`` patches; overlap: patch width is ``(1 + overlap)`` grid spacings.
        pixel_size: of ``aligned`` [Å]; bfactor [Å²], max_shift_A [Å] per round.
        group: odd number of frames correlated together; cross: central-cross widths or None.
        termination [input px], max_iterations: as for the global alignment.
        chunk_bytes: memory for the patches aligned at once.
    """
    f, h, w = aligned.shape
    hh, ww = full_shape
    bx, by = ww / w, hh / h
    dev = aligned.device
    pw = min(w, max(32, 2 * round(ww / grid[0] * (1 + overlap) / bx / 2)))
    ph = min(h, max(32, 2 * round(hh / grid[1] * (1 + overlap) / by / 2)))
    cx = torch.tensor(relion_patch_centres(ww, grid[0]), dtype=torch.float64)
    cy = torch.tensor(relion_patch_centres(hh, grid[1]), dtype=torch.float64)
    x0 = (torch.round(cx / bx) - pw // 2).clamp(0, w - pw).long()
    y0 = (torch.round(cy / by) - ph // 2).clamp(0, h - ph).long()
    yy0, xx0 = torch.meshgrid(y0, x0, indexing="ij")  # P ordered y-major like RELION's data_local_shift
    yy0, xx0 = yy0.reshape(-1).to(dev), xx0.reshape(-1).to(dev)
    rows = yy0[:, None] + torch.arange(ph, device=dev)
    cols = xx0[:, None] + torch.arange(pw, device=dev)
    taper = _taper(ph, ph // 8, dev)[:, None] * _taper(pw, pw // 8, dev)[None, :]
    filt = bfactor_filter(ph, pw, pixel_size, bfactor, device=dev)
    if cross is not None:
        filt = filt * cross_mask(ph, pw, cross[0], cross[1], device=dev)
    per_patch = f * ph * (pw // 2 + 1) * 8 * 4  # the spectra and ~3 working copies
    batch = max(1, min(len(rows), chunk_bytes // per_patch))
    shifts, snr = [], []
    for p0 in range(0, len(rows), batch):  # patches are independent: bounded memory
        r, c = rows[p0:p0 + batch], cols[p0:p0 + batch]
        patches = aligned[:, r[:, :, None], c[:, None, :]].transpose(0, 1)  # (P, F, ph, pw)
        patches = (patches - patches.mean(dim=(-2, -1), keepdim=True)) * taper
        spec = torch.fft.rfft2(patches)
        del patches
        trace = align_frames(spec, pw, filt=filt, max_shift=max_shift_A / pixel_size, termination=termination,
                             max_iterations=max_iterations, group=group, px_scale=(bx, by), stop_on="rms")
        del spec
        shifts.append(trace.shifts * torch.tensor([bx, by], dtype=torch.float64, device=dev))
        snr.append(trace.snr.mean(-1))
    shifts = torch.cat(shifts)
    centres = torch.stack([(xx0.double() + pw / 2) * bx, (yy0.double() + ph / 2) * by], -1)
    return PatchMeasurement(centres.cpu(), shifts.cpu(), torch.cat(snr).float().cpu())


def _design(centres: torch.Tensor, n_frames: int, width: int, height: int) -> torch.Tensor:
    """``(P, F, 18)`` RELION model basis ``z^t · b_g(x, y)`` at index ``3g + t - 1``."""
    x = centres[:, 0] / width - 0.5
    y = centres[:, 1] / height - 0.5
    spatial = torch.stack([torch.ones_like(x), x, x * x, y, y * y, x * y], -1)  # (P, 6)
    z = torch.arange(n_frames, dtype=torch.float64)
    temporal = torch.stack([z, z * z, z ** 3], -1)  # (F, 3)
    return (spatial[:, None, :, None] * temporal[None, :, None, :]).reshape(len(centres), n_frames, 18)


def evaluate_model(coeffs: torch.Tensor, frames: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, width: int,
                   height: int) -> torch.Tensor:
    """Model values ``(len(frames), len(x), 2)`` [px] of coefficients ``(2, 18)`` at 0-based
    frames and pixel coordinates ``x, y`` (``(N,)`` each)."""
    c = coeffs.to(torch.float64).reshape(2, 6, 3)
    xn = x.to(torch.float64) / width - 0.5
    yn = y.to(torch.float64) / height - 0.5
    spatial = torch.stack([torch.ones_like(xn), xn, xn * xn, yn, yn * yn, xn * yn], -1)  # (N, 6)
    z = frames.to(torch.float64)
    temporal = torch.stack([z, z * z, z ** 3], -1)  # (Fc, 3)
    return torch.einsum("ags,ng,fs->fna", c, spatial, temporal)


def fit_polynomial_model(meas: PatchMeasurement, use: torch.Tensor, *, width: int, height: int
                         ) -> tuple[PolynomialMotion, torch.Tensor]:
    """Fit RELION's model to the patches marked in ``use (P,)``; returns it and the measured
    shifts of every patch relative to its fitted frame-0 position ``(P, F, 2)``.

    The least-squares model is shrunk towards zero by ``1 - (noise share)/(model power)``
    (positive part), so that patches dominated by noise give (nearly) the global alignment.
    """
    p, f, _ = meas.shifts.shape
    design = _design(meas.centres, f, width, height)  # (P, F, 18)
    span = max(f - 1, 1)
    colscale = torch.tensor([span ** -t for t in (1, 2, 3)] * 6, dtype=torch.float64)  # condition z, z², z³
    sel = torch.nonzero(use).reshape(-1)
    a = design[sel] * colscale  # (Q, F, 18)
    q = len(sel)
    onehot = torch.eye(q, dtype=torch.float64)[:, None, :].expand(q, f, q)
    mat = torch.cat([a, onehot], -1).reshape(q * f, 18 + q)
    rhs = meas.shifts[sel].reshape(q * f, 2)
    wts = meas.snr[sel].double().clamp_min(1e-3)[:, None].expand(q, f).reshape(-1)
    for _ in range(2):  # weighted fit, then again with outliers (> 3 robust sigma) down-weighted
        sw = wts.sqrt()[:, None]
        sol = torch.linalg.lstsq(mat * sw, rhs * sw, driver="gelsd").solution
        res = torch.linalg.vector_norm(mat @ sol - rhs, dim=-1)
        sigma = 1.4826 * float(res.median()) + 1e-9
        wts = wts * torch.where(res > 3 * sigma, (3 * sigma / res) ** 2, torch.ones_like(res))
    # Shrink the model towards zero by the share of its power that noise alone would give
    # (positive-part James-Stein): a fit of p = 18 terms to N noisy points carries ~p/N of the noise.
    sw = wts.sqrt()[:, None]
    resid = (mat @ sol - rhs) * sw
    noise = float(resid.square().sum() / (wts.sum() * 2 * max(1.0, 1 - (18 + q) / (q * f))))
    fit = (mat[:, :18] @ sol[:18]) * sw
    power = float(fit.square().sum() / (wts.sum() * 2))
    shrink = max(0.0, 1.0 - noise * 18 / (q * f) / max(power, 1e-30))
    coeffs = (sol[:18] * colscale[:, None]).T.contiguous() * shrink  # (2, 18)
    model = PolynomialMotion(tuple(coeffs[0].tolist()), tuple(coeffs[1].tolist()))
    fitted = torch.einsum("pfk,ka->pfa", design, coeffs.T)
    offsets = (meas.shifts - fitted).mean(dim=1, keepdim=True)
    return model, meas.shifts - offsets


def _window_1d(n_tile: int, stride: int, taper: int, margin: int, device) -> torch.Tensor:
    """Flat over ``stride - taper`` px with raised-cosine ramps of ``taper`` px; zero in the margins.
    Tiles placed every ``stride`` px sum to 1 (sin² + cos²)."""
    w = torch.zeros(n_tile, device=device)
    ramp = torch.sin(0.5 * math.pi * (torch.arange(taper, device=device) + 0.5) / taper) ** 2
    w[margin:margin + taper] = ramp
    w[margin + taper:margin + stride] = 1.0
    w[margin + stride:margin + stride + taper] = ramp.flip(0)
    return w


def local_sums(frames: torch.Tensor, global_shifts: torch.Tensor, coeffs: torch.Tensor, *, stride: int,
               weights: Callable[[int, int], DoseWeights] | None, chunk_bytes: int = 1 << 29,
               progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Corrected sum (and dose-weighted sum) of frames with the global shifts plus a local model.

    Args:
        frames: ``(F, H, W)`` float frames.
        global_shifts: ``(F, 2)`` correction shifts [px] relative to frame 0.
        coeffs: ``(2, 18)`` RELION model of the local correction [px].
        stride: tile spacing [px] (even); tiles are ``stride + stride/4 + 2·margin`` px wide, the
            margin (>= 8 px) holding the largest local shift, which is applied by phase ramps
            after the integer part of the global shift is applied by slicing.
        weights: ``(tile_h, tile_w) -> DoseWeights`` on the tile grid, or None (no dose weighting).
        chunk_bytes: memory for one chunk of tiled frames.
        progress: called with (frames done, frames).

    Returns:
        ``(H, W)`` float32 sum and dose-weighted sum (or None).
    """
    f, hh, ww = frames.shape
    dev = frames.device
    ny, nx = -(-hh // stride), -(-ww // stride)
    taper = max(8, stride // 4 // 2 * 2)
    centre_probe = (torch.arange(nx, dtype=torch.float64) * stride + stride / 2)
    probe_y = (torch.arange(ny, dtype=torch.float64) * stride + stride / 2)
    py, px = torch.meshgrid(probe_y, centre_probe, indexing="ij")
    reach = float(evaluate_model(coeffs, torch.arange(f), px.reshape(-1), py.reshape(-1), width=ww,
                                 height=hh).abs().max()) if f else 0.0
    margin = 8 + 2 * math.ceil(reach / 2 + 0.5)  # room for the local part, moved by phase ramps
    tile = stride + taper + 2 * margin
    c0 = margin + taper  # canvas position of image pixel 0
    canvas = ((ny - 1) * stride + tile, (nx - 1) * stride + tile)
    start_y = torch.arange(ny, dtype=torch.float64) * stride - c0  # image row of each tile's first pixel
    start_x = torch.arange(nx, dtype=torch.float64) * stride - c0
    sy, sx = torch.meshgrid(start_y, start_x, indexing="ij")
    centres_x, centres_y = sx.reshape(-1) + tile / 2, sy.reshape(-1) + tile / 2
    n_tiles = ny * nx
    ky, kx = freq_axes(tile, tile, device=dev)
    acc = torch.zeros(n_tiles, tile, tile // 2 + 1, dtype=torch.complex64, device=dev)
    acc_dw = torch.zeros_like(acc) if weights is not None else None
    dw = weights(tile, tile) if weights is not None else None
    g = global_shifts.to(torch.float64).cpu()
    g_int = torch.round(g).long()
    pad = c0 + tile + int(g_int.abs().max())
    step = max(1, min(f, chunk_bytes // (n_tiles * tile * tile * 4 * 4)))
    for f0 in range(0, f, step):
        idx = torch.arange(f0, min(f, f0 + step))
        padded = torch.nn.functional.pad(frames[f0:f0 + len(idx), None].to(torch.float32), (pad,) * 4,
                                         mode="replicate")
        # canvas u <-> image y = u - c0 <- source row y - g_int_y: the integer global shift is a slice
        views = [padded[i, :, pad - c0 - int(g_int[j, 1]):pad - c0 - int(g_int[j, 1]) + canvas[0],
                        pad - c0 - int(g_int[j, 0]):pad - c0 - int(g_int[j, 0]) + canvas[1]]
                 for i, j in enumerate(idx.tolist())]
        del padded
        tiles = torch.nn.functional.unfold(torch.stack(views), tile, stride=stride)  # (fc, tile², T)
        del views
        tiles = tiles.reshape(len(idx), tile, tile, n_tiles).permute(0, 3, 1, 2)
        spec = torch.fft.rfft2(tiles)
        del tiles
        local = evaluate_model(coeffs, idx, centres_x, centres_y, width=ww, height=hh)  # (fc, T, 2)
        rest = (g[idx][:, None, :] - g_int[idx][:, None, :] + local).to(dev)
        spec *= phase_ramp(rest, ky, kx)
        acc += spec.sum(0)
        if acc_dw is not None:
            torch.view_as_real(acc_dw).add_((torch.view_as_real(spec) * dw(idx)[:, None, ..., None]).sum(0))
        del spec
        if progress is not None:
            progress(int(idx[-1]) + 1, f)
    win1 = _window_1d(tile, stride, taper, margin, dev)
    win = win1[:, None] * win1[None, :]

    def blend(spectra: torch.Tensor) -> torch.Tensor:
        t = irfftn(spectra, s=(tile, tile)) * win
        out = torch.nn.functional.fold(t.reshape(1, n_tiles, tile * tile).transpose(1, 2), canvas, tile, stride=stride)
        return out[0, 0, c0:c0 + hh, c0:c0 + ww]

    norm = torch.nn.functional.fold(win.reshape(1, tile * tile, 1).expand(1, tile * tile, n_tiles), canvas, tile,
                                    stride=stride)[0, 0, c0:c0 + hh, c0:c0 + ww].clamp_min(1e-6)
    plain = (blend(acc) / norm).to(torch.float32)
    dose = (blend(acc_dw) / norm).to(torch.float32) if acc_dw is not None else None
    return plain, dose
