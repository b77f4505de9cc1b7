"""The per-micrograph unit helper (jobs.units): fingerprints, unique names, results JSON written last."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryolens.jobs.units import UnitRecord, file_stamp, fingerprint, unique_stems


def test_fingerprint_follows_params_and_input_files(tmp_path: Path):
    f = tmp_path / "mic.mrc"
    f.write_bytes(b"1234")
    key = fingerprint({"box": 512, "params": {"a": 1.5}}, files=[f])
    assert key == fingerprint({"params": {"a": 1.5}, "box": 512}, files=[f])  # key order does not matter
    assert key != fingerprint({"box": 256, "params": {"a": 1.5}}, files=[f])
    assert key != fingerprint({"box": 512, "params": {"a": 1.5}})
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: a new key
    assert key != fingerprint({"box": 512, "params": {"a": 1.5}}, files=[f])
    assert file_stamp(f)[1:] == [4, f.stat().st_mtime_ns]


def test_unique_stems_use_the_folder_then_a_counter():
    assert unique_stems(["a/mic_1.mrc", "a/mic_2.mrc"]) == ["mic_1", "mic_2"]
    assert unique_stems(["x/a/mic.mrc", "y/b/mic.mrc", "z/c/other.tif"]) == ["a_mic", "b_mic", "other"]
    assert unique_stems(["x/a/mic.mrc", "y/a/mic.mrc", "mic.tif"]) == ["a_mic", "a_mic_2", "mic"]


def test_record_done_only_with_same_key_and_all_files(tmp_path: Path):
    out = tmp_path / "Movies"
    out.mkdir()
    rec = UnitRecord(str(out / "m1.json"), "k1")
    assert rec.done() is None  # never ran
    (out / "m1.mrc").write_bytes(b"x")
    (out / "m1.png").write_bytes(b"x")
    assert rec.finish({"summary": {"n": 3}}, outputs=[out / "m1.mrc", out / "m1.png"]) == {"summary": {"n": 3}}
    on_disk = json.loads((out / "m1.json").read_text())
    assert on_disk == {"key": "k1", "files": ["m1.mrc", "m1.png"], "summary": {"n": 3}}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    assert rec.done() == {"summary": {"n": 3}}
    assert UnitRecord(rec.path, "k2").done() is None  # other params or inputs
    (out / "m1.png").unlink()
    assert rec.done() is None  # an output is gone: the unit runs again
    (out / "m1.json").write_text("{trunc")
    assert rec.done() is None
