"""The demo: the shipped tutorial workflow (movies in, map out) and its ``summary.json``.

:data:`TUTORIAL_WORKFLOW` is ``cryolens/workflows/tutorial.toml`` (also ``examples/tutorial.toml``):
simulated movies of apoferritin → import → motion → CTF → micrograph selection → picking →
extraction → 2D classification → automatic class selection → ab initio → unbinned re-extraction →
refinement → postprocess. Only the movies and the acquisition parameters reach the pipeline; the
simulator's truth is read here, after the workflow, to score the result:

``summary.json`` (paths relative to the project folder)::

    {"map": refine's unsharpened full map, "half1", "half2",
     "truth_map": the simulator's truth on the map's grid (written next to summary.json),
     "resolution_A": postprocess's gold-standard corrected FSC 0.143 (Å),
     "truth_fsc05_A": FSC 0.5 between the map (aligned to the truth, either hand) and the truth (Å),
     "hand_flipped": whether the map had the other hand, "wall_s": seconds of this run,
     "steps": [{"step", "stage", "job", "seconds", "summary"}, ...]}

:data:`QUICK_SETTINGS` shrink the same workflow for tests (3 movies, about 120 particles).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryolens.errors import InputError
from cryolens.project.workflow import Workflow
from cryolens.project.workflow_run import state_path

__all__ = ["TUTORIAL_WORKFLOW", "QUICK_SETTINGS", "step_records", "write_summary"]

TUTORIAL_WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "tutorial.toml"

#: ``--quick``: the same chain reduced to a few minutes of CPU (the default test suite runs it): 3 movies of 512² px
#: at 3.5 Å/px (the tutorial's field of view, 1024² px at 1.75 Å/px) of 8 frames (the same total dose), about 120
#: particles; boxes of the same size in Å (80 px), every micrograph with a fitted CTF kept (at 3.5 Å/px the fit
#: rarely reaches 8 Å), fewer classes, a shorter ab initio and 4 refinement iterations.
QUICK_SETTINGS: dict[str, dict[str, Any]] = {
    "movies": {"n_movies": 3, "frames": 8, "dose_per_frame": 5.0, "size": [512, 512], "pixel_size": 3.5, "box": 64},
    "import": {"pixel_size": 3.5, "exposure_per_frame": 5.0},
    "good_mics": {"where": ["rlnCtfMaxResolution < 40"]},
    "extract": {"box": 80, "bin_to": 64},
    "class2d": {"classes": 4, "iter": 10},
    "abinitio": {"iterations": 12, "batch_size": 60},
    "reextract": {"box": 80},
    "refine": {"max_iter": 4},
}


def _job(root: Path, folder: str) -> dict:
    try:
        return json.loads((root / folder / "job.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"{root / folder}: job.json is missing or unreadable; rerun the workflow.") from None


def step_records(wf: Workflow) -> list[dict]:
    """One row per step of ``wf`` that has a finished job: step, stage, job folder, seconds of the job (from its
    ``job.json``) and the last line its command printed (what went in and what came out)."""
    state = json.loads(state_path(wf.project, wf.name).read_text())["steps"]
    rows = []
    for step in wf.steps:
        rec = state.get(step.name, {})
        if rec.get("status") != "finished" or not rec.get("folder"):
            continue
        job = _job(wf.project, rec["folder"])
        lines = []
        if rec.get("log") and (wf.project / rec["log"]).is_file():
            lines = [ln.strip() for ln in (wf.project / rec["log"]).read_text(errors="replace").splitlines() if ln.strip()]
        seconds = job["ended"] - job["started"] if job.get("ended") and job.get("started") else None
        rows.append({"step": step.name, "stage": step.stage.name, "job": rec["folder"],
                     "seconds": None if seconds is None else round(float(seconds), 1),
                     "summary": lines[-1] if lines else ""})
    return rows


def _output(root: Path, job: dict, name: str) -> Path:
    path = job.get("outputs", {}).get(name)
    if not path:
        raise InputError(f"{root}: the {job.get('stage')} job has no output {name}; rerun the workflow.")
    p = Path(path)
    return p if p.is_absolute() else root / p


def write_summary(wf: Workflow, *, wall_s: float, align: bool = True) -> dict:
    """Write ``<project>/summary.json`` and ``<project>/truth_map.mrc`` for the finished tutorial workflow ``wf``.

    ``align``: also align the map onto the truth (both hands, the refinement's symmetry) and report the FSC 0.5
    with it (seconds to a minute)."""
    from cryolens.core.fourier import pad_or_crop, resample
    from cryolens.core.fsc import fsc as fourier_shell_correlation
    from cryolens.io import read_mrc, write_mrc

    root = wf.project
    state = json.loads(state_path(root, wf.name).read_text())["steps"]

    def job_of(step: str) -> dict:
        if state.get(step, {}).get("status") != "finished":
            raise InputError(f"{wf.path}: step {step} has not finished; run the workflow to the end first.")
        return _job(root, state[step]["folder"])

    refine, post, sim = job_of("refine"), job_of("post"), job_of("movies")
    full, half1, half2 = (_output(root, refine, k) for k in ("map", "half1", "half2"))
    vol, apix = read_mrc(full)
    truth, tapix = read_mrc(_output(root, sim, "truth_map"))
    t = torch.as_tensor(np.array(truth, dtype=np.float32))
    if abs(tapix - apix) > 1e-3 * apix:
        t = resample(t, tapix, apix, ndim=3)
    t = pad_or_crop(t, vol.shape[-1])
    truth_path = root / "truth_map.mrc"
    write_mrc(truth_path, t.numpy(), apix)
    out: dict[str, Any] = {
        "map": os.path.relpath(full, root), "half1": os.path.relpath(half1, root),
        "half2": os.path.relpath(half2, root), "truth_map": truth_path.name,
        "resolution_A": post.get("results", {}).get("resolution_corrected_A"),
        "bfactor_A2": post.get("results", {}).get("bfactor_A2"),
        "wall_s": round(wall_s, 1), "steps": step_records(wf)}
    if align:
        from cryolens.mapalign import AlignMapsParams, align_maps

        sym = refine.get("params", {}).get("sym") or refine.get("params", {}).get("symmetry") or "C1"
        a = align_maps(t, torch.as_tensor(np.array(vol, dtype=np.float32)), pixel_size=apix,
                       params=AlignMapsParams(symmetry=str(sym)))
        curve = fourier_shell_correlation(a.aligned, t, pixel_size=apix)
        out.update(truth_fsc05_A=round(float(curve.resolution_at(0.5)), 2), hand_flipped=bool(a.flipped))
    tmp = root / ".summary.json.tmp"
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(root / "summary.json")
    return out
