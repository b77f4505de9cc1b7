"""Named groups (subsets) of a project's files or of STAR rows (movies, micrographs, particles): schema 2.

:class:`ProjectGroups` holds the group methods of :class:`cryolens.project.db.Project`
(which inherits them); it uses the project's connections (``_read``/``_write``), paths
(``rel``) and jobs (``job``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from cryolens.errors import InputError

__all__ = ["GroupRecord", "ProjectGroups", "STAR_KEYS"]


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


class ProjectGroups:
    """The group methods of :class:`cryolens.project.db.Project`."""

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
