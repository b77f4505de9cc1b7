"""Particle stacks stream from disk (issue 19, item 4): the image reader never loads or maps a whole stack.

The default test pins that the streamed reader (:class:`cryolens.io.ImageSource`, one ``fromfile`` per
run of consecutive images) returns exactly the images an in-memory read of the stack gives. The slow
test refines particles whose stack is larger than the address space the process may use
(``RLIMIT_AS``, what ``ulimit -v`` sets): a sparse stack holding the particles at sections spread over
the whole file, refined under a limit of what the imports take (measured, ~0.8 GB with the CPU torch)
plus 2.7 GB (this small refine peaked at ~2.3 GB of address space in all), the stack 2 GB larger than
the limit. Mapping the whole stack fails under that limit, which the test checks too.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

import cryolens.io.mrc as mrc_module
from cryolens.io import ImageSource, read_particles, write_particles

BOX = 12


def _write(path: Path, data: np.ndarray, *, gz: bool = False) -> None:
    with mrcfile.new(path, data=data, overwrite=True, compression="gzip" if gz else None) as m:
        m.set_image_stack()
        m.voxel_size = 2.0


def test_streamed_images_equal_the_in_memory_stack(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    stacks = {"a.mrcs": rng.normal(size=(40, BOX, BOX)).astype(np.float32),
              "b.mrcs": rng.normal(size=(30, BOX, BOX)).astype(np.float16),
              "c.mrcs.gz": rng.normal(size=(10, BOX, BOX)).astype(np.float32)}
    for name, data in stacks.items():
        _write(tmp_path / name, data, gz=name.endswith(".gz"))
    names = [f"{i + 1:06d}@{name}" for name, data in stacks.items() for i in range(len(data))]
    expected = np.concatenate([mrcfile.read(tmp_path / name).astype(np.float32) for name in stacks])
    monkeypatch.chdir(tmp_path)
    whole = []
    real_open_stack = mrc_module.open_stack
    monkeypatch.setattr(mrc_module, "open_stack", lambda p: whole.append(Path(p).name) or real_open_stack(p))
    source = ImageSource(pd.DataFrame({"rlnImageName": names}), tmp_path / "particles.star")
    order = rng.permutation(len(names))  # rows in any order, across stacks, with runs and gaps
    for idx, images in source.iter_batches(17, order):
        np.testing.assert_array_equal(images, expected[idx])
        assert images.dtype == np.float32
    np.testing.assert_array_equal(source[np.arange(len(names))], expected)
    assert set(whole) == {"c.mrcs.gz"}  # only the compressed stack is read whole


# -- a stack larger than the address space the process may use --------------------------------------------

MARGIN = 2700 * 2 ** 20  # address space for the refine's work beyond its imports [bytes]
PROBE = ("import re, torch, cryolens.cli.main, cryolens.jobs.refine, cryolens.refine.gold_standard; "
         "print(re.search(r'VmPeak:\\s*(\\d+) kB', open('/proc/self/status').read()).group(1))")


def _run_limited(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmPeak from /proc")
def test_refine_streams_a_stack_larger_than_its_address_space(tmp_path):
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert probe.returncode == 0, probe.stderr
    limit = int(probe.stdout.split()[-1]) * 1024 + MARGIN
    stack_bytes = limit + 2 * 2 ** 30
    cli = [sys.executable, "-m", "cryolens.cli.main"]
    r = subprocess.run([*cli, "simulate", "particles", "--out", "sim", "--n", "60", "--box", "24", "--pixel-size", "5",
                        "--snr", "2", "--seed", "4", "--quiet", "--device", "cpu"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    optics, parts = read_particles(tmp_path / "sim" / "particles.star")
    images = mrcfile.read(tmp_path / "sim" / "particles.mrcs")
    box = images.shape[-1]
    n_sections = stack_bytes // (box * box * 4)
    sections = np.linspace(0, n_sections - 1, len(parts)).astype(np.int64)  # spread over the whole file
    big = tmp_path / "big.mrcs"
    with mrcfile.new_mmap(big, shape=(n_sections, box, box), mrc_mode=2, overwrite=True) as m:  # sparse file
        m.set_image_stack()
        m.voxel_size = 5.0
        m.data[sections] = images
    assert big.stat().st_size > limit
    parts["rlnImageName"] = [f"{s + 1:06d}@big.mrcs" for s in sections]
    write_particles(tmp_path / "big.star", optics, parts)

    # The limit bites: the whole stack can be neither mapped nor read into this much address space.
    probe = _run_limited(["-c", "import numpy as np, sys; np.memmap(sys.argv[1], mode='r')", str(big)], tmp_path,
                         limit)
    assert probe.returncode != 0 and ("Cannot allocate memory" in probe.stderr or "MemoryError" in probe.stderr)

    r = _run_limited(["-m", "cryolens.cli.main", "refine", "--in", "big.star", "--ref", "sim/truth_map.mrc",
                      "--ini-high", "30", "--max-iter", "2", "--offset-range", "2", "--batch-size", "20",
                      "--out", "job", "--quiet", "--device", "cpu"], tmp_path, limit)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["iterations"] == 2
    assert (tmp_path / "job" / "map.mrc").stat().st_size > 0
