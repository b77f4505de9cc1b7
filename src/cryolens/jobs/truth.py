"""Ground truth of simulated data, found by following a job's inputs back to a simulate job.

A job folder's ``job.json`` names its inputs; each input file lies in (or under) the folder of
the job that wrote it, whose ``job.json`` names its own inputs, and so on. The first folder up
that chain whose stage starts with ``simulate`` holds the truth:

* ``simulate_particles``: ``particles.star`` itself (true rlnAngleRot/Tilt/Psi,
  rlnOriginX/YAngst, rlnClassNumber, rlnCryolensJunk) and ``truth_map.mrc``;
* ``simulate_micrographs`` / ``simulate_movies``: ``particles_truth.star`` (rlnMicrographName,
  rlnCoordinateX/Y in pixels, angles, rlnClassNumber) and ``truth_map.mrc``.

Particles of a later job are matched to the truth by ``rlnImageName`` (a particle simulation:
every later table keeps the stack names) or by micrograph (file stem) and nearest coordinates
within a radius in pixels (micrograph and movie simulations). Nothing here writes files.

Example::

    truth = find_truth("Refine/job004")            # None when the data were not simulated
    matched = match_particles(refined_table, truth, radius_px=10)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryolens.io import read_star
from cryolens.io.paths import PROJECT_DB
from cryolens.jobs.folders import read_job_json

__all__ = ["Truth", "find_truth", "simulation_folder", "match_particles", "nearest_rows", "micrograph_key",
           "particle_table"]

_MAX_DEPTH = 12  # jobs followed back at most


@dataclass(frozen=True)
class Truth:
    """Where a simulation's ground truth lies.

    Attributes:
        folder: the simulate job's folder.
        stage: its stage (``simulate_particles``, ``simulate_micrographs``, ``simulate_movies``).
        particles: the STAR file of true particles (poses, classes, junk; coordinates for micrographs).
        map: ``truth_map.mrc`` (None when missing).
    """

    folder: Path
    stage: str
    particles: Path
    map: Path | None

    @property
    def by_image_name(self) -> bool:
        """True when later particles match the truth by ``rlnImageName`` (a particle-stack simulation)."""
        return self.stage == "simulate_particles"


def _project_root(folder: Path) -> Path | None:
    for p in (folder, *folder.parents):
        if (p / PROJECT_DB).is_file():
            return p
    return None


def _candidates(value: str, job_dir: Path) -> list[Path]:
    """Where an input path recorded in ``job.json`` may be now (as written, from the project, from the job)."""
    p = Path(value)
    if p.is_absolute():
        return [p]
    roots = [Path.cwd()]
    root = _project_root(job_dir.resolve())
    if root is not None:
        roots.append(root)
    roots += [job_dir.parent.parent, job_dir.parent, job_dir]
    return [r / p for r in roots]


def _job_folder_of(path: Path) -> Path | None:
    """The nearest folder at or above ``path``'s folder that holds a ``job.json`` (3 levels at most)."""
    d = path.parent
    for _ in range(3):
        if (d / "job.json").is_file():
            return d
        d = d.parent
    return None


def _input_paths(job: dict) -> list[str]:
    out: list[str] = []
    for v in (job.get("inputs") or {}).values():
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(item, str) and item and not item.startswith("<"):
                out.append(item)
    return out


def simulation_folder(job_dir: str | os.PathLike) -> tuple[Path, str] | None:
    """The folder and stage of the simulate job upstream of ``job_dir`` (``job_dir`` itself counts), or None."""
    start = Path(job_dir)
    todo, seen = [(start, 0)], set()
    while todo:
        folder, depth = todo.pop(0)
        key = str(folder.resolve())
        if key in seen or depth > _MAX_DEPTH:
            continue
        seen.add(key)
        job = read_job_json(folder)
        if job is None:
            continue
        stage = str(job.get("stage", ""))
        if stage.startswith("simulate"):
            return folder, stage
        for value in _input_paths(job):
            for cand in _candidates(value, folder):
                if cand.is_file():
                    parent = _job_folder_of(cand)
                    if parent is not None:
                        todo.append((parent, depth + 1))
                    break
    return None


def find_truth(job_dir: str | os.PathLike) -> Truth | None:
    """The ground truth upstream of a job (see the module docstring), or None when there is none."""
    found = simulation_folder(job_dir)
    if found is None:
        return None
    folder, stage = found
    star = folder / ("particles.star" if stage == "simulate_particles" else "particles_truth.star")
    if not star.is_file():
        return None
    tmap = folder / "truth_map.mrc"
    return Truth(folder, stage, star, tmap if tmap.is_file() else None)


def particle_table(path: str | os.PathLike) -> pd.DataFrame:
    """The particle (or coordinate) rows of a STAR file: the ``particles`` block, else the last block."""
    blocks = read_star(path)
    if "particles" in blocks:
        return blocks["particles"]
    return list(blocks.values())[-1]


def micrograph_key(names: pd.Series) -> pd.Series:
    """File stems of micrograph (or movie) names: ``MotionCorr/job003/Movies/movie_0001.mrc`` -> ``movie_0001``."""
    return names.astype(str).map(lambda s: Path(s.split("@")[-1]).stem)


def match_particles(table: pd.DataFrame, truth: Truth, *, radius_px: float = 10.0) -> pd.DataFrame:
    """The true row of each particle of ``table`` (same index as ``table``; NaN where none matches).

    Columns of the result are the truth's, prefixed ``true_`` (``true_rlnAngleRot``, ``true_rlnClassNumber``,
    ``true_rlnCryolensJunk``, ...). Matching by ``rlnImageName`` for a particle simulation, else by micrograph
    stem and the nearest true coordinate within ``radius_px`` pixels.
    """
    true = particle_table(truth.particles).reset_index(drop=True)
    renamed = true.add_prefix("true_")
    if truth.by_image_name and "rlnImageName" in table.columns and "rlnImageName" in true.columns:
        lookup = pd.Series(np.arange(len(true)), index=true["rlnImageName"].astype(str).to_numpy())
        lookup = lookup[~lookup.index.duplicated()]
        rows = lookup.reindex(table["rlnImageName"].astype(str).to_numpy()).to_numpy()
    else:
        rows = nearest_rows(table, true, radius_px=radius_px)
    out = renamed.reindex(np.where(np.isnan(rows), -1, rows).astype(int))
    out.index = table.index
    return out


def nearest_rows(table: pd.DataFrame, true: pd.DataFrame, *, radius_px: float) -> np.ndarray:
    """For each row of ``table`` the index (float; NaN: none) of the nearest row of ``true`` on the same
    micrograph (by file stem) within ``radius_px`` pixels (rlnCoordinateX/Y)."""
    rows = np.full(len(table), np.nan)
    need = {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"}
    if not need <= set(table.columns) or not need <= set(true.columns):
        return rows
    tkey, pkey = micrograph_key(true["rlnMicrographName"]), micrograph_key(table["rlnMicrographName"])
    t_xy = true[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    p_xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    t_groups = {k: np.flatnonzero(tkey.to_numpy() == k) for k in pd.unique(tkey)}
    for k, where in pd.Series(np.arange(len(table))).groupby(pkey.to_numpy()):
        cand = t_groups.get(k)
        if cand is None or not len(cand):
            continue
        d = np.linalg.norm(p_xy[where.to_numpy()][:, None, :] - t_xy[cand][None, :, :], axis=-1)
        best = d.argmin(axis=1)
        ok = d[np.arange(len(best)), best] <= radius_px
        rows[where.to_numpy()[ok]] = cand[best[ok]]
    return rows
