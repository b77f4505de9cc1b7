"""The project database ``DIR/cryolens.db``: jobs, assets (files), edges (input -> job), notes, groups.

stdlib ``sqlite3`` in WAL mode: readers never block the writer; writers wait for
each other (``busy_timeout``) and keep their transactions short (``BEGIN
IMMEDIATE`` ... ``COMMIT`` around one change, one connection per operation, so
threads and processes share nothing). Paths inside the project are stored
relative to its folder, others absolute.

A job marked ``running`` (or still ``queued``: allocated by a command that never
started it) whose process is gone (same host: its pid no longer exists or
belongs to a newer process; another host: no heartbeat for ``stale_s`` seconds)
is reported, and updated, as ``killed`` when read.

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

__all__ = ["DB_NAME", "SCHEMA_VERSION", "STATUSES", "GroupRecord", "JobRecord", "Project", "init_project",
           "open_project", "find_project", "stage_folder_name"]

DB_NAME = "cryolens.db"
STATUSES = ("queued", "running", "finished", "failed", "killed")
HASH_LIMIT = 64 * 2**20  # files up to this size get a sha256; all get size + mtime
STALE_S = 300.0  # a running job on another host without a heartbeat for this long is killed

MIGRATIONS: list[str] = [
    # version 1: the initial schema
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        number INTEGER NOT NULL UNIQUE,
        stage TEXT NOT NULL,
        folder TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        inputs TEXT NOT NULL DEFAULT '{}',
        outputs TEXT NOT NULL DEFAULT '{}',
        results TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'finished', 'failed', 'killed')),
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        host TEXT,
        pid INTEGER,
        heartbeat REAL,
        versions TEXT NOT NULL DEFAULT '{}',
        seed INTEGER,
        command TEXT NOT NULL DEFAULT '[]',
        error TEXT
    );
    CREATE INDEX jobs_folder ON jobs(folder);
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE assets (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        kind TEXT,
        job_id INTEGER REFERENCES jobs(id),
        sha256 TEXT,
        size INTEGER,
        mtime REAL
    );
    CREATE TABLE edges (
        asset_id INTEGER NOT NULL REFERENCES assets(id),
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        name TEXT NOT NULL,
        PRIMARY KEY (asset_id, job_id, name)
    );
    CREATE INDEX edges_job ON edges(job_id);
    CREATE TABLE notes (
        id INTEGER PRIMARY KEY,
        job_id INTEGER REFERENCES jobs(id),
        asset_id INTEGER REFERENCES assets(id),
        text TEXT NOT NULL,
        time REAL NOT NULL
    );
    """,
    # version 2: named groups (subsets) of assets or of STAR rows (movies, micrographs, particles)
    """
    CREATE TABLE asset_groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE group_members (
        group_id INTEGER NOT NULL REFERENCES asset_groups(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        item TEXT NOT NULL,
        source TEXT,
        asset_id INTEGER REFERENCES assets(id),
        job_id INTEGER REFERENCES jobs(id),
        PRIMARY KEY (group_id, item)
    );
    CREATE INDEX group_members_item ON group_members(item);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


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


def _process_alive(pid: int, since: float | None) -> bool:
    """Whether ``pid`` is a live process on this host started no later than ``since`` (guards pid reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True  # no /proc (macOS): trust os.kill
    if fields[0] in ("Z", "X"):  # zombie: exited, not yet reaped
        return False
    if since is not None:
        try:
            ticks = os.sysconf("SC_CLK_TCK")
            boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                        if line.startswith("btime"))
            if boot + int(fields[19]) / ticks > since + 5.0:
                return False  # the pid now belongs to a process started after the job
        except (OSError, ValueError, StopIteration, IndexError):
            pass
    return True


def _json(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True)


class Project:
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
                    and not _process_alive(r["pid"], r["started"] or r["created"]))
                or (r["host"] != host and now - (r["heartbeat"] or r["started"] or r["created"] or 0) > self.stale_s)]
        if dead:
            with self._write() as con:
                con.executemany("UPDATE jobs SET status='killed', ended=COALESCE(ended, heartbeat, created), "
                                "error=COALESCE(error, 'the process ended without recording an exit') "
                                "WHERE id=? AND status IN ('running', 'queued')", [(i,) for i in dead])

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

    # -- groups -------------------------------------------------------------------------------------------
    def add_to_group(self, name: str, items: list[str], *, source: str | os.PathLike | None = None,
                     job: int | str | None = None, description: str | None = None) -> GroupRecord:
        """Add ``items`` to the group ``name`` (created when missing); items already in it are kept once.

        An item is a file path (stored like assets: relative to the project when inside it) when
        ``source`` is None, else a row key of the STAR file ``source`` (e.g. a movie name as written
        there). ``job`` is the job that made the items (recorded per member).
        """
        name = _group_name(name)
        job_id = self.job(job).id if job is not None else None
        src = self.rel(source) if source is not None else None
        keys = [self.rel(i) for i in items] if source is None else [str(i) for i in items]
        with self._write() as con:
            row = con.execute("SELECT id FROM asset_groups WHERE name=?", (name,)).fetchone()
            if row is None:
                gid = con.execute("INSERT INTO asset_groups (name, description, created) VALUES (?, ?, ?)",
                                  (name, description, time.time())).lastrowid
            else:
                gid = row[0]
                if description is not None:
                    con.execute("UPDATE asset_groups SET description=? WHERE id=?", (description, gid))
            start = con.execute("SELECT COALESCE(MAX(position), 0) FROM group_members WHERE group_id=?",
                                (gid,)).fetchone()[0]
            assets = {r["path"]: r["id"] for r in con.execute("SELECT id, path FROM assets").fetchall()} \
                if source is None else {}
            con.executemany("INSERT OR IGNORE INTO group_members (group_id, position, item, source, asset_id, job_id) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [(gid, start + k + 1, key, src, assets.get(key), job_id) for k, key in enumerate(keys)])
        return self.group(name)

    def group_from_job(self, name: str, job: int | str, *, description: str | None = None) -> GroupRecord:
        """Group the files a job produced (its output assets)."""
        rec = self.job(job)
        with self._read() as con:
            paths = [r[0] for r in con.execute("SELECT path FROM assets WHERE job_id=? ORDER BY id", (rec.id,))]
        if not paths:
            raise InputError(f"{rec.folder}: {rec.name} recorded no output files; group another job or a STAR file.")
        return self.add_to_group(name, paths, job=rec.id, description=description)

    def group_from_star(self, name: str, star: str | os.PathLike, *, column: str | None = None,
                        job: int | str | None = None, description: str | None = None) -> GroupRecord:
        """Group the rows of a STAR file (a subset of movies, micrographs or particles) by their key column.

        The key is ``column`` or, by the table: movies -> rlnMicrographMovieName, micrographs and
        coordinate files -> rlnMicrographName, particles -> rlnImageName.
        """
        from cryolens.io.star import read_star  # the database alone needs no STAR reader
        blocks = {k: v for k, v in read_star(star).items() if hasattr(v, "columns") and k != "optics"}
        key, table = _star_key(blocks, column, star)
        items = list(dict.fromkeys(table[key].astype(str).tolist()))
        return self.add_to_group(name, items, source=star, job=job, description=description)

    def groups(self) -> list[GroupRecord]:
        """All groups by name, with member counts, sources and the jobs that made their members."""
        with self._read() as con:
            names = [r[0] for r in con.execute("SELECT name FROM asset_groups ORDER BY name")]
        return [self.group(n) for n in names]

    def group(self, name: str) -> GroupRecord:
        """One group (InputError naming ``project groups`` when there is none of that name)."""
        with self._read() as con:
            row = con.execute("SELECT * FROM asset_groups WHERE name=?", (name,)).fetchone()
            if row is None:
                raise InputError(f"{name}: no such group in {self.root}; see `cryolens project groups`.")
            n = con.execute("SELECT COUNT(*) FROM group_members WHERE group_id=?", (row["id"],)).fetchone()[0]
            sources = [r[0] for r in con.execute("SELECT DISTINCT source FROM group_members WHERE group_id=? "
                                                 "AND source IS NOT NULL ORDER BY source", (row["id"],))]
            jobs = [f"job{r[0]:03d}" for r in con.execute(
                "SELECT DISTINCT j.number FROM group_members m JOIN jobs j ON j.id = m.job_id WHERE m.group_id=? "
                "ORDER BY j.number", (row["id"],))]
        return GroupRecord(id=row["id"], name=row["name"], description=row["description"], created=row["created"],
                           n_members=n, sources=sources, jobs=jobs)

    def group_members(self, name: str) -> list[dict[str, Any]]:
        """Members in the order added: ``{"item", "source" (STAR or None), "asset" (bool), "job" (name or None)}``."""
        gid = self.group(name).id
        with self._read() as con:
            rows = con.execute("SELECT m.item, m.source, m.asset_id, j.number FROM group_members m "
                               "LEFT JOIN jobs j ON j.id = m.job_id WHERE m.group_id=? ORDER BY m.position",
                               (gid,)).fetchall()
        return [{"item": r[0], "source": r[1], "asset": r[2] is not None,
                 "job": f"job{r[3]:03d}" if r[3] is not None else None} for r in rows]

    def delete_group(self, name: str) -> None:
        """Forget a group (its members' files are untouched)."""
        gid = self.group(name).id
        with self._write() as con:
            con.execute("DELETE FROM group_members WHERE group_id=?", (gid,))
            con.execute("DELETE FROM asset_groups WHERE id=?", (gid,))


@dataclass(frozen=True)
class GroupRecord:
    """A named group: ``n_members`` items, the STAR files they came from and the jobs that made them."""

    id: int
    name: str
    description: str | None
    created: float
    n_members: int
    sources: list[str]
    jobs: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: STAR table -> the column naming its rows (for groups of STAR rows).
STAR_KEYS = {"particles": "rlnImageName", "movies": "rlnMicrographMovieName", "micrographs": "rlnMicrographName",
             "coordinate_files": "rlnMicrographName"}


def _group_name(name: str) -> str:
    if not name or name != name.strip() or any(c in name for c in "\n\t"):
        raise InputError(f"{name!r}: not a usable group name; give a name without leading or trailing spaces.")
    return name


def _star_key(blocks: dict[str, Any], column: str | None, star: str | os.PathLike) -> tuple[str, Any]:
    """(key column, table) of a STAR file's data table."""
    if column is not None:
        for table in blocks.values():
            if column in table.columns:
                return column, table
        raise InputError(f"{star}: no table has the column {column}; give another --column.")
    for block, key in STAR_KEYS.items():
        if block in blocks and key in blocks[block].columns:
            return key, blocks[block]
    for key in ("rlnImageName", "rlnMicrographName", "rlnMicrographMovieName"):
        for table in blocks.values():
            if key in table.columns:
                return key, table
    raise InputError(f"{star}: no rlnImageName, rlnMicrographName or rlnMicrographMovieName column; "
                     "give the key with --column.")


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
