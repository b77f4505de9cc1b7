"""Compute backends (compute.backends, compute.threads) and run profiles (compute.profiles)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryolens.errors import InputError
from cryolens.compute.backends import (BackendError, Dask, InProcess, LocalProcesses, get_backend)
from cryolens.compute.profiles import Profile, cluster_kwargs, get_profile, load_profiles, lsf_walltime, parse_profiles
from cryolens.compute.threads import Ready, Staged, Threads

RECIPES = Path(__file__).resolve().parents[2] / "shared" / "recipes"


# -- picklable work functions (module level: workers import this module) -----------------
def square(x):
    return x * x


def slow_square(x):
    time.sleep(0.01 * (x % 3))  # out-of-order completion
    return x * x


def die_once(marker, x):
    if x == 3 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(1)
    return x + 100


def always_die(x):
    if x == 1:
        os._exit(7)
    return x


def bad_input(x):
    if x == 2:
        raise InputError(f"item{x}.mrc: not an MRC file; re-export it")
    return x


def where(x):
    import socket
    return x * 2, socket.gethostname(), os.getpid()


# -- backends ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local2():
    with LocalProcesses(2) as b:
        yield b


@pytest.fixture(scope="module")
def dask_backend():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        with Dask(cluster.scheduler_address) as b:
            yield b


def test_inprocess_keeps_order_and_reports_progress():
    seen = []
    out = InProcess().map(square, range(6), progress=lambda d, n: seen.append((d, n)))
    assert out == [x * x for x in range(6)]
    assert seen[-1] == (6, 6)


def test_local_processes_keep_order(local2):
    seen = []
    out = local2.map(slow_square, range(12), desc="sq", progress=lambda d, n: seen.append(d))
    assert out == [x * x for x in range(12)]
    assert seen == list(range(1, 13))
    assert local2.map(square, []) == []


def test_dask_keeps_order(dask_backend):
    seen = []
    out = dask_backend.map(slow_square, range(12), progress=lambda d, n: seen.append(d))
    assert out == [x * x for x in range(12)]
    assert len(seen) == 12


def test_worker_death_is_retried(local2, tmp_path):
    marker = tmp_path / "died"
    out = local2.map(functools.partial(die_once, str(marker)), range(8), desc="retry")
    assert marker.exists()  # the worker did die once
    assert out == [x + 100 for x in range(8)]


def test_worker_death_bounded_retries_clear_error(local2):
    with pytest.raises(BackendError, match=r"worker process died \(.+\) while running unit 1 of 4, 3 times"):
        local2.map(always_die, range(4), desc="poison", retries=2)
    assert local2.map(square, range(3)) == [0, 1, 4]  # the backend still works afterwards


class TwoPhase(Staged):
    """load: Ready for multiples of 4 (done before), else the item; run: square it. Counts loads in flight."""

    def __init__(self):
        import threading
        self.lock, self.held, self.most = threading.Lock(), 0, 0

    def load(self, x):
        if x % 4 == 0:
            return Ready(-x)
        with self.lock:
            self.held += 1
            self.most = max(self.most, self.held)
        return x

    def run(self, x, loaded):
        time.sleep(0.01 * (x % 3))
        with self.lock:
            self.held -= 1
        return loaded * loaded


def test_threads_keep_order_read_ahead_and_restore_torch_threads():
    import torch
    before = torch.get_num_threads()
    seen = []
    out = Threads(2).map(slow_square, range(12), progress=lambda d, n: seen.append(d))
    assert out == [x * x for x in range(12)] and seen == list(range(1, 13))
    unit = TwoPhase()
    assert Threads(2).map(unit, range(12)) == [-x if x % 4 == 0 else x * x for x in range(12)]
    assert unit.most <= 3  # at most workers + 1 loaded items in memory
    assert InProcess().map(TwoPhase(), range(5)) == [0, 1, 4, 9, -4]  # a Staged unit is a plain function too
    assert Threads(3).map(square, []) == [] and torch.get_num_threads() == before
    assert get_backend("threads:3").n_workers == 3 and get_backend("threads").n_workers >= 1
    with pytest.raises(InputError, match="threads:2"):
        get_backend("threads:0")


@pytest.mark.parametrize("kind", ["inprocess", "threads", "local", "dask"])
def test_input_error_surfaces(kind, local2, dask_backend):
    backend = {"inprocess": InProcess(), "threads": Threads(2), "local": local2, "dask": dask_backend}[kind]
    with pytest.raises(InputError) as e:
        backend.map(bad_input, range(5), retries=1)
    assert type(e.value) is InputError
    assert str(e.value) == "item2.mrc: not an MRC file; re-export it"


def test_get_backend_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYOLENS_PROFILES", str(tmp_path / "none.toml"))
    assert isinstance(get_backend("inprocess"), InProcess)
    b = get_backend(None)
    assert isinstance(b, LocalProcesses) and b.n_workers >= 1
    b = get_backend("local:3")
    assert isinstance(b, LocalProcesses) and b.n_workers == 3
    with pytest.raises(InputError, match="local:4"):
        get_backend("local:zero")
    with pytest.raises(InputError, match="profiles file not found"):
        get_backend("gpu-nodes")
    (tmp_path / "none.toml").write_text('[profiles.cpu]\nscheduler = "slurm"\n')
    with pytest.raises(InputError, match=r"no run profile named 'gpu-nodes'.*known: cpu"):
        get_backend("profile:gpu-nodes")
    with pytest.raises(BackendError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        Dask("tcp://127.0.0.1:9", timeout=1)


# -- profiles ------------------------------------------------------------------------------
GOOD = """
[profiles.cpu]
scheduler = "slurm"
queue = "debug"
cores = 4
memory = "8GB"
walltime = "01:00:00"
n_workers = 2
job_extra_directives = ["--qos=normal"]
python = "/usr/bin/python3"

[profiles.sge]
scheduler = "SGE"
"""


def test_profiles_parse(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(GOOD)
    p = parse_profiles(f)
    cpu = p["cpu"]
    assert (cpu.scheduler, cpu.cores, cpu.memory, cpu.walltime, cpu.queue, cpu.n_workers) == \
        ("slurm", 4, "8GB", "01:00:00", "debug", 2)
    assert cpu.job_extra_directives == ["--qos=normal"] and cpu.python == "/usr/bin/python3"
    assert p["sge"].scheduler == "sge" and p["sge"].cores == 1 and p["sge"].source == str(f)


def test_profiles_project_file_overrides_user_file(tmp_path, monkeypatch):
    user = tmp_path / "user.toml"
    user.write_text(GOOD)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "profiles.toml").write_text('[profiles.cpu]\nscheduler = "pbs"\ncores = 2\n')
    monkeypatch.setenv("CRYOLENS_PROFILES", str(user))
    assert load_profiles()["cpu"].scheduler == "slurm"
    both = load_profiles(proj)
    assert both["cpu"].scheduler == "pbs" and "sge" in both
    assert get_profile("cpu", project_dir=proj).source == str(proj / "profiles.toml")


@pytest.mark.parametrize("body, message", [
    ('[profiles.a]\ncores = 2\n', r"profile 'a': key 'scheduler' is missing"),
    ('[profiles.a]\nscheduler = "condor"\n', r"profile 'a': key 'scheduler' is 'condor'; use one of slurm"),
    ('[profiles.a]\nscheduler = "slurm"\ncores = "four"\n', r"key 'cores' must be int, got 'four'"),
    ('[profiles.a]\nscheduler = "slurm"\ncores = 0\n', r"key 'cores' must be at least 1"),
    ('[profiles.a]\nscheduler = "slurm"\nmemroy = "4GB"\n', r"unknown key 'memroy'; did you mean 'memory'"),
    ('[profiles.a]\nscheduler = "slurm"\nmemory = "lots"\n', r"key 'memory' is 'lots'"),
    ('[profiles.a]\nscheduler = "slurm"\nwalltime = "1 hour"\n', r"key 'walltime' is '1 hour'"),
    ('[profiles.a]\nscheduler = "slurm"\njob_extra_directives = [1]\n', r"'job_extra_directives' must be a list"),
    ('[a]\nscheduler = "slurm"\n', r"unknown top-level key 'a'"),
    ('[profiles.a\nscheduler = "slurm"\n', r"not valid TOML"),
])
def test_profiles_validation_errors_name_file_and_key(tmp_path, body, message):
    f = tmp_path / "profiles.toml"
    f.write_text(body)
    with pytest.raises(InputError, match=message) as e:
        parse_profiles(f)
    assert str(f) in str(e.value)


def test_cli_profiles_list_and_unknown_profile(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cryolens.cli.profiles import app

    f = tmp_path / "p.toml"
    f.write_text(GOOD)
    monkeypatch.setenv("CRYOLENS_PROFILES", str(f))
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(app, ["list"])
    assert r.exit_code == 0, r.output
    assert "cpu" in r.output and "slurm" in r.output and "sge" in r.output
    r = CliRunner().invoke(app, ["test", "nope"])
    assert r.exit_code == 2
    f.write_text('[profiles.a]\nscheduler = "slurm"\ncores = "x"\n')
    assert CliRunner().invoke(app, ["list"]).exit_code == 2


# -- a real SLURM (skipped unless it is up or CRYOLENS_TEST_SLURM=1) ------------------------
def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=3).returncode == 0  # unreachable: 9 s
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def slurm():
    if not _slurm_up():
        if os.environ.get("CRYOLENS_TEST_SLURM") != "1":
            pytest.skip("no SLURM: sinfo does not answer (set CRYOLENS_TEST_SLURM=1 to start "
                        "../shared/recipes/start_local_slurm.sh)")
        r = subprocess.run(["bash", str(RECIPES / "start_local_slurm.sh")], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            pytest.fail(f"start_local_slurm.sh failed:\n{r.stdout}\n{r.stderr}")
    partition = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                               timeout=10).stdout.split()[0]
    return partition


def _slurm_profiles(tmp_path, partition) -> Path:
    f = tmp_path / "profiles.toml"
    f.write_text(f"""
[profiles.t]
scheduler = "slurm"
queue = "{partition}"
cores = 1
memory = "1GB"
walltime = "00:10:00"
n_workers = 2
python = "{sys.executable}"
log_directory = "{tmp_path / 'logs'}"
job_script_prologue = ["export PYTHONPATH={Path(__file__).parent}"]  # workers import this module
wait_timeout = 90

[profiles.bad]
scheduler = "slurm"
queue = "no-such-partition"
cores = 1
memory = "1GB"
python = "{sys.executable}"
""")
    return f


@pytest.mark.slurm
def test_slurm_map_through_profile(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYOLENS_PROFILES", str(_slurm_profiles(tmp_path, slurm)))
    with get_backend("profile:t") as b:
        out = b.map(where, range(6), retries=0)
    assert [o[0] for o in out] == [2 * x for x in range(6)]
    assert all(o[2] != os.getpid() for o in out)  # ran in the SLURM jobs' workers


@pytest.mark.slurm
def test_slurm_bad_partition_shows_sbatch_error(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYOLENS_PROFILES", str(_slurm_profiles(tmp_path, slurm)))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"profile 'bad'.*SLURM rejects the job: sbatch: error: .*partition"):
        get_backend("bad")
    assert time.perf_counter() - t0 < 15


@pytest.mark.parametrize("scheduler, expected", [
    ("slurm", ["#SBATCH -p long", "#SBATCH -A lab1", "#SBATCH -t 01:30:00", "#SBATCH --cpus-per-task=4",
               "#SBATCH --qos=x"]),
    ("sge", ["#$ -q long", "#$ -P lab1", "#$ -l h_rt=01:30:00", "#$ -pe smp 4"]),
    ("pbs", ["#PBS -q long", "#PBS -A lab1", "#PBS -l walltime=01:30:00", "#PBS -l select=1:ncpus=4"]),
    ("lsf", ["#BSUB -q long", '#BSUB -P "lab1"', "#BSUB -W 01:30", "#BSUB -n 4"]),
])
def test_profile_job_scripts_carry_each_schedulers_directives(scheduler, expected):
    """The job script dask-jobqueue would submit, built from a profile, in each scheduler's own syntax."""
    import dask_jobqueue

    extra = {"slurm": ["--qos=x"], "sge": ["-pe smp 4"], "pbs": [], "lsf": []}[scheduler]
    p = Profile(name="x", scheduler=scheduler, cores=4, memory="8GB", walltime="01:30:00", queue="long",
                account="lab1", job_extra_directives=extra)
    cls = {"slurm": dask_jobqueue.SLURMCluster, "sge": dask_jobqueue.SGECluster,
           "pbs": dask_jobqueue.PBSCluster, "lsf": dask_jobqueue.LSFCluster}[scheduler]
    cluster = cls(**cluster_kwargs(p))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in expected:
        assert line in script, (line, script)


@pytest.mark.parametrize("walltime, lsf", [("01:30:00", "01:30"), ("90", "01:30"), ("10:30", "00:11"),
                                           ("2-01", "49:00"), ("00:00:01", "00:01")])
def test_lsf_walltime_is_rounded_up_to_minutes(walltime, lsf):
    assert lsf_walltime(walltime) == lsf


def test_profiles_list_example_keeps_its_brackets(tmp_path, monkeypatch):
    """The example printed when there are no profiles is pasteable TOML: [profiles.cpu] is not eaten as markup."""
    from conftest import invoke_cli

    monkeypatch.delenv("CRYOLENS_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    out = invoke_cli("profiles", "list", cwd=tmp_path).output
    assert "[profiles.cpu]" in out and 'scheduler = "slurm"' in out
    # pasted as printed, the example defines the profile; a table cell with brackets is shown as written
    example = out[out.index("[profiles.cpu]"):].strip()
    user = tmp_path / "config" / "cryolens" / "profiles.toml"
    user.parent.mkdir(parents=True)
    user.write_text(example.replace('queue = "cpu"', 'queue = "[cpu]"') + "\n")
    out = " ".join(invoke_cli("profiles", "list", cwd=tmp_path).output.split())
    assert "cpu │ slurm │ [cpu] │ 8 │ 32GB │ 04:00:00 │ 4" in out
