"""Property-based fuzzing (hypothesis) of the STAR and MRC readers.

Random bytes, truncations and mutations of valid files must give either a valid result or
:class:`~cryolens.errors.InputError` whose message is one sentence naming the file; any other
exception is a bug. Examples are bounded so the module runs in a few seconds.
"""

from __future__ import annotations

import functools
import itertools
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryolens.errors import InputError
from cryolens.io import (clear_stack_cache, open_stack, read_micrographs, read_mrc, read_mrc_header, read_particles,
                         write_mrc, write_particles)

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
STAR_FUZZ = settings(FUZZ, max_examples=25)  # starfile takes ~0.1 s a file
_names = itertools.count()
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile warns about the files it still reads


@functools.lru_cache(maxsize=1)
def _valid() -> dict[str, bytes]:
    """The bytes of small valid files: particles STAR (3.1 and 3.0), a volume and a stack."""
    with tempfile.TemporaryDirectory() as tmp:
        return _make_valid(Path(tmp))


def _make_valid(d: Path) -> dict[str, bytes]:
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [1.5], "rlnImageSize": [8], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(3)],
                          "rlnAngleRot": [10.0, 20.0, 30.0], "rlnAngleTilt": [5.0, 50.0, 90.0],
                          "rlnAnglePsi": [0.0, 1.0, 2.0], "rlnDefocusU": [1e4, 1.1e4, 1.2e4],
                          "rlnDefocusV": [1e4, 1.05e4, 1.1e4], "rlnOpticsGroup": [1, 1, 1]})
    write_particles(d / "p.star", optics, parts)
    rng = np.random.default_rng(0)
    write_mrc(d / "v.mrc", rng.normal(size=(8, 8, 8)).astype(np.float32), 1.5)
    write_mrc(d / "s.mrcs", rng.normal(size=(3, 8, 8)).astype(np.float32), 1.5, is_stack=True)
    relion30 = ("\ndata_\n\nloop_\n_rlnMicrographName #1\n_rlnImageName #2\n_rlnDefocusU #3\n_rlnVoltage #4\n"
                "_rlnDetectorPixelSize #5\n_rlnMagnification #6\nmic1.mrc 000001@stack.mrcs 10000.0 300 5.0 33333\n"
                "mic1.mrc 000002@stack.mrcs 11000.0 300 5.0 33333\n")
    return {"p.star": (d / "p.star").read_bytes(), "r30.star": relion30.encode(),
            "v.mrc": (d / "v.mrc").read_bytes(), "s.mrcs": (d / "s.mrcs").read_bytes()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(folder: Path, suffix: str, data: bytes) -> Path:
    """A new file per example (a memory-mapped earlier one must never be overwritten)."""
    p = folder / f"f{next(_names)}{suffix}"
    p.write_bytes(data)
    return p


def _assert_user_error(e: InputError, path: Path) -> None:
    text = str(e)
    assert str(path) in text or path.name in text, text
    assert "\n" not in text.strip() and text.rstrip().endswith("."), text


def _check(reader, path: Path) -> None:
    """``reader(path)`` returns or raises InputError naming ``path``; nothing else."""
    try:
        reader(path)
    except InputError as e:
        _assert_user_error(e, path)


def _mutate(data: bytes, edits: list[tuple[int, bytes]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, new in edits:
        pos %= max(1, len(b))
        b[pos:pos + len(new)] = new
    return bytes(b[:cut] if cut is not None else b)


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8)), max_size=4)
TEXT_EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.text(" \t\n_#.-+0123456789eEanifloptdrx@", min_size=1,
                                                                 max_size=8).map(str.encode)), max_size=4)
STAR_READERS = [lambda p: read_particles(p, pixel_size=1.0), read_micrographs]  # both call read_star
MRC_READERS = [read_mrc, read_mrc_header, lambda p: (clear_stack_cache(), np.asarray(open_stack(p)[:, :2, :2]))]


# ------------------------------------------------------------------------------------------- STAR


@STAR_FUZZ
@given(data=st.binary(max_size=600))
def test_star_random_bytes(data: bytes, scratch: Path):
    p = _write(scratch, ".star", data)
    for reader in STAR_READERS:
        _check(reader, p)


@STAR_FUZZ
@given(which=st.sampled_from(["p.star", "r30.star"]), fraction=st.floats(0, 1))
def test_star_truncated(which: str, fraction: float, scratch: Path):
    data = _valid()[which]
    p = _write(scratch, ".star", data[: int(len(data) * fraction)])
    for reader in STAR_READERS:
        _check(reader, p)


@STAR_FUZZ
@given(which=st.sampled_from(["p.star", "r30.star"]), edits=TEXT_EDITS, raw=EDITS,
       cut=st.none() | st.integers(0, 2000))
def test_star_mutated(which: str, edits, raw, cut, scratch: Path):
    p = _write(scratch, ".star", _mutate(_mutate(_valid()[which], edits, None), raw, cut))
    for reader in STAR_READERS:
        _check(reader, p)


# -------------------------------------------------------------------------------------------- MRC


@FUZZ
@given(data=st.binary(max_size=1400))
def test_mrc_random_bytes(data: bytes, scratch: Path):
    p = _write(scratch, ".mrc", data)
    for reader in MRC_READERS:
        _check(reader, p)


@FUZZ
@given(which=st.sampled_from(["v.mrc", "s.mrcs"]), fraction=st.floats(0, 1))
def test_mrc_truncated(which: str, fraction: float, scratch: Path):
    data = _valid()[which]
    p = _write(scratch, Path(which).suffix, data[: int(len(data) * fraction)])
    for reader in MRC_READERS:
        _check(reader, p)


@FUZZ
@given(which=st.sampled_from(["v.mrc", "s.mrcs"]),
       header=st.lists(st.tuples(st.integers(0, 1023), st.binary(min_size=1, max_size=4)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 4000))
def test_mrc_mutated_header(which: str, header, cut, scratch: Path):
    p = _write(scratch, Path(which).suffix, _mutate(_valid()[which], header, cut))
    for reader in MRC_READERS:
        _check(reader, p)


@FUZZ
@given(which=st.sampled_from(["v.mrc", "s.mrcs"]), word=st.sampled_from([0, 1, 2, 3, 23]),
       value=st.integers(-2**31, 2**31 - 1))
def test_mrc_header_dimensions(which: str, word: int, value: int, scratch: Path):
    """nx, ny, nz, mode and nsymbt (the words that size the data) set to any 32-bit integer."""
    data = bytearray(_valid()[which])
    data[4 * word:4 * word + 4] = np.int32(value).tobytes()
    p = _write(scratch, Path(which).suffix, bytes(data))
    for reader in MRC_READERS:
        _check(reader, p)
