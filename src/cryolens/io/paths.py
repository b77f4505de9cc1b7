"""How files are named in STAR files and found again: relative to the project, so a project folder can move.

Inside a project (a folder holding ``cryolens.db``) every STAR file names the files it
references relative to the project root (RELION's convention: paths relative to the
project directory), or absolutely when a file lies outside the project. A relative name
in a STAR file that lies inside a project is looked up against that project's root first.
Outside a project the older rules stay: names relative to the current folder, and a
relative name looked up from the current folder, then next to the STAR file and above it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryolens.errors import InputError

__all__ = ["PROJECT_DB", "project_root", "star_name", "resolve_path", "alias_folder", "final_path"]

PathLike = str | os.PathLike

#: The file that marks a project's root folder (the project database).
PROJECT_DB = "cryolens.db"


def project_root(path: PathLike) -> Path | None:
    """The project that ``path`` lies in: the nearest folder at or above it holding ``cryolens.db``, else None.

    ``path`` may be a file or a folder and need not exist yet (a job folder about to be
    written); the search starts at the nearest existing folder. Returned as an absolute path.
    """
    p = Path(os.path.abspath(path))
    for folder in (p, *p.parents):
        if (folder / PROJECT_DB).is_file():
            return folder
    return None


_ALIASES: dict[str, str] = {}  # absolute folder being written -> absolute folder it will become (this process)


def alias_folder(folder: PathLike, final: PathLike | None) -> None:
    """Name files under ``folder`` as if they lay under ``final`` (a job built aside and swapped in later:
    :mod:`cryolens.jobs.folders`); ``final`` None forgets the alias."""
    key = os.path.abspath(folder)
    if final is None:
        _ALIASES.pop(key, None)
    else:
        _ALIASES[key] = os.path.abspath(final)


def final_path(path: PathLike) -> PathLike:
    """``path`` with an aliased folder (:func:`alias_folder`) replaced by its final folder (absolute then);
    else unchanged."""
    if not _ALIASES:
        return path
    a = os.path.abspath(path)
    for folder, final in _ALIASES.items():
        if a == folder or a.startswith(folder + os.sep):
            return final + a[len(folder):]
    return path


def _inside(path: Path, folder: Path) -> str | None:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return None


def star_name(path: PathLike, *, into: PathLike | None = None, up: bool = False) -> str:
    """How ``path`` is named in a STAR file written into ``into`` (the STAR file or its job folder).

    When ``into`` lies inside a project: relative to the project root if the file lies inside
    the project, else absolute (the project folder can then move or be shared). Otherwise
    (outside a project, or ``into`` None): relative to the current folder when the file lies
    below it, else absolute; with ``up`` a relative path that may climb (``../x``) instead,
    as ``os.path.relpath`` gives. A file in a folder built aside is named in its final folder
    (:func:`final_path`).
    """
    p = Path(os.path.abspath(final_path(path)))
    root = project_root(into) if into is not None else None
    if root is not None:
        return _inside(p, root) or _inside(p, root.resolve()) or p.as_posix()
    if up:
        return Path(os.path.relpath(p)).as_posix()
    cwd = Path(os.path.abspath(Path.cwd()))
    return _inside(p, cwd) or _inside(p, cwd.resolve()) or p.as_posix()


def resolve_path(name: PathLike, star_path: PathLike, *, row: int | None = None) -> Path:
    """Find a file named in a STAR file.

    An absolute path is used as is. A relative path in a STAR file that lies inside a
    project is tried against the project root first (where cryolens and RELION write
    names from). Then, as RELION does, against the current working directory, then the
    STAR file's folder and its ancestors (which also finds a project-relative name when
    a command runs from outside the project).

    Args:
        name: the path from the STAR file (without ``index@``).
        star_path: the STAR file that references it.
        row: 1-based table row, for the error message.

    Raises:
        InputError: the file exists in none of these places.
    """
    p = Path(name)
    star_folder = Path(star_path).absolute().parent
    if p.is_absolute():
        candidates = [p]
    else:
        root = project_root(star_folder)
        candidates = [*([root / p] if root is not None else []), Path.cwd() / p,
                      *(folder / p for folder in (star_folder, *star_folder.parents))]
    for c in candidates:
        if c.is_file():
            return c
    where = f" (referenced by row {row})" if row is not None else ""
    places = "" if p.is_absolute() else f" in {Path.cwd()}, {star_folder} or the folders above it"
    raise InputError(f"{Path(star_path).name}: stack {name}{where} was not found{places}; "
                     "check the paths or run from the project folder.")
