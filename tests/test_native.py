"""The native (C) insertion kernel (core/native.py) against the PyTorch insertion it replaces.

Ground truth: the PyTorch path of ``BackProjector.insert`` (itself pinned as the exact adjoint of
``project`` in test_projector.py), run with ``CRYOLENS_NATIVE=0`` on the same inputs.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys

import pytest
import torch

from cryolens.core.native import native_library
from cryolens.core.projector import BackProjector
from cryolens.core.rotations import euler_to_matrix, random_euler
from cryolens.core.symmetry import symmetry_matrices

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRYOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "native-cache"))


def _inputs(n: int, count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    rot = euler_to_matrix(*random_euler(count, g))
    shape = (count, n, n // 2 + 1)
    images = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    origins = 3 * torch.randn(count, 2, generator=g)
    ctf = torch.rand(count, n, n // 2 + 1, generator=g) * 2 - 1
    return images, rot, origins, ctf


def _insert(monkeypatch, native: bool, n: int, pad: int, *args, **kwargs) -> BackProjector:
    monkeypatch.setenv("CRYOLENS_NATIVE", "1" if native else "0")
    bp = BackProjector(n, pad=pad)
    bp.insert(*args, **kwargs)
    return bp


@pytest.mark.parametrize("n,pad,with_ctf,sym", [(32, 2, True, "C1"), (33, 2, False, "C1"), (24, 3, True, "D2")])
def test_native_insert_equals_pytorch_insert(monkeypatch, n, pad, with_ctf, sym):
    images, rot, origins, ctf = _inputs(n, 40, seed=n)
    kw = dict(symmetry=symmetry_matrices(sym))
    args = (images, rot, origins, ctf if with_ctf else None)
    ref = _insert(monkeypatch, False, n, pad, *args, **kw)
    got = _insert(monkeypatch, True, n, pad, *args, **kw)
    assert native_library() is not None
    scale = ref.data.abs().max()
    assert (got.data - ref.data).abs().max() <= 1e-5 * scale
    assert (got.weight - ref.weight).abs().max() <= 1e-5 * ref.weight.max()
    assert got.count == ref.count == 40
    # The sums are not trivially equal: the data carry every image.
    assert scale > 0 and ref.weight.sum() > 0


def test_native_insert_rejects_frequencies_outside_the_accumulator(monkeypatch):
    images, rot, _, _ = _inputs(16, 2, seed=1)
    monkeypatch.setenv("CRYOLENS_NATIVE", "1")
    bp = BackProjector(16)
    with pytest.raises(ValueError, match="outside the accumulator"):
        bp.insert(images, 3.0 * rot)
    assert bp.count == 0


def test_build_falls_back_to_generic_code_when_the_compiler_rejects_the_cpu_flags(tmp_path):
    import ctypes

    from cryolens.core.native import build_library

    build_library(tmp_path / "k.so", cpu_flags=["-fno-such-option-for-any-compiler"])
    assert hasattr(ctypes.CDLL(str(tmp_path / "k.so")), "shift_sum")


def test_native_switch_off(monkeypatch):
    monkeypatch.setenv("CRYOLENS_NATIVE", "off")
    assert native_library() is None


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("frames", [None, 3])
def test_native_shift_sum_equals_pytorch(weighted, frames):
    """One frame (no leading axis) or a chunk of 3: the sums equal the PyTorch products."""
    from cryolens.core.native import shift_sum

    g = torch.Generator().manual_seed(3)
    h, wc = 48, 25
    lead = () if frames is None else (frames,)
    spec = torch.complex(torch.randn(*lead, h, wc, generator=g), torch.randn(*lead, h, wc, generator=g))
    ey = torch.polar(torch.ones(*lead, h), torch.rand(*lead, h, generator=g) * 6.3)
    ex = torch.polar(torch.ones(*lead, wc), torch.rand(*lead, wc, generator=g) * 6.3)
    w = torch.rand(*lead, h, wc, generator=g) if weighted else None
    acc = torch.complex(torch.randn(h, wc, generator=g), torch.randn(h, wc, generator=g))
    acc_dw = acc.clone() * 2
    moved = (spec * ey[..., :, None] * ex[..., None, :]).reshape(-1, h, wc)
    want = acc + moved.sum(0)
    want_dw = acc_dw + (moved * w.reshape(-1, h, wc)).sum(0) if weighted else acc_dw.clone()
    assert shift_sum(acc, acc_dw, spec, ey, ex, w)
    assert torch.allclose(acc, want, atol=1e-5)
    assert torch.allclose(acc_dw, want_dw, atol=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        shift_sum(acc, acc_dw, spec[..., :-1, :].contiguous(), ey, ex, w)


def test_native_shift_sum_running_weights():
    """Dose weighting's recurrence: the first frame's weights times ``step`` per frame, advanced in place."""
    from cryolens.core.native import shift_sum

    g = torch.Generator().manual_seed(4)
    b, h, wc = 4, 16, 9
    spec = torch.complex(torch.randn(b, h, wc, generator=g), torch.randn(b, h, wc, generator=g))
    ey = torch.polar(torch.ones(b, h), torch.rand(b, h, generator=g) * 6.3)
    ex = torch.polar(torch.ones(b, wc), torch.rand(b, wc, generator=g) * 6.3)
    w0, step = torch.rand(h, wc, generator=g), torch.rand(h, wc, generator=g)
    per_frame = w0 * step ** torch.arange(b)[:, None, None]
    acc, acc_dw = torch.zeros(h, wc, dtype=torch.complex64), torch.zeros(h, wc, dtype=torch.complex64)
    running = w0.clone()
    assert shift_sum(acc, acc_dw, spec, ey, ex, running, step)
    moved = spec * ey[..., :, None] * ex[..., None, :]
    assert torch.allclose(acc_dw, (moved * per_frame).sum(0), atol=1e-5)
    assert torch.allclose(running, w0 * step ** b, atol=1e-6)


def test_native_cross_spectra_equals_pytorch():
    """Two batches (patches) of 5 frames: Unblur's cross spectra against the sum of the other frames."""
    from cryolens.core.native import cross_spectra

    g = torch.Generator().manual_seed(5)
    lead, f, h, wc = 2, 5, 12, 7
    spec = torch.complex(torch.randn(lead, f, h, wc, generator=g), torch.randn(lead, f, h, wc, generator=g))
    ey = torch.polar(torch.ones(lead, f, h), torch.rand(lead, f, h, generator=g) * 6.3)
    ex = torch.polar(torch.ones(lead, f, wc), torch.rand(lead, f, wc, generator=g) * 6.3)
    filt = torch.rand(h, wc, generator=g)
    cur = spec * ey[..., :, None] * ex[..., None, :]
    want = cur.conj() * (cur.sum(1, keepdim=True) - cur) * filt
    got = cross_spectra(spec, ey, ex, filt)
    assert got is not None and torch.allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="shapes"):
        cross_spectra(spec, ey, ex, filt[:-1])
    assert cross_spectra(spec, ey, ex, filt.double()) is None  # wrong dtype: the caller's PyTorch path


_FAULTS_SCRIPT = """
import ctypes, resource
from cryolens.core.native import retain_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


def faults_of_fresh_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 << 20)
    libc.memset(p, 1, 64 << 20)  # touch every page
    libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


faults_of_fresh_buffer()
outside = faults_of_fresh_buffer()  # mapped afresh each time: one fault per new page
with retain_freed_memory():
    faults_of_fresh_buffer()  # the first one grows the heap
    inside = faults_of_fresh_buffer()  # the second reuses it
after = faults_of_fresh_buffer()  # the defaults are back: mapped afresh again
print(outside, inside, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_retain_freed_memory_reuses_large_buffers_without_new_page_faults():
    """Page faults of a 64 MB glibc buffer (above the largest mmap threshold), touched and freed: glibc's malloc
    directly, as the C kernels and numpy use it (torch's CPU allocator here faults on reused pages too). In a
    fresh process, so that no earlier test's allocator state (or a job thread still inside the block) counts."""
    r = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    outside, inside, after = (int(v) for v in r.stdout.split())
    assert outside > 2000 and inside < outside / 4 and after > 2000, (outside, inside, after)
