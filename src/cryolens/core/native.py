"""Optional native (C) kernels, compiled on first use, with the PyTorch code as the fallback.

The trilinear insertion of central slices into a Fourier accumulator is a scatter of eight
corners per frequency. PyTorch's CPU ``scatter_add_`` runs one element at a time through its
generic indexing machinery (~5 ns per element and accumulator) and the corner indices and
weights have to be materialised first (int64, eight per frequency), so the eager insertion
costs ~600 µs per 96² image. The C loop below computes each frequency's coordinates, corners
and weights in registers and prefetches the accumulator lines a few frequencies ahead (the
accumulator, tens of MB, lives in L3 or DRAM): ~4x less CPU time for the same sums (to float
rounding; only the order of the additions differs).

The library is built with the system C compiler (``$CC``, else ``cc``/``gcc``) into
``$CRYOLENS_CACHE`` (default ``~/.cache/cryolens``) under a name that hashes the source and the
CPU's feature flags, once per machine; a build takes ~0.2 s. It is built for this CPU (``-march=native``)
when the compiler takes that, else as generic code. ``CRYOLENS_NATIVE=0`` switches it off; without a compiler,
or if anything fails, callers use their PyTorch code (one warning in the log).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["native_enabled", "native_library", "build_library", "insert_slices", "shift_sum", "cross_spectra", "retain_freed_memory"]

log = logging.getLogger("cryolens.native")

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#define AHEAD 24

/* Trilinear insertion of B slices of M frequencies into a centred half-volume accumulator
   (S = P+1 rows in z and y, nx = P/2+1 in x; see cryolens.core.projector). Frequency m of slice b
   sits at pad * A_b^T (kx, ky, 0), folded to x >= 0 (the value then conjugated). data holds complex
   (re, im) pairs, weight one float per voxel; vals (B, M) complex, wgt (B, M) floats with row
   stride wstride (0: one row for all slices). Returns the number of frequencies that fell outside
   the accumulator (not inserted). */
int64_t insert_slices(float *restrict data, float *restrict weight, int64_t P,
                      const float *restrict k, int64_t M, const float *restrict rot,
                      const float *restrict vals, const float *restrict wgt, int64_t wstride,
                      int64_t B, float pad)
{
    const int64_t h = P / 2, S = P + 1, nx = P / 2 + 1, sxy = S * nx;
    int64_t bad = 0;
    int64_t *base = malloc(sizeof(int64_t) * (M + AHEAD));
    float *frac = malloc(sizeof(float) * 3 * M);
    float *sign = malloc(sizeof(float) * M);
    if (!base || !frac || !sign) { free(base); free(frac); free(sign); return -1; }
    for (int64_t b = 0; b < B; b++) {
        const float *A = rot + 9 * b;
        const float *v = vals + 2 * M * b;
        const float *wv = wgt + wstride * b;
        for (int64_t m = 0; m < M; m++) {
            float kx = k[2 * m], ky = k[2 * m + 1];
            float x = (kx * A[0] + ky * A[3]) * pad;
            float y = (kx * A[1] + ky * A[4]) * pad;
            float z = (kx * A[2] + ky * A[5]) * pad;
            float s = x < 0 ? -1.f : 1.f;
            x *= s; y *= s; z *= s;
            sign[m] = s;
            if (!(x >= 0 && x < nx - 1 && y >= -h && y < h && z >= -h && z < h)) {
                base[m] = -1; bad++; continue;
            }
            float fx = floorf(x), fy = floorf(y), fz = floorf(z);
            frac[3 * m] = x - fx; frac[3 * m + 1] = y - fy; frac[3 * m + 2] = z - fz;
            base[m] = (((int64_t)fz + h) * S + ((int64_t)fy + h)) * nx + (int64_t)fx;
        }
        for (int64_t m = M; m < M + AHEAD; m++) base[m] = -1;
        for (int64_t m = 0; m < M; m++) {
            int64_t q = base[m + AHEAD];
            if (q >= 0) {
                __builtin_prefetch(data + 2 * q, 1); __builtin_prefetch(data + 2 * (q + nx), 1);
                __builtin_prefetch(data + 2 * (q + sxy), 1); __builtin_prefetch(data + 2 * (q + sxy + nx), 1);
                __builtin_prefetch(weight + q, 1); __builtin_prefetch(weight + q + nx, 1);
                __builtin_prefetch(weight + q + sxy, 1); __builtin_prefetch(weight + q + sxy + nx, 1);
            }
            int64_t b0 = base[m];
            if (b0 < 0) continue;
            float tx = frac[3 * m], ty = frac[3 * m + 1], tz = frac[3 * m + 2];
            float re = v[2 * m], im = sign[m] * v[2 * m + 1], ww = wv[m];
            float wz[2] = {1 - tz, tz}, wy[2] = {1 - ty, ty}, wx[2] = {1 - tx, tx};
            for (int dz = 0; dz < 2; dz++)
                for (int dy = 0; dy < 2; dy++) {
                    float wzy = wz[dz] * wy[dy];
                    int64_t row = b0 + dz * sxy + dy * nx;
                    for (int dx = 0; dx < 2; dx++) {
                        float w = wzy * wx[dx];
                        int64_t i = row + dx;
                        data[2 * i] += w * re;
                        data[2 * i + 1] += w * im;
                        weight[i] += w * ww;
                    }
                }
        }
    }
    free(base); free(frac); free(sign);
    return bad;
}

/* acc += spec * ey[r] * ex[c] over an (H, Wc) complex spectrum (a Fourier shift by separable phase
   factors), and acc_dw += the same times w[r, c] when w is given: one pass for both sums. */
/* (vr, vi) = s * y * x for complex s, x (re, im pairs) and y = yr + i yi: a spectrum value moved by the phase
   factors of its row and column. */
static inline void moved(const float *restrict s, float yr, float yi, const float *restrict x, float *vr, float *vi)
{
    const float pr = yr * x[0] - yi * x[1], pi = yr * x[1] + yi * x[0];
    *vr = s[0] * pr - s[1] * pi;
    *vi = s[0] * pi + s[1] * pr;
}

/* acc += sum_b spec_b * ey_b[r] * ex_b[c] (and acc_dw += the same times the frame's weight) over B frames of
   (H, Wc) complex spectra; rows outermost, so each accumulator row is read and written once per call. Weights:
   w (B, H, Wc) per frame, or with step: w (H, Wc) the first frame's, advanced in place by step per frame. */
void shift_sum(const float *restrict spec, const float *restrict ey, const float *restrict ex,
               float *restrict w, const float *restrict step, float *restrict acc, float *restrict acc_dw,
               int64_t B, int64_t H, int64_t Wc)
{
    for (int64_t r = 0; r < H; r++) {
        float *a = acc + 2 * Wc * r;
        float *d = w ? acc_dw + 2 * Wc * r : 0;
        const float *st = step ? step + Wc * r : 0;
        for (int64_t b = 0; b < B; b++) {
            const float yr = ey[2 * (H * b + r)], yi = ey[2 * (H * b + r) + 1];
            const float *s = spec + 2 * Wc * (H * b + r);
            const float *x = ex + 2 * Wc * b;
            float *q = w ? w + Wc * (step ? r : H * b + r) : 0;
            for (int64_t c = 0; c < Wc; c++) {
                float vr, vi;
                moved(s + 2 * c, yr, yi, x + 2 * c, &vr, &vi);
                a[2 * c] += vr; a[2 * c + 1] += vi;
                if (q) { d[2 * c] += q[c] * vr; d[2 * c + 1] += q[c] * vi; }
            }
            if (st)
                for (int64_t c = 0; c < Wc; c++) q[c] *= st[c];
        }
    }
}

/* Unblur's cross spectra for L batches of F frames of (H, Wc) complex spectra: with cur_f = spec_f * ey_f[r] *
   ex_f[c], ccs_f = conj(cur_f) * (sum_g cur_g - cur_f) * filt, a row of all frames at a time (in cache).
   Returns -1 when out of memory. */
int64_t cross_spectra(const float *restrict spec, const float *restrict ey, const float *restrict ex,
                      const float *restrict filt, float *restrict ccs, int64_t L, int64_t F, int64_t H, int64_t Wc)
{
    float *tot = malloc(sizeof(float) * 2 * Wc);
    if (!tot) return -1;
    for (int64_t l = 0; l < L; l++) {
        for (int64_t r = 0; r < H; r++) {
            for (int64_t c = 0; c < 2 * Wc; c++) tot[c] = 0.f;
            for (int64_t f = 0; f < F; f++) {
                const int64_t row = (l * F + f) * H + r;
                const float yr = ey[2 * row], yi = ey[2 * row + 1];
                const float *s = spec + 2 * Wc * row, *x = ex + 2 * Wc * (l * F + f);
                float *o = ccs + 2 * Wc * row;
                for (int64_t c = 0; c < Wc; c++) {
                    float vr, vi;
                    moved(s + 2 * c, yr, yi, x + 2 * c, &vr, &vi);
                    o[2 * c] = vr; o[2 * c + 1] = vi;
                    tot[2 * c] += vr; tot[2 * c + 1] += vi;
                }
            }
            const float *q = filt + Wc * r;
            for (int64_t f = 0; f < F; f++) {
                float *o = ccs + 2 * Wc * ((l * F + f) * H + r);
                for (int64_t c = 0; c < Wc; c++) {
                    float vr = o[2 * c], vi = o[2 * c + 1];
                    float er = tot[2 * c] - vr, ei = tot[2 * c + 1] - vi;
                    o[2 * c] = (vr * er + vi * ei) * q[c];
                    o[2 * c + 1] = (vr * ei - vi * er) * q[c];
                }
            }
        }
    }
    free(tot);
    return 0;
}
"""

FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno"]
#: Tried first: code for this CPU (here 1.7-2.2x faster motion kernels than the generic build); the library's
#: name then hashes the CPU's feature flags, so nodes of another CPU sharing the cache build their own.
CPU_FLAGS = ["-march=native"]
_lock = threading.Lock()
_state: dict = {}


def native_enabled() -> bool:
    """False when ``CRYOLENS_NATIVE`` is ``0``/``off``/``false``/``no``."""
    return os.environ.get("CRYOLENS_NATIVE", "auto").lower() not in ("0", "off", "false", "no")


def _cache_dir() -> Path:
    if os.environ.get("CRYOLENS_CACHE"):
        return Path(os.environ["CRYOLENS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cryolens"


def _cpu_features() -> str:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``), else the processor's name: part of the library's name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_library(path: Path, cpu_flags: list[str] | None = None) -> None:
    """Compile :data:`SOURCE` into ``path`` (written under a temporary name, then renamed: concurrent
    builds by several processes each produce a whole file), with ``cpu_flags`` (default :data:`CPU_FLAGS`)
    when the compiler takes them, else generic code."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (set CC or install gcc)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, lib = Path(tmp) / "kernels.c", Path(tmp) / path.name
        src.write_text(SOURCE)
        for extra in (CPU_FLAGS if cpu_flags is None else cpu_flags, []):  # else generic code
            run = subprocess.run([cc, *FLAGS, *extra, "-o", str(lib), str(src), "-lm"], capture_output=True,
                                 text=True, timeout=120)
            if run.returncode == 0:
                break
        if run.returncode != 0:
            raise RuntimeError(f"{cc} failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ''}")
        os.replace(lib, path)


def native_library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use), or None when disabled or unavailable."""
    if not native_enabled():
        return None
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        try:
            key = hashlib.sha256((SOURCE + " ".join(FLAGS + CPU_FLAGS) + _cpu_features()).encode()).hexdigest()[:16]
            path = _cache_dir() / f"kernels-{key}-{platform.machine()}.so"
            if not path.is_file():
                build_library(path)
            lib = ctypes.CDLL(str(path))  # CDLL calls release the GIL: threads may insert in parallel
            p, i = ctypes.c_void_p, ctypes.c_int64
            lib.insert_slices.argtypes = [p, p, i, p, i, p, p, p, i, i, ctypes.c_float]
            lib.insert_slices.restype = i
            lib.shift_sum.argtypes = [p, p, p, p, p, p, p, i, i, i]
            lib.shift_sum.restype = None
            lib.cross_spectra.argtypes = [p, p, p, p, p, i, i, i, i]
            lib.cross_spectra.restype = i
        except Exception as e:  # noqa: BLE001 - any build or load problem means: use the PyTorch code
            log.warning("native kernels unavailable (%s: %s); using PyTorch", type(e).__name__, e)
            lib = None
        _state["lib"] = lib
        return lib


def insert_slices(data: torch.Tensor, weight: torch.Tensor, P: int, k: torch.Tensor, rotations: torch.Tensor,
                  values: torch.Tensor, weights: torch.Tensor, pad: int) -> bool:
    """Insert slices into a centred accumulator (``BackProjector`` layout) with the C kernel.

    Args:
        data: ``((P+1)²·(P//2+1),)`` complex64 sums; weight: the same shape, float32.
        P: padded box; k: ``(M, 2)`` frequencies (kx, ky) in cycles per box; pad: padding factor.
        rotations: ``(B, 3, 3)`` RELION matrices; values: ``(B, M)`` complex64 (already CTF-weighted);
        weights: ``(B, M)`` or ``(1, M)`` CTF² weights.

    Returns False (nothing done) when the kernel is unavailable or a tensor is not on the CPU in
    the expected dtype; the caller then uses its PyTorch code. Raises ValueError when frequencies
    fall outside the accumulator (non-orthonormal rotations).
    """
    lib = native_library()
    if lib is None or data.device.type != "cpu" or data.dtype != torch.complex64 or weight.dtype != torch.float32 \
            or not (data.is_contiguous() and weight.is_contiguous()):
        return False
    B, M = values.shape
    k = k.to(torch.float32).contiguous()
    rot = rotations.to(torch.float32).contiguous()
    vals = values.to(torch.complex64).contiguous()
    wgt = weights.to(torch.float32).contiguous()
    bad = lib.insert_slices(data.data_ptr(), weight.data_ptr(), P, k.data_ptr(), M, rot.data_ptr(), vals.data_ptr(),
                            wgt.data_ptr(), M if wgt.shape[0] > 1 else 0, B, float(pad))
    if bad < 0:
        raise MemoryError("native insert_slices: out of memory for its per-slice buffers")
    if bad:
        raise ValueError(f"{bad} slice frequencies fall outside the accumulator: are the rotations orthonormal?")
    return True


def shift_sum(acc: torch.Tensor, acc_dw: torch.Tensor | None, spectra: torch.Tensor, ey: torch.Tensor,
              ex: torch.Tensor, weights: torch.Tensor | None, step: torch.Tensor | None = None) -> bool:
    """``acc += Σ_b spectra[b] · ey[b, :, None] · ex[b, None, :]`` and ``acc_dw += Σ_b (the same) · w_b``
    in one pass over the accumulators (C).

    ``acc``, ``acc_dw`` are ``(H, Wc)`` complex64; ``spectra (B, H, Wc)`` complex64 with phase factors
    ``ey (B, H)`` and ``ex (B, Wc)`` complex64 (a leading B of 1 may be left out everywhere). Weights
    (float32): ``weights (B, H, Wc)`` per frame; or, with ``step (H, Wc)``, ``weights (H, Wc)`` are the first
    frame's and each next frame's are the previous times ``step`` (dose weighting): ``weights`` is then
    advanced in place and holds the weights of the frame after the last on return. None: no weighting
    (``acc_dw`` is not touched). Returns False (nothing done) when the kernel is unavailable or a tensor
    is not a contiguous CPU tensor of those dtypes.
    """
    lib = native_library()
    tensors = [acc, spectra, ey, ex] + ([acc_dw, weights] if weights is not None else []) + \
        ([step] if step is not None else [])
    if lib is None or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors) \
            or any(t.dtype != torch.complex64 for t in tensors[:4]) \
            or any(t.dtype != torch.float32 for t in tensors[5:]) \
            or (weights is not None and acc_dw.dtype != torch.complex64):
        return False
    H, Wc = acc.shape
    B = spectra.shape[0] if spectra.ndim == 3 else 1
    n_weights = H * Wc if step is not None else B * H * Wc
    if spectra.shape[-2:] != (H, Wc) or ey.numel() != B * H or ex.numel() != B * Wc or ey.shape[-1] != H or \
            ex.shape[-1] != Wc or (weights is not None and (weights.numel() != n_weights or
                                                            weights.shape[-2:] != (H, Wc) or acc_dw.shape != (H, Wc))) \
            or (step is not None and (weights is None or step.shape != (H, Wc))):
        raise ValueError("shift_sum: shapes do not match")
    lib.shift_sum(spectra.data_ptr(), ey.data_ptr(), ex.data_ptr(), 0 if weights is None else weights.data_ptr(),
                  0 if step is None else step.data_ptr(), acc.data_ptr(),
                  0 if weights is None else acc_dw.data_ptr(), B, H, Wc)
    return True


def cross_spectra(spectra: torch.Tensor, ey: torch.Tensor, ex: torch.Tensor, filt: torch.Tensor) -> torch.Tensor | None:
    """Each frame's cross spectrum with the filtered sum of the other frames, moved by phase factors (C).

    With ``cur = spectra · ey[..., :, None] · ex[..., None, :]`` (``spectra (..., F, H, Wc)``, ``ey (..., F, H)``,
    ``ex (..., F, Wc)``, all complex64), returns ``conj(cur) · (cur.sum(-3) - cur) · filt`` with ``filt (H, Wc)``
    float32, in one pass over the spectra. None when the kernel is unavailable or a tensor is not a contiguous
    CPU tensor of those dtypes (the caller then computes it with PyTorch).
    """
    lib = native_library()
    tensors = [spectra, ey, ex]
    if lib is None or any(t.device.type != "cpu" or not t.is_contiguous() or t.dtype != torch.complex64
                          for t in tensors) or filt.dtype != torch.float32 or filt.device.type != "cpu" \
            or spectra.ndim < 3:
        return None
    F, H, Wc = spectra.shape[-3:]
    L = spectra.numel() // (F * H * Wc) if spectra.numel() else 0
    if ey.shape != spectra.shape[:-1] or ex.shape != (*spectra.shape[:-2], Wc) or filt.shape != (H, Wc):
        raise ValueError("cross_spectra: shapes do not match")
    out = torch.empty_like(spectra)
    if L and lib.cross_spectra(spectra.data_ptr(), ey.data_ptr(), ex.data_ptr(), filt.contiguous().data_ptr(),
                               out.data_ptr(), L, F, H, Wc) < 0:
        raise MemoryError("native cross_spectra: out of memory for its row buffer")
    return out


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8  # glibc mallopt parameters (malloc.h)


@contextmanager
def retain_freed_memory():
    """Inside the block, glibc's malloc keeps freed memory for reuse instead of returning it to the system.

    Large buffers (a movie's frames and spectra, ~100 MB each) are otherwise mapped afresh for every movie
    and the kernel zeroes each new page: on 24 movies of 1024² x 24, idle, 1.2-1.5 instead of 1.5-1.8
    CPU-s of system time and 5.15-5.4 instead of 5.5-5.7 s wall. Threads that first allocate inside the block
    share the main arena (``M_ARENA_MAX`` 1): in per-thread arenas the movie threads' buffers were still mapped
    afresh (0.8 instead of 1.3 CPU-s of system time for that job). Peak memory is unchanged; on leaving, the
    defaults are restored (glibc fixes the number of arenas once it has reached it, so a process that created
    new threads inside keeps one arena) and the kept memory is released (``malloc_trim``). A no-op without glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_ARENA_MAX, 1)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    mallopt(_M_TOP_PAD, 128 << 20)
    try:
        yield
    finally:
        mallopt(_M_MMAP_MAX, 65536)
        mallopt(_M_ARENA_MAX, 0)
        mallopt(_M_TRIM_THRESHOLD, 128 << 10)
        mallopt(_M_TOP_PAD, 128 << 10)
        trim(0)
