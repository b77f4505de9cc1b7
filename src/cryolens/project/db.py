"""The project database ``DIR/cryolens.db``: jobs, assets (files), edges (input -> job), notes, groups.

stdlib ``sqlite3`` in WAL mode: readers never block the writer; writers wait for
each other (``busy_timeout``) and keep their transactions short (``BEGIN
IMMEDIATE`` ... ``COMMIT`` around one change, one connection per operation, so
threads and processes share nothing). Paths inside the project are stored
relative to its folder, others absolute.

A job marked ``running`` (or still ``queued``: allocated by a command that never
started it) whose process is gone (same host: its pid no longer exists or
belongs to a newer process; another host: no heartbeat for ``stale_s`` seconds)
is reported, and updated, as ``killed`` when read, and its folder reconciled
(:func:`cryolens.jobs.folders.reconcile_killed`: temporary files removed,
``job.json`` says killed, ``CRYOLENS_JOB_EXIT_ABORTED`` written). A job killed while
overwriting a finished job (``--overwrite``) left that job intact in its folder: its
record goes back to ``finished`` from the folder's ``job.json``.

Example::

    project = init_project("P")
    rec = project.new_job("reconstruct")          # P/Reconstruct/job001/, status queued
    project.record_start(rec.id, params={...}, inputs={"particles": "Simulate/job001/particles.star"})
    project.record_finish(rec.id, outputs={"map": "Reconstruct/job001/map.mrc"})
    project.lineage("Reconstruct/job001/map.mrc")
    project.group_from_star("session1", "Import/job002/movies.star")   # a named subset (schema 2)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryolens.errors import InputError
from cryolens.io.paths import PROJECT_DB
from cryolens.jobs.folders import read_job_json, reconcile_killed
from cryolens.project.groups import GroupRecord, ProjectGroups
from cryolens.jobs.processes import process_alive
from cryolens.project.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["DB_NAME", "SCHEMA_VERSION", "STATUSES", "GroupRecord", "JobRecord", "Project", "init_project",
           "open_project", "find_project", "stage_folder_name"]

DB_NAME = PROJECT_DB  # the file that marks a project folder
STATUSES = ("queued", "running", "finished", "failed", "killed")
HASH_LIMIT = 64 * 2**20  # files up to this size get a sha256; all get size + mtime
STALE_S = 300.0  # a running job on another host without a heartbeat for this long is killed


def stage_folder_name(stage: str) -> str:
    """RELION-style folder of a stage: ``reconstruct`` -> ``Reconstruct``, ``simulate_particles`` -> ``Simulate``."""
    head = stage.replace("-", "_").split("_")[0]
    return head[:1].upper() + head[1:]


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs`` (JSON columns decoded); ``folder`` is relative to the project when inside it."""

    id: int
    number: int
    stage: str
    folder: str
    status: str
    params: dict
    inputs: dict
    outputs: dict
    results: dict
    created: float
    started: float | None
    ended: float | None
    host: str | None
    pid: int | None
    heartbeat: float | None
    versions: dict
    seed: int | None
    command: list
    error: str | None

    @property
    def name(self) -> str:
        return f"job{self.number:03d}"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"name": self.name}


_JSON_COLUMNS = ("params", "inputs", "outputs", "results", "versions", "command")


def _row_to_job(row: sqlite3.Row) -> JobRecord:
    d = dict(row)
    for k in _JSON_COLUMNS:
        d[k] = json.loads(d[k]) if d[k] else ({} if k != "command" else [])
    return JobRecord(**d)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True)


class Project(ProjectGroups):
    """A project folder with its database; every method opens its own short-lived connection."""

    def __init__(self, root: str | os.PathLike, *, stale_s: float = STALE_S) -> None:
        self.root = Path(root).resolve()
        self.db_path = self.root / DB_NAME
        self.stale_s = stale_s

    # -- connections ---------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout = 60000")
        con.execute("PRAGMA foreign_keys = ON")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (taken at once, so concurrent writers queue on busy_timeout)."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def migrate(self) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before."""
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied REAL NOT NULL)")
            found = con.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                con.execute("ROLLBACK")
                raise InputError(f"{self.db_path}: written by a newer cryolens (schema {found} > {SCHEMA_VERSION}); "
                                 "upgrade cryolens to open this project.")
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))
            con.execute("COMMIT")
            return found
        finally:
            con.close()

    def schema_version(self) -> int:
        with self._read() as con:
            return con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    # -- paths -----------------------------------------------------------------------------------------------
    def rel(self, path: str | os.PathLike) -> str:
        """The stored form of a path: relative to the project when inside it, else absolute."""
        p = Path(os.path.abspath(path))
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return p.as_posix()

    def abs(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    # -- jobs --------------------------------------------------------------------------------------------------
    def new_job(self, stage: str, folder: str | os.PathLike | None = None) -> JobRecord:
        """Allocate the next job number and its folder (``<Stage>/jobNNN/`` unless ``folder`` is given)."""
        with self._write() as con:
            number = con.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM jobs").fetchone()[0]
            where = self.rel(folder) if folder is not None else f"{stage_folder_name(stage)}/job{number:03d}"
            cur = con.execute("INSERT INTO jobs (number, stage, folder, status, created, host, pid, command) "
                              "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                              (number, stage, where, time.time(), socket.gethostname(), os.getpid(),
                               _json(sys.argv)))
            job_id = cur.lastrowid
        self.abs(where).mkdir(parents=True, exist_ok=True)
        return self.job(job_id)

    def job_in_folder(self, folder: str | os.PathLike) -> JobRecord | None:
        """The job whose folder is ``folder`` (the latest if several, as older projects allowed), or None."""
        self._refresh_killed()
        with self._read() as con:
            row = con.execute("SELECT * FROM jobs WHERE folder=? ORDER BY number DESC",
                              (self.rel(folder),)).fetchone()
        return None if row is None else _row_to_job(row)

    def reopen_job(self, job_id: int) -> dict[str, Any]:
        """Make job ``job_id`` queued again for this process (a rerun in its folder, same number); its input
        edges go (the rerun records its own). Returns a snapshot for :meth:`restore_job`."""
        with self._write() as con:
            row = dict(con.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
            edges = [tuple(e) for e in con.execute("SELECT asset_id, job_id, name FROM edges WHERE job_id=?",
                                                   (job_id,))]
            con.execute("DELETE FROM edges WHERE job_id=?", (job_id,))
            con.execute("UPDATE jobs SET status='queued', created=?, host=?, pid=?, command=?, started=NULL, "
                        "ended=NULL, heartbeat=NULL, error=NULL WHERE id=?",
                        (time.time(), socket.gethostname(), os.getpid(), _json(sys.argv), job_id))
        return {"row": row, "edges": edges}

    def restore_job(self, snapshot: dict[str, Any]) -> None:
        """Put a job's record and input edges back as :meth:`reopen_job` found them."""
        row = snapshot["row"]
        cols = [c for c in row if c != "id"]
        with self._write() as con:
            con.execute(f"UPDATE jobs SET {', '.join(f'{c}=?' for c in cols)} WHERE id=?",
                        [row[c] for c in cols] + [row["id"]])
            con.execute("DELETE FROM edges WHERE job_id=?", (row["id"],))
            con.executemany("INSERT OR IGNORE INTO edges (asset_id, job_id, name) VALUES (?, ?, ?)",
                            snapshot["edges"])

    def record_start(self, job_id: int, *, stage: str | None = None, params: dict | None = None,
                     inputs: dict | None = None, seed: int | None = None, versions: dict | None = None,
                     command: list | None = None, pid: int | None = None, host: str | None = None) -> None:
        """Mark a job running, with what it runs on; input files become assets with edges to the job."""
        now = time.time()
        files = [(name, self._file_info(path))
                 for name, value in (inputs or {}).items() for path in self._files_in(value)]
        with self._write() as con:
            con.execute("UPDATE jobs SET status='running', started=?, heartbeat=?, host=?, pid=?, params=?, inputs=?, "
                        "seed=?, versions=?, command=?, stage=COALESCE(?, stage) WHERE id=?",
                        (now, now, host or socket.gethostname(), pid or os.getpid(), _json(params or {}),
                         _json({k: self._input_value(v) for k, v in (inputs or {}).items()}), seed,
                         _json(versions or {}), _json(command if command is not None else sys.argv), stage, job_id))
            for name, info in files:
                asset = self._upsert_asset(con, info, kind=name, job_id=None)
                con.execute("INSERT OR IGNORE INTO edges VALUES (?, ?, ?)", (asset, job_id, name))

    def heartbeat(self, job_id: int) -> None:
        with self._write() as con:
            con.execute("UPDATE jobs SET heartbeat=? WHERE id=? AND status='running'", (time.time(), job_id))

    def record_finish(self, job_id: int, *, outputs: dict[str, str] | None = None, results: dict | None = None) -> None:
        """Mark a job finished; its output files become assets produced by it."""
        stored = {name: self.rel(path) for name, path in (outputs or {}).items()}
        files = [(name, self._file_info(path)) for name, path in (outputs or {}).items() if Path(path).is_file()]
        with self._write() as con:  # hashes computed before: the write lock is held briefly
            for name, info in files:
                self._upsert_asset(con, info, kind=name, job_id=job_id)
            con.execute("UPDATE jobs SET status='finished', ended=?, outputs=?, results=?, error=NULL WHERE id=?",
                        (time.time(), _json(stored), _json(results or {}), job_id))

    def record_failure(self, job_id: int, error: str, *, outputs: dict[str, str] | None = None) -> None:
        with self._write() as con:
            con.execute("UPDATE jobs SET status='failed', ended=?, error=?, outputs=? WHERE id=?",
                        (time.time(), error, _json({k: self.rel(v) for k, v in (outputs or {}).items()}), job_id))

    def _input_value(self, value: Any) -> Any:
        files = self._files_in(value)
        if isinstance(value, (list, tuple)):
            return [self.rel(v) if Path(str(v)).is_file() else v for v in value]
        return self.rel(files[0]) if files else value

    @staticmethod
    def _files_in(value: Any) -> list[str]:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [str(v) for v in values if isinstance(v, (str, os.PathLike)) and str(v) and Path(str(v)).is_file()]

    def _file_info(self, path: str | os.PathLike) -> tuple[str, str | None, int, float]:
        """(stored path, sha256 or None above HASH_LIMIT, size, mtime) of a file."""
        p = Path(path)
        st = p.stat()
        sha = None
        if st.st_size <= HASH_LIMIT:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            sha = h.hexdigest()
        return self.rel(p), sha, st.st_size, st.st_mtime

    @staticmethod
    def _upsert_asset(con: sqlite3.Connection, info: tuple[str, str | None, int, float], *, kind: str | None,
                      job_id: int | None) -> int:
        key, sha, size, mtime = info
        con.execute("INSERT INTO assets (path, kind, job_id, sha256, size, mtime) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET sha256=excluded.sha256, size=excluded.size, mtime=excluded.mtime, "
                    "kind=COALESCE(assets.kind, excluded.kind), job_id=COALESCE(excluded.job_id, assets.job_id)",
                    (key, kind, job_id, sha, size, mtime))
        return con.execute("SELECT id FROM assets WHERE path=?", (key,)).fetchone()[0]

    def _refresh_killed(self) -> None:
        """Mark running or queued jobs whose process is gone as killed (see the module docstring)."""
        host, now = socket.gethostname(), time.time()
        with self._read() as con:
            live = con.execute("SELECT id, host, pid, created, started, heartbeat FROM jobs "
                               "WHERE status IN ('running', 'queued')").fetchall()
        dead = [r["id"] for r in live
                if (r["host"] == host and r["pid"] is not None
                    and not process_alive(r["pid"], r["started"] or r["created"]))
                or (r["host"] != host and now - (r["heartbeat"] or r["started"] or r["created"] or 0) > self.stale_s)]
        if dead:
            with self._write() as con:
                con.executemany("UPDATE jobs SET status='killed', ended=COALESCE(ended, heartbeat, created), "
                                "error=COALESCE(error, 'the process ended without recording an exit') "
                                "WHERE id=? AND status IN ('running', 'queued')", [(i,) for i in dead])
                folders = {r["id"]: r["folder"] for r in con.execute(
                    f"SELECT id, folder FROM jobs WHERE id IN ({','.join('?' * len(dead))})", dead)}
            for job_id, folder in folders.items():
                self._reconcile(job_id, self.abs(folder))

    def _reconcile(self, job_id: int, folder: Path) -> None:
        """Tidy a killed job's folder; a killed overwrite gets its finished record back from ``job.json``."""
        try:
            state = reconcile_killed(folder)
        except OSError:
            return  # the folder is not ours to tidy (read-only, gone): the record says killed
        rec = read_job_json(folder) if state == "finished" else None
        if rec is None:
            return
        with self._read() as con:  # older projects let jobs share a folder: the job.json may be another's
            if con.execute("SELECT COUNT(*) FROM jobs WHERE folder=(SELECT folder FROM jobs WHERE id=?)",
                           (job_id,)).fetchone()[0] != 1:
                return
        outputs = {k: self.rel(v if os.path.isabs(v) else self.root / v) for k, v in (rec.get("outputs") or {}).items()}
        with self._write() as con:
            con.execute("UPDATE jobs SET status='finished', started=?, ended=?, params=?, inputs=?, outputs=?, "
                        "results=?, seed=?, error=NULL WHERE id=?",
                        (rec.get("started"), rec.get("ended"), _json(rec.get("params") or {}),
                         _json(rec.get("inputs") or {}), _json(outputs), _json(rec.get("results") or {}),
                         rec.get("seed"), job_id))

    def jobs(self) -> list[JobRecord]:
        """All jobs by number (killed ones detected first)."""
        self._refresh_killed()
        with self._read() as con:
            return [_row_to_job(r) for r in con.execute("SELECT * FROM jobs ORDER BY number")]

    def job(self, key: int | str) -> JobRecord:
        """A job by id, number (``3``, ``job003``), folder (``Reconstruct/job003``) or a path to its folder."""
        self._refresh_killed()
        with self._read() as con:
            row = None
            text = str(key).rstrip("/")
            if isinstance(key, int) or text.isdigit():
                row = con.execute("SELECT * FROM jobs WHERE id=?", (int(text),)).fetchone()
            elif text.startswith("job") and text[3:].isdigit():
                row = con.execute("SELECT * FROM jobs WHERE number=?", (int(text[3:]),)).fetchone()
            if row is None:
                for cand in {text, self.rel(text)}:
                    row = con.execute("SELECT * FROM jobs WHERE folder=? ORDER BY number DESC", (cand,)).fetchone()
                    if row is not None:
                        break
        if row is None:
            raise InputError(f"{key}: no such job in {self.root}; see `cryolens project jobs`.")
        return _row_to_job(row)

    def lineage(self, path: str | os.PathLike) -> dict[str, Any]:
        """The tree of jobs and inputs that made a file.

        Returns ``{"path", "job": job dict or None (an external input), "inputs": [subtree, ...]}``.
        """
        self._refresh_killed()
        with self._read() as con:
            key = self.rel(path)
            if con.execute("SELECT 1 FROM assets WHERE path=?", (key,)).fetchone() is None:
                raise InputError(f"{path}: not a file recorded in the project {self.root}; "
                                 "only inputs and outputs of recorded jobs have a lineage.")
            return self._lineage(con, key, set())

    def _lineage(self, con: sqlite3.Connection, key: str, seen: set[int]) -> dict[str, Any]:
        asset = con.execute("SELECT * FROM assets WHERE path=?", (key,)).fetchone()
        node: dict[str, Any] = {"path": key, "kind": asset["kind"] if asset else None, "job": None, "inputs": []}
        if asset is None or asset["job_id"] is None:
            return node
        job = _row_to_job(con.execute("SELECT * FROM jobs WHERE id=?", (asset["job_id"],)).fetchone())
        node["job"] = {"id": job.id, "name": job.name, "stage": job.stage, "folder": job.folder, "status": job.status,
                       "params": job.params, "seed": job.seed}
        if job.id in seen:
            return node
        seen = seen | {job.id}
        for edge in con.execute("SELECT a.path FROM edges e JOIN assets a ON a.id = e.asset_id WHERE e.job_id=? "
                                "ORDER BY e.name", (job.id,)).fetchall():
            node["inputs"].append(self._lineage(con, edge["path"], seen))
        return node

    def add_note(self, text: str, *, job: int | str | None = None, asset: str | os.PathLike | None = None) -> int:
        """Attach a note to a job or to a recorded file; returns the note's id."""
        if (job is None) == (asset is None):
            raise ValueError("give exactly one of job= and asset=")
        job_id = self.job(job).id if job is not None else None
        with self._write() as con:
            asset_id = None
            if asset is not None:
                row = con.execute("SELECT id FROM assets WHERE path=?", (self.rel(asset),)).fetchone()
                if row is None:
                    raise InputError(f"{asset}: not a file recorded in the project {self.root}.")
                asset_id = row[0]
            return con.execute("INSERT INTO notes (job_id, asset_id, text, time) VALUES (?, ?, ?, ?)",
                               (job_id, asset_id, text, time.time())).lastrowid

    def notes(self, job: int | str | None = None) -> list[dict[str, Any]]:
        with self._read() as con:
            if job is None:
                rows = con.execute("SELECT n.*, a.path AS asset FROM notes n LEFT JOIN assets a ON a.id = n.asset_id "
                                   "ORDER BY n.id").fetchall()
            else:
                rows = con.execute("SELECT n.*, NULL AS asset FROM notes n WHERE job_id=? ORDER BY n.id",
                                   (self.job(job).id,)).fetchall()
        return [dict(r) for r in rows]

    def status(self) -> dict[str, Any]:
        """Counts of jobs by status, assets and notes, running jobs, schema version and integrity."""
        jobs = self.jobs()
        with self._read() as con:
            n_assets = con.execute("SELECT COUNT(*) FROM assets").fetchone()[0]
            n_notes = con.execute("SELECT COUNT(*) FROM notes").fetchone()[0]
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            version = con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return {"project": str(self.root), "schema_version": version, "integrity": integrity, "jobs": len(jobs),
                "by_status": {s: sum(j.status == s for j in jobs) for s in STATUSES}, "assets": n_assets,
                "notes": n_notes, "running": [f"{j.folder}" for j in jobs if j.status == "running"]}

def find_project(path: str | os.PathLike) -> Path | None:
    """``path`` when it holds ``cryolens.db``, else None."""
    p = Path(path)
    return p if (p / DB_NAME).is_file() else None


def open_project(path: str | os.PathLike, **kw: Any) -> Project:
    """Open an existing project (migrating its schema); InputError when ``path`` is not one."""
    if find_project(path) is None:
        raise InputError(f"{path}: not a cryolens project (no {DB_NAME}); run `cryolens project init {path}` "
                         "or drop --project.")
    project = Project(path, **kw)
    project.migrate()
    return project


def init_project(path: str | os.PathLike, **kw: Any) -> Project:
    """Create (or open) a project folder with its database."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{path}: exists and is not a folder; choose another project folder.")
    p.mkdir(parents=True, exist_ok=True)
    project = Project(p, **kw)
    project.migrate()
    return project
