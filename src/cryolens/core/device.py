"""Device selection for ``--device auto|cpu|cuda[:N]``, and the fastest type for matrix products on a device."""

from __future__ import annotations

import time

import torch

from cryolens.errors import InputError

__all__ = ["resolve_device", "fast_matmul_dtype", "product_seconds", "FAST_DTYPE"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when one is usable, else the CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available to this process; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device name; use auto, cpu or cuda (cuda:N).") from None


#: :func:`fast_matmul_dtype`'s answer per device kind (``"cpu"``, ``"cuda"``), measured once per process.
FAST_DTYPE: dict[str, torch.dtype] = {}


def fast_matmul_dtype(device: torch.device | str, *, speedup: float = 1.5) -> torch.dtype:
    """``torch.bfloat16`` where matrix products in it run at least ``speedup`` times faster than in float32 on
    ``device``'s kind (CPUs with AVX512-BF16 or AMX, recent GPUs), else ``torch.float32``.

    Measured once per device kind and process, on products of the size the picker's score products use (a few ms):
    torch says nothing of whether a CPU multiplies bf16 natively, and a type it must convert in software is far
    slower (float16, which these AVX-512 cores lack, ran at 4 GFLOP/s against float32's 73 and bfloat16's 212 on
    one thread here)."""
    device = torch.device(device)
    kind = device.type
    if kind not in FAST_DTYPE:
        FAST_DTYPE[kind] = torch.bfloat16 if product_seconds(torch.float32, device) > speedup * product_seconds(
            torch.bfloat16, device) else torch.float32
    return FAST_DTYPE[kind]


def product_seconds(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Best time of ``repeats`` products ``(512, 96) @ (96, 384)`` in ``dtype`` on ``device``."""
    a = torch.ones((512, 96), dtype=dtype, device=device)
    b = torch.ones((96, 384), dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up (kernel choice, caches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best
