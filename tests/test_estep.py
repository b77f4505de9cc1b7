"""The distributed expectation step (:mod:`cryolens.compute.estep`, :mod:`cryolens.refine.estep`,
:mod:`cryolens.class3d.estep`, :mod:`cryolens.class2d.estep`, :mod:`cryolens.abinitio.estep`).

Same seed -> the same refinement, 2D and 3D classification and ab initio in-process, on threads,
on a Dask LocalCluster of 2 worker processes (and, slow, on the one-node SLURM of ../shared/recipes),
to float tolerance: only the order of the sums differs. Bad backends (unreachable scheduler, unknown profile, workers that run
out of memory) end the refine (class2d, abinitio) job FAILURE with one sentence, exit 2, and the job can run again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryolens.abinitio import AbinitioParams, abinitio
from cryolens.class2d import Class2DParams, classify_2d
from cryolens.class3d.engine import classify_3d
from cryolens.class3d.params import Class3DParams
from cryolens.cli.main import app
from cryolens.compute.backends import Dask, InProcess, get_backend
from cryolens.compute.estep import Distributor, payload_bytes
from cryolens.core.fourier import bandpass
from cryolens.io import write_mrc
from cryolens.refine.gold_standard import auto_refine
from cryolens.refine.params import RefineParams
from cryolens.refine.estep import HalfSums, accumulator_support
from cryolens.simulate.phantom import asymmetric_phantom
from test_refine import APIX, _batches, _simulate

SRC = Path(__file__).resolve().parents[1] / "src"
RECIPES = Path(__file__).resolve().parents[2] / "shared" / "recipes"
PARAMS = RefineParams(ini_high=30.0, max_iterations=2, global_iterations=1, global_order=1, offset_range=2.0,
                      batch_size=50)


@pytest.fixture(scope="module")
def data():
    """200 particles of the phantom (box 32, 4 Å/px, SNR 1, CTF), without poses, and the in-process refinement."""
    vol = asymmetric_phantom(32, APIX)
    images, table = _simulate(vol, 200, snr=1.0)
    poseless = table.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                   "rlnOriginYAngst"])
    ref = auto_refine(_batches(images, 50), poseless, vol, pixel_size=APIX, params=PARAMS)
    return vol, images, poseless, ref


def _distributed(data, backend, **kw):
    vol, images, table, _ = data
    dist = Distributor(backend, **kw)
    return auto_refine(_batches(images, 50), table, vol, pixel_size=APIX, params=PARAMS, distributor=dist), dist


def assert_same_refinement(a, b) -> None:
    """Equal to float tolerance: maps, poses, scores and the per-iteration resolutions."""
    scale = float(a.full.abs().max())
    for x, y in ((a.half1, b.half1), (a.half2, b.half2), (a.full, b.full)):
        assert float((x - y).abs().max()) < 1e-4 * scale
    assert np.allclose(a.rotations, b.rotations, atol=1e-4)
    assert np.allclose(a.shifts, b.shifts, atol=1e-4)
    assert np.allclose(a.log_likelihood, b.log_likelihood, rtol=1e-4, atol=1e-3)
    assert [round(h.resolution, 3) for h in a.history] == [round(h.resolution, 3) for h in b.history]


def test_threads_equal_inprocess(data):
    with get_backend("threads:2") as be:
        res, dist = _distributed(data, be, chunk_size=100)
    assert_same_refinement(data[3], res)
    assert [r.chunks for r in dist.log] == [2, 2, 2]  # image power + 2 iterations, 2 chunks each
    assert all(r.bytes_shipped == 0 for r in dist.log)  # threads share memory


@pytest.fixture(scope="module")
def dask2():
    """A Dask LocalCluster of 2 single-threaded worker processes."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl:
        with Dask(cl.scheduler_address) as be:
            yield be


def test_dask_local_cluster_of_two_processes_equals_inprocess(data, dask2):
    res, dist = _distributed(data, dask2)
    assert_same_refinement(data[3], res)
    it = dist.log[-1]
    assert it.chunks == 2 and it.shared_copies == 2 and it.bytes_shipped > it.items > 0


C3D = Class3DParams(classes=2, iterations=2, hard_iterations=1, ini_high=30.0, search="local", local_range=6.0,
                    angular_step=3.0, offset_range=1.0, batch_size=50)


def assert_class3d_distributes(data, backend) -> None:
    """3D classification (2 classes, local searches around the true poses) gives the same classes and maps
    in-process and on ``backend``."""
    from test_refine import _simulate

    vol = data[0]
    images, table = _simulate(vol, 100, snr=1.0)
    a = classify_3d(_batches(images, 50), table, vol[None], pixel_size=APIX, params=C3D)
    b = classify_3d(_batches(images, 50), table, vol[None], pixel_size=APIX, params=C3D,
                    distributor=Distributor(backend))
    assert float((a.maps - b.maps).abs().max()) < 1e-4 * float(a.maps.abs().max())
    assert np.array_equal(a.particle_class, b.particle_class)
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-3)
    assert np.allclose(a.rotations, b.rotations, atol=1e-4)


def test_class3d_dask_equals_inprocess(data, dask2):
    assert_class3d_distributes(data, dask2)


C2D = Class2DParams(classes=6, iterations=5, particle_diameter=200.0, res_end=20.0, batch_size=20,
                    particles_per_class=10)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """120 particles (box 32) of three views, and their in-process 2D classification into 6 classes (the first
    iterations on subsets, reseeded classes)."""
    from test_class2d import make_views

    from cryolens.jobs.particles import open_particles
    star, _, _ = make_views(tmp_path_factory.mktemp("c2d") / "sim", n=120, snr=0.5, seed=3)
    parts = open_particles(star, pose=False)
    res = classify_2d(lambda: parts.batches(20), parts.table(), pixel_size=8.0, box=32, params=C2D)
    assert sum(h.reseeded for h in res.history) > 0 and res.history[0].n_particles < 120
    return star, parts, res


def _classify_2d(views, dist):
    _, parts, _ = views
    return classify_2d(lambda: parts.batches(20), parts.table(), pixel_size=8.0, box=32, params=C2D, distributor=dist)


def assert_same_classes(a, b) -> None:
    """Equal to float tolerance: class averages, weights, assignments, poses, scores and the history."""
    assert float(np.abs(a.classes - b.classes).max()) < 1e-4 * float(np.abs(a.classes).max())
    assert np.allclose(a.distribution, b.distribution, atol=1e-5)
    assert np.array_equal(a.particle_class, b.particle_class)
    assert np.allclose(a.psi, b.psi, atol=1e-3) and np.allclose(a.shifts, b.shifts, atol=1e-4)
    assert np.allclose(a.max_probability, b.max_probability, atol=1e-3)  # float32 sums in another process
    assert np.allclose(a.log_likelihood, b.log_likelihood, rtol=1e-5, atol=1e-3)
    assert [(h.n_particles, h.reseeded, h.class_sizes) for h in a.history] == \
        [(h.n_particles, h.reseeded, h.class_sizes) for h in b.history]


def test_class2d_threads_equal_inprocess(views):
    """Chunks of 40 on 2 threads, images sent from here: the same classification."""
    with get_backend("threads:2") as be:
        dist = Distributor(be, chunk_size=40)
        res = _classify_2d(views, dist)
    assert_same_classes(views[2], res)
    # the initial classes (120 particles), then 5 iterations (the first ones on subsets)
    assert [r.chunks for r in dist.log] == [3] + [-(-h.n_particles // 40) for h in res.history]
    assert all(r.bytes_shipped == 0 for r in dist.log)


def test_class2d_dask_local_cluster_of_two_processes_equals_inprocess(views, dask2):
    """Two worker processes that read their particles' images themselves: the same classification."""
    from cryolens.jobs.distribute import ParticleReader
    star, parts, _ = views
    dist = Distributor(dask2, reader=ParticleReader(parts.source, str(star)))
    res = _classify_2d(views, dist)
    assert_same_classes(views[2], res)
    last = dist.log[-1]
    assert last.chunks == 2 and last.shared_copies == 2 and last.results > last.items > 0


AB = AbinitioParams(iterations=4, batch_size=30, starts=2, prune_after=2, ini_resolution=30.0, final_resolution=15.0,
                    seed=3, healpix_order=1, top_k=2, final_passes=2, classes=2)


@pytest.fixture(scope="module")
def poseless():
    """80 particles (box 24) and their in-process ab initio (2 starts pruned after 2 iterations, 2 classes)."""
    from cryolens.io import merge_optics
    from cryolens.simulate.particles import ParticleSimParams, simulate_particles
    sim = simulate_particles(asymmetric_phantom(24, 5.0), pixel_size=5.0, params=ParticleSimParams(
        n_particles=80, snr=2.0, max_shift=2.0, defocus_min=8000, defocus_max=15000, seed=2))
    images = np.concatenate([b for _, b in sim.batches])
    table = merge_optics(sim.optics, sim.particles)
    batches = _batches(images, 30)
    return batches, table, abinitio(batches, table, pixel_size=5.0, params=AB)


def _assert_same_abinitio(a, b) -> None:
    assert float((a.maps - b.maps).abs().max()) < 1e-4 * float(a.maps.abs().max())
    assert np.array_equal(a.classes, b.classes) and a.best_start == b.best_start
    assert np.allclose(a.rotations, b.rotations, atol=1e-4) and np.allclose(a.shifts, b.shifts, atol=1e-4)
    assert np.allclose(a.probability, b.probability, atol=1e-3)
    for ha, hb in zip(a.history, b.history, strict=True):
        assert ha.starts == hb.starts and np.allclose(ha.log_likelihood, hb.log_likelihood, rtol=1e-5)


@pytest.mark.parametrize("backend", ["threads", "dask"])
def test_abinitio_distributed_equals_inprocess(poseless, backend, request):
    """Every pose search (each start's mini-batches, the final passes) in chunks: the same maps and poses."""
    batches, table, whole = poseless
    if backend == "dask":
        res = abinitio(batches, table, pixel_size=5.0, params=AB, distributor=Distributor(request.getfixturevalue("dask2")))
    else:
        with get_backend("threads:2") as be:
            dist = Distributor(be)
            res = abinitio(batches, table, pixel_size=5.0, params=AB, distributor=dist)
        assert [r.chunks for r in dist.log] == [2] * 8  # 2 starts x 2 iterations, 2 iterations, 2 final passes
    _assert_same_abinitio(whole, res)


def test_chunks_follow_the_memory_bound_and_the_batch_size():
    d = Distributor(InProcess(), memory_mb=1.0)
    chunks = d.chunks(1000, bytes_per_item=4 * 64 * 64, multiple=50)  # 64 images fit 1 MiB -> 100 (x50)
    assert [len(c) for c in chunks] == [100] * 10 and np.array_equal(np.concatenate(chunks), np.arange(1000))
    assert [len(c) for c in Distributor(InProcess()).chunks(120, bytes_per_item=1, multiple=50)] == [120]
    assert payload_bytes({"a": torch.zeros(10), "b": [np.zeros(3, np.float64)]}) == 40 + 24


def test_chunk_sums_on_their_support_add_up_to_the_whole():
    """A chunk returns its back-projector sums only where insertions can land; nothing is lost."""
    n, r_insert = 16, 5.0
    sums, whole = HalfSums(n, 2, torch.device("cpu"), r_insert), HalfSums(n, 2, torch.device("cpu"), r_insert)
    f = torch.fft.rfft2(torch.randn(6, n, n))
    rot = torch.linalg.qr(torch.randn(6, 3, 3))[0]
    rot = rot * torch.sign(torch.det(rot))[:, None, None]
    whole.bps[1].insert(f, rot)
    sums.bps[1].insert(f, rot)
    merged = HalfSums(n, 2, torch.device("cpu"), r_insert)
    merged.add_tensors(sums.to_tensors(), accumulator_support(n, 2, r_insert))
    assert torch.equal(merged.bps[1].acc, whole.bps[1].acc)


# -- the command ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    work = tmp_path_factory.mktemp("estep")
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", "particles", "--out", str(work / "sim"), "--n", "40", "--box", "24",
                            "--pixel-size", "5", "--snr", "2", "--seed", "4", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    from cryolens.io import read_mrc
    truth, apix = read_mrc(work / "sim" / "truth_map.mrc")
    write_mrc(work / "ref.mrc", bandpass(torch.as_tensor(np.array(truth)), pixel_size=apix, high_res=30.0,
                                         ndim=3).numpy(), apix)
    return work, runner


def _refine(small, out: Path, *extra: str, iterations: int = 2):
    work, runner = small
    return runner.invoke(app, ["refine", "--in", str(work / "sim" / "particles.star"), "--ref", str(work / "ref.mrc"),
                               "--ini-high", "30", "--max-iter", str(iterations), "--healpix-order", "1", "--offset-range", "2",
                               "--out", str(out), "--quiet", "--device", "cpu", *extra])


def _one_sentence_exit_2(r, *words: str) -> str:
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in text, text
    return text


def test_cli_unreachable_scheduler_fails_the_job_which_runs_again(small):
    work, _ = small
    out = work / "unreachable"
    r = _refine(small, out, "--backend", "tcp://127.0.0.1:9")
    _one_sentence_exit_2(r, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "failed" and (out / "CRYOLENS_JOB_EXIT_FAILURE").is_file()
    r = _refine(small, out, "--backend", "threads:2", iterations=1)  # the failed job's folder takes the job again
    assert r.exit_code == 0, r.output
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["backend"] == "threads:2"
    assert "expectation steps through backend threads:2" in (out / "run.log").read_text()


def test_cli_backend_and_profile_errors(small, tmp_path, monkeypatch):
    work, _ = small
    monkeypatch.setenv("CRYOLENS_PROFILES", str(tmp_path / "profiles.toml"))
    (tmp_path / "profiles.toml").write_text("[profiles.x]\nscheduler = \"slurm\"\n")
    _one_sentence_exit_2(_refine(small, tmp_path / "a", "--profile", "nosuch"), "no run profile named 'nosuch'")
    _one_sentence_exit_2(_refine(small, tmp_path / "b", "--backend", "threads", "--profile", "x"),
                         "--backend threads and --profile x both name where to compute; give one.")
    _one_sentence_exit_2(_refine(small, tmp_path / "c", "--backend", "local:0"), "must be a positive integer")


def _class2d(views, out: Path, *extra: str):
    return CliRunner().invoke(app, ["class2d", "--in", str(views[0]), "--classes", "3", "--iter", "2",
                                    "--particle-diameter", "200", "--batch-size", "20", "--out", str(out), "--quiet",
                                    "--device", "cpu", *extra])


def test_class2d_cli_unreachable_scheduler_fails_the_job_which_runs_again(views, tmp_path):
    out = tmp_path / "c2d"
    _one_sentence_exit_2(_class2d(views, out, "--backend", "tcp://127.0.0.1:9"),
                         "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "failed" and (out / "CRYOLENS_JOB_EXIT_FAILURE").is_file()
    r = _class2d(views, out, "--backend", "threads:2")
    assert r.exit_code == 0, r.output
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["backend"] == "threads:2"
    log = (out / "run.log").read_text()
    assert "expectation steps through backend threads:2" in log and "class2d iteration 2: " in log


def _abinitio_args(work: Path, out: Path) -> list[str]:
    return ["abinitio", "--in", str(work / "sim" / "particles.star"), "--iterations", "2", "--batch-size", "20",
            "--starts", "1", "--ini-resolution", "30", "--final-resolution", "20", "--healpix-order", "1",
            "--top-k", "1", "--final-passes", "1", "--out", str(out), "--quiet", "--device", "cpu"]


def test_abinitio_cli_unreachable_scheduler_fails_the_job_which_runs_again(small):
    work, runner = small
    out = work / "abinitio"
    args = _abinitio_args(work, out)
    _one_sentence_exit_2(runner.invoke(app, [*args, "--backend", "tcp://127.0.0.1:9"]),
                         "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert json.loads((out / "job.json").read_text())["status"] == "failed"
    r = runner.invoke(app, [*args, "--backend", "threads:2"])
    assert r.exit_code == 0, r.output
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "finished" and job["results"]["backend"] == "threads:2"
    assert "pose searches through backend threads:2" in (out / "run.log").read_text()


def _out_of_memory_fails_the_job(run, folder: Path) -> None:
    """``run(scheduler_address)`` on a Dask worker with too little memory (killed by its nanny at the scatter or
    while running a chunk): KilledWorker -> one sentence, exit 2, the job in ``folder`` failed."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="120MB",
                                  dashboard_address=":0") as cl:
        r = run(cl.scheduler_address)
    _one_sentence_exit_2(r, "Dask workers", "more memory")
    assert json.loads((folder / "job.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_cli_workers_out_of_memory_fail_the_job(small):
    work, _ = small
    _out_of_memory_fails_the_job(lambda address: _refine(small, work / "oom", "--backend", address), work / "oom")


@pytest.mark.slow
def test_class2d_cli_workers_out_of_memory_fail_the_job(views, tmp_path):
    _out_of_memory_fails_the_job(lambda address: _class2d(views, tmp_path / "oom", "--backend", address),
                                 tmp_path / "oom")


@pytest.mark.slow
def test_abinitio_cli_workers_out_of_memory_fail_the_job(small):
    work, runner = small
    _out_of_memory_fails_the_job(
        lambda address: runner.invoke(app, [*_abinitio_args(work, work / "ab_oom"), "--backend", address]),
        work / "ab_oom")


# -- a real SLURM (slow; skipped without sbatch) ----------------------------------------------------------------------
def _slurm_partition() -> str:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("no SLURM here (sbatch/sinfo absent)")
    up = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    if not up:
        r = subprocess.run(["bash", str(RECIPES / "start_local_slurm.sh")], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            pytest.skip(f"the one-node SLURM did not start: {r.stderr[-300:]}")
    return subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=10).stdout.split()[0]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Two single-core workers started by dask-jobqueue on the one-node SLURM, through a profile."""
    partition = _slurm_partition()
    tmp = tmp_path_factory.mktemp("slurm")
    tests = Path(__file__).resolve().parent
    (tmp / "profiles.toml").write_text(textwrap.dedent(f"""
        [profiles.t]
        scheduler = "slurm"
        queue = "{partition}"
        cores = 1
        memory = "2GB"
        walltime = "00:20:00"
        n_workers = 2
        python = "{sys.executable}"
        log_directory = "{tmp / 'logs'}"
        job_script_prologue = ["export PYTHONPATH={SRC}:{tests}"]
        wait_timeout = 120
        """))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYOLENS_PROFILES", str(tmp / "profiles.toml"))
        with get_backend("profile:t") as be:
            yield be


@pytest.mark.slow
def test_slurm_profile_equals_inprocess(data, slurm):
    res, dist = _distributed(data, slurm)
    assert_same_refinement(data[3], res)
    assert dist.log[-1].chunks == 2


@pytest.mark.slow
def test_slurm_class2d_class3d_and_abinitio_equal_inprocess(data, views, poseless, slurm):
    """The same SLURM workers classify in 2D (reading their images from the stack) and in 3D, and run
    ab initio."""
    from cryolens.jobs.distribute import ParticleReader
    star, parts, whole = views
    dist = Distributor(slurm, reader=ParticleReader(parts.source, str(star)))
    assert_same_classes(whole, _classify_2d(views, dist))
    assert dist.log[-1].chunks == 2 and dist.log[-1].shared_copies == 2
    batches, table, ab = poseless
    _assert_same_abinitio(ab, abinitio(batches, table, pixel_size=5.0, params=AB, distributor=Distributor(slurm)))
    assert_class3d_distributes(data, slurm)
