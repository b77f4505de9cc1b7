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
``$CRYOLENS_CACHE`` (default ``~/.cache/cryolens``) under a name that hashes the source, once
per machine; a build takes ~0.2 s. ``CRYOLENS_NATIVE=0`` switches it off; without a compiler,
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

__all__ = ["native_enabled", "native_library", "insert_slices", "shift_sum", "retain_freed_memory"]

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
void shift_sum(const float *restrict spec, const float *restrict ey, const float *restrict ex,
               const float *restrict w, float *restrict acc, float *restrict acc_dw, int64_t H, int64_t Wc)
{
    for (int64_t r = 0; r < H; r++) {
        const float yr = ey[2 * r], yi = ey[2 * r + 1];
        const float *s = spec + 2 * Wc * r;
        float *a = acc + 2 * Wc * r;
        for (int64_t c = 0; c < Wc; c++) {
            float pr = yr * ex[2 * c] - yi * ex[2 * c + 1], pi = yr * ex[2 * c + 1] + yi * ex[2 * c];
            float vr = s[2 * c] * pr - s[2 * c + 1] * pi, vi = s[2 * c] * pi + s[2 * c + 1] * pr;
            a[2 * c] += vr; a[2 * c + 1] += vi;
            if (w) {
                float q = w[Wc * r + c];
                acc_dw[2 * Wc * r + 2 * c] += q * vr; acc_dw[2 * Wc * r + 2 * c + 1] += q * vi;
            }
        }
    }
}
"""

FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno"]
_lock = threading.Lock()
_state: dict = {}


def native_enabled() -> bool:
    """False when ``CRYOLENS_NATIVE`` is ``0``/``off``/``false``/``no``."""
    return os.environ.get("CRYOLENS_NATIVE", "auto").lower() not in ("0", "off", "false", "no")


def _cache_dir() -> Path:
    if os.environ.get("CRYOLENS_CACHE"):
        return Path(os.environ["CRYOLENS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cryolens"


def _build(path: Path) -> None:
    """Compile :data:`SOURCE` into ``path`` (written under a temporary name, then renamed: concurrent
    builds by several processes each produce a whole file)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (set CC or install gcc)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, lib = Path(tmp) / "kernels.c", Path(tmp) / path.name
        src.write_text(SOURCE)
        run = subprocess.run([cc, *FLAGS, "-o", str(lib), str(src), "-lm"], capture_output=True, text=True,
                             timeout=120)
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
            key = hashlib.sha256((SOURCE + " ".join(FLAGS)).encode()).hexdigest()[:16]
            path = _cache_dir() / f"kernels-{key}-{platform.machine()}.so"
            if not path.is_file():
                _build(path)
            lib = ctypes.CDLL(str(path))  # CDLL calls release the GIL: threads may insert in parallel
            p, i = ctypes.c_void_p, ctypes.c_int64
            lib.insert_slices.argtypes = [p, p, i, p, i, p, p, p, i, i, ctypes.c_float]
            lib.insert_slices.restype = i
            lib.shift_sum.argtypes = [p, p, p, p, p, p, i, i]
            lib.shift_sum.restype = None
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


def shift_sum(acc: torch.Tensor, acc_dw: torch.Tensor | None, spectrum: torch.Tensor, ey: torch.Tensor,
              ex: torch.Tensor, weights: torch.Tensor | None) -> bool:
    """``acc += spectrum · ey[:, None] · ex[None, :]`` and ``acc_dw += (the same) · weights`` in one pass (C).

    ``acc``, ``acc_dw`` and ``spectrum`` are ``(H, Wc)`` complex64, ``ey (H,)`` and ``ex (Wc,)`` complex64
    phase factors, ``weights (H, Wc)`` float32 or None (then ``acc_dw`` is not touched). Returns False
    (nothing done) when the kernel is unavailable or a tensor is not a contiguous CPU tensor of those dtypes.
    """
    lib = native_library()
    tensors = [acc, spectrum, ey, ex] + ([acc_dw, weights] if weights is not None else [])
    if lib is None or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors) \
            or any(t.dtype != torch.complex64 for t in tensors[:4]) \
            or (weights is not None and (acc_dw.dtype != torch.complex64 or weights.dtype != torch.float32)):
        return False
    H, Wc = acc.shape
    if spectrum.shape != (H, Wc) or ey.shape != (H,) or ex.shape != (Wc,) or \
            (weights is not None and (weights.shape != (H, Wc) or acc_dw.shape != (H, Wc))):
        raise ValueError("shift_sum: shapes do not match")
    lib.shift_sum(spectrum.data_ptr(), ey.data_ptr(), ex.data_ptr(), 0 if weights is None else weights.data_ptr(),
                  acc.data_ptr(), 0 if weights is None else acc_dw.data_ptr(), H, Wc)
    return True


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc mallopt parameters (malloc.h)


@contextmanager
def retain_freed_memory():
    """Inside the block, glibc's malloc keeps freed memory for reuse instead of returning it to the system.

    Large buffers (a movie's frames and spectra, ~100 MB each) are otherwise mapped afresh for every movie
    and the kernel zeroes each new page: on 24 movies of 1024² x 24, idle, 1.2-1.5 instead of 1.5-1.8
    CPU-s of system time and 5.15-5.4 instead of 5.5-5.7 s wall. Peak memory is unchanged; on leaving, the
    defaults are restored and the kept memory is released (``malloc_trim``). A no-op without glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    mallopt(_M_TOP_PAD, 128 << 20)
    try:
        yield
    finally:
        mallopt(_M_MMAP_MAX, 65536)
        mallopt(_M_TRIM_THRESHOLD, 128 << 10)
        mallopt(_M_TOP_PAD, 128 << 10)
        trim(0)
