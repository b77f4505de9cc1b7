"""The schema of the project database (``cryolens.db``): one SQL script per version, applied in order.

:meth:`cryolens.project.db.Project.migrate` runs the scripts above the version a database
records in its ``schema_version`` table. Append a script for a change; never edit one that
was released (databases already at that version would not see the edit).
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

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
