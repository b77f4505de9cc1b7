"""Run profiles: how to get Dask workers from a batch scheduler (SLURM, SGE, PBS, LSF).

Profiles live in TOML files, one table per profile::

    [profiles.cpu]
    scheduler = "slurm"          # slurm | sge | pbs | lsf
    queue = "cpu"                # partition / queue
    cores = 8                    # per job (one Dask worker per job unless processes > 1)
    memory = "32GB"              # per job
    walltime = "04:00:00"
    n_workers = 4                # jobs to submit
    job_extra_directives = ["--qos=normal"]
    python = "/opt/cryolens/bin/python"   # interpreter on the nodes (default: this one)

Files, later ones overriding profiles of the same name: the user file
``~/.config/cryolens/profiles.toml`` (or the file named by ``$CRYOLENS_PROFILES``),
then the project's ``profiles.toml``.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryolens.errors import InputError

SCHEDULERS = ("slurm", "sge", "pbs", "lsf")
_SUBMIT = {"slurm": "sbatch", "sge": "qsub", "pbs": "qsub", "lsf": "bsub"}


@dataclass
class Profile:
    """One run profile (units: memory like "4GB", walltime "HH:MM:SS")."""

    name: str
    scheduler: str
    cores: int = 1
    memory: str = "4GB"
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    processes: int = 1
    n_workers: int = 1
    python: str | None = None
    job_extra_directives: list[str] = field(default_factory=list)
    job_script_prologue: list[str] = field(default_factory=list)
    log_directory: str | None = None
    local_directory: str | None = None
    interface: str | None = None
    wait_timeout: float = 120.0
    source: str = ""


_TYPES: dict[str, tuple[type, ...]] = {
    "scheduler": (str,), "cores": (int,), "memory": (str,), "walltime": (str,), "queue": (str,),
    "account": (str,), "processes": (int,), "n_workers": (int,), "python": (str,),
    "job_extra_directives": (list,), "job_script_prologue": (list,), "log_directory": (str,),
    "local_directory": (str,), "interface": (str,), "wait_timeout": (int, float),
}
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]|[kKmMgGtT]|[bB])?\s*$")
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def default_profile_files(project_dir: str | Path | None = None) -> list[Path]:
    """The files searched, lowest priority first."""
    env = os.environ.get("CRYOLENS_PROFILES")
    if env:
        user = Path(env).expanduser()
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        user = base / "cryolens" / "profiles.toml"
    files = [user]
    if project_dir is not None:
        files.append(Path(project_dir) / "profiles.toml")
    return files


def parse_profiles(path: str | Path) -> dict[str, Profile]:
    """Read and validate one profiles file; every problem is an InputError naming file and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: profiles file not found; create it or unset CRYOLENS_PROFILES") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the profiles file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e}); fix the syntax") from None
    extra = sorted(set(data) - {"profiles"})
    if extra:
        raise InputError(f"{path}: unknown top-level key '{extra[0]}'; put each profile in a "
                         f"[profiles.NAME] table")
    table = data.get("profiles", {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: 'profiles' must be a table of [profiles.NAME] tables")
    return {name: _validate(path, name, spec) for name, spec in table.items()}


def _validate(path: Path, name: str, spec: Any) -> Profile:
    where = f"{path}: profile '{name}'"
    if not isinstance(spec, dict):
        raise InputError(f"{where} must be a table ([profiles.{name}])")
    for key, value in spec.items():
        if key not in _TYPES:
            close = difflib.get_close_matches(key, list(_TYPES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(_TYPES)}"
            raise InputError(f"{where}: unknown key '{key}'{hint}")
        types = _TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join("list of strings" if t is list else t.__name__ for t in types)
            raise InputError(f"{where}: key '{key}' must be {want}, got {value!r}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: key '{key}' must be a list of strings, got {value!r}")
    if "scheduler" not in spec:
        raise InputError(f"{where}: key 'scheduler' is missing; set it to one of {', '.join(SCHEDULERS)}")
    p = Profile(name=name, source=str(path), **spec)
    p.scheduler = p.scheduler.lower()
    if p.scheduler not in SCHEDULERS:
        raise InputError(f"{where}: key 'scheduler' is '{spec['scheduler']}'; use one of {', '.join(SCHEDULERS)}")
    for key in ("cores", "processes", "n_workers"):
        if getattr(p, key) < 1:
            raise InputError(f"{where}: key '{key}' must be at least 1, got {getattr(p, key)}")
    if p.processes > p.cores:
        raise InputError(f"{where}: key 'processes' ({p.processes}) exceeds 'cores' ({p.cores})")
    if not _MEMORY.match(p.memory):
        raise InputError(f"{where}: key 'memory' is '{p.memory}'; write it like \"4GB\" or \"500MB\"")
    if p.walltime is not None and not _WALLTIME.match(p.walltime):
        raise InputError(f"{where}: key 'walltime' is '{p.walltime}'; write it like \"HH:MM:SS\" or \"D-HH:MM:SS\"")
    if p.wait_timeout <= 0:
        raise InputError(f"{where}: key 'wait_timeout' must be positive seconds, got {p.wait_timeout}")
    return p


def load_profiles(project_dir: str | Path | None = None) -> dict[str, Profile]:
    """All profiles from the existing files (a set but missing $CRYOLENS_PROFILES is an error)."""
    out: dict[str, Profile] = {}
    for i, f in enumerate(default_profile_files(project_dir)):
        must = i == 0 and bool(os.environ.get("CRYOLENS_PROFILES"))
        if f.is_file() or must:
            out.update(parse_profiles(f))
    return out


def get_profile(name: str, *, project_dir: str | Path | None = None, what: str | None = None) -> Profile:
    profiles = load_profiles(project_dir)
    if name in profiles:
        return profiles[name]
    files = " or ".join(str(f) for f in default_profile_files(project_dir))
    known = f" (known: {', '.join(sorted(profiles))})" if profiles else ""
    raise InputError(f"{what or 'profile'}: no run profile named '{name}' in {files}{known}; use local, "
                     f"inprocess, tcp://HOST:PORT or add [profiles.{name}] to one of those files")


# --------------------------------------------------------------------------- clusters
def cluster_kwargs(profile: Profile) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue cluster class."""
    kw: dict[str, Any] = dict(cores=profile.cores, memory=profile.memory, processes=profile.processes,
                              job_extra_directives=list(profile.job_extra_directives),
                              job_script_prologue=list(profile.job_script_prologue),
                              scheduler_options={"dashboard_address": ":0"})
    for key in ("walltime", "queue", "account", "python", "log_directory", "local_directory", "interface"):
        value = getattr(profile, key)
        if value is not None:
            kw[_ACCOUNT_KWARG[profile.scheduler] if key == "account" else key] = value
    if profile.scheduler == "lsf" and profile.walltime is not None:
        kw["walltime"] = lsf_walltime(profile.walltime)
    return kw


# dask-jobqueue names the charge account 'account' for SLURM/PBS (-A) and 'project' for SGE (-P) and LSF (-P)
_ACCOUNT_KWARG = {"slurm": "account", "pbs": "account", "sge": "project", "lsf": "project"}


def lsf_walltime(walltime: str) -> str:
    """``bsub -W`` takes ``[HH:]MM``: a profile's walltime, read as SLURM reads it (``MM``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH[:MM[:SS]]``), rounded up to whole minutes."""
    days, _, clock = walltime.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
    else:
        parts = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}[len(parts)]
    seconds = int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    minutes = -(-seconds // 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def make_cluster(profile: Profile):
    """Build the dask-jobqueue cluster for ``profile`` (no jobs submitted yet).

    For SLURM the job script is first checked with ``sbatch --test-only``; a
    rejection raises InputError carrying sbatch's own error line.
    """
    import dask_jobqueue

    if shutil.which(_SUBMIT[profile.scheduler]) is None:
        raise InputError(f"profile '{profile.name}' ({profile.source}): '{_SUBMIT[profile.scheduler]}' is not "
                         f"on PATH; run on a {profile.scheduler.upper()} login node or fix 'scheduler'")
    cls = {"slurm": dask_jobqueue.SLURMCluster, "sge": dask_jobqueue.SGECluster,
           "pbs": dask_jobqueue.PBSCluster, "lsf": dask_jobqueue.LSFCluster}[profile.scheduler]
    try:
        cluster = cls(**cluster_kwargs(profile))
    except (ValueError, TypeError) as e:
        raise InputError(f"profile '{profile.name}' ({profile.source}): {e}") from None
    if profile.scheduler == "slurm":
        try:
            check_sbatch(cluster.job_script(), profile)
        except BaseException:
            cluster.close()
            raise
    return cluster


def check_sbatch(script: str, profile: Profile, *, timeout: float = 20.0) -> None:
    """``sbatch --test-only`` on the job script; InputError with sbatch's error when rejected."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script)
    try:
        r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise InputError(f"profile '{profile.name}': 'sbatch --test-only' did not answer within {timeout:.0f} s; "
                         f"is slurmctld reachable (try 'sinfo')?") from None
    finally:
        os.unlink(f.name)
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        err = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else f"exit {r.returncode}")
        if "unable to contact" in err.lower() or "connect failure" in err.lower():
            raise InputError(f"profile '{profile.name}': cannot reach the SLURM controller ({err}); "
                             f"check 'sinfo' on this machine")
        raise InputError(f"profile '{profile.name}' ({profile.source}): SLURM rejects the job: {err}; "
                         f"fix queue/cores/memory/walltime/job_extra_directives")


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover
            msg = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            msg = f"{msg} {record.exc_info[1]}"
        self.messages.append(msg)


def wait_for_workers(cluster, client, n: int, *, profile: Profile, timeout: float) -> float:
    """Wait until ``n`` workers joined; seconds waited. On timeout an InputError with the scheduler's say."""
    cap = _Capture()
    loggers = [logging.getLogger(n_) for n_ in ("distributed", "dask_jobqueue", "asyncio", "tornado")]
    for lg in loggers:
        lg.addHandler(cap)
    t0 = time.perf_counter()
    try:
        while True:
            have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            if have >= n:
                return time.perf_counter() - t0
            errors = [m for m in cap.messages if "exit code" in m.lower()]
            if errors or time.perf_counter() - t0 > timeout:
                break
            time.sleep(0.2)
    finally:
        for lg in loggers:
            lg.removeHandler(cap)
    if errors:
        lines = [ln.strip() for ln in errors[-1].splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "error" in ln.lower() and "exit code" not in ln.lower()),
                      " ".join(lines)[-400:])
    else:
        detail = _queue_state(cluster, profile)
    raise InputError(f"profile '{profile.name}': {have} of {n} Dask worker(s) started within "
                     f"{time.perf_counter() - t0:.0f} s; the scheduler says: {detail or 'nothing'}")


def _queue_state(cluster, profile: Profile) -> str:
    ids = [j for j in (getattr(w, "job_id", None) for w in getattr(cluster, "workers", {}).values()) if j]
    if profile.scheduler != "slurm" or not ids or shutil.which("squeue") is None:
        return f"jobs {', '.join(ids) or '(none submitted)'} not running yet (check the queue)"
    try:
        r = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "job %i %T (%r)"],
                           capture_output=True, text=True, timeout=10)
        return "; ".join(r.stdout.split("\n")).strip("; ") or f"jobs {', '.join(ids)} left the queue"
    except (OSError, subprocess.TimeoutExpired):
        return f"jobs {', '.join(ids)} not running yet"


__all__ = ["Profile", "SCHEDULERS", "cluster_kwargs", "check_sbatch", "default_profile_files", "get_profile",
           "load_profiles", "make_cluster", "parse_profiles", "wait_for_workers"]
