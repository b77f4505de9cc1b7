"""One verdict line per job report: what the job found and what a user would do next.

:data:`VERDICTS` maps a stage name (``Job.stage``) to a function of the job's ``results``
(as in ``job.json``) and ``params`` that returns one sentence; :func:`verdict` falls back to
a plain "finished" line for stages without one. A verdict starts with ``Check:`` when the
numbers call for a look before going on (no picks, most movies rejected, a poor fit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["VERDICTS", "verdict", "needs_check"]

Results = Mapping[str, Any]


def _n(r: Results, key: str, default: Any = "?") -> Any:
    v = r.get(key, default)
    return default if v is None else v


def _simulate(what: str, key: str) -> Callable[[Results, Results], str]:
    return lambda r, p: (f"Simulated {_n(r, key)} {what} with ground truth recorded (truth panels follow in "
                         "the reports of later jobs); next: process them as real data.")


def _motion(r: Results, p: Results) -> str:
    n, rej = _n(r, "n_movies", 0), _n(r, "n_rejected", 0)
    head = "Check: " if n and rej > n / 2 else ""
    return (f"{head}{n - rej} of {n} movies corrected ({rej} rejected), mean total motion "
            f"{_n(r, 'mean_total_motion_A')} Å; next: CTF estimation.")


def _ctf(r: Results, p: Results) -> str:
    fit = r.get("fit_resolution_A") or {}
    med = fit.get("median") if isinstance(fit, Mapping) else None
    warn = _n(r, "n_warnings", 0)
    head = "Check: " if (med is not None and med > 10) or warn else ""
    return (f"{head}{_n(r, 'n_micrographs')} micrographs fitted, median defocus {_n(r, 'median_defocus_A')} Å, "
            f"median fit resolution {med if med is not None else '?'} Å, {warn} warnings; next: pick particles.")


def _pick(r: Results, p: Results) -> str:
    n = _n(r, "n_picks", 0)
    empty = _n(r, "n_micrographs_without_picks", 0)
    head = "Check: " if not n else ""
    return (f"{head}{n} picks in {_n(r, 'n_micrographs')} micrographs (mean {_n(r, 'picks_per_micrograph_mean')} "
            f"per micrograph, {empty} without picks); next: extract them.")


def _extract(r: Results, p: Results) -> str:
    head = "Check: " if not _n(r, "n_particles", 0) else ""
    return (f"{head}{_n(r, 'n_particles')} particles of {_n(r, 'image_size')} px at {_n(r, 'pixel_size_A')} Å/px "
            f"from {_n(r, 'n_micrographs')} micrographs ({_n(r, 'n_skipped', 0)} skipped at edges); "
            "next: 2D classification.")


def _class2d(r: Results, p: Results) -> str:
    empty = r.get("empty_class_particles")
    head = "Check: " if r.get("warnings") else ""
    return (f"{head}{_n(r, 'n_particles')} particles in {_n(r, 'populated_classes')} populated of {_n(r, 'classes')} "
            f"classes{'' if empty is None else f' ({empty} in the empty class)'}, best class at "
            f"{_n(r, 'best_class_resolution_A')} Å; next: select the good classes.")


def _select_classes(r: Results, p: Results) -> str:
    n_in, kept = _n(r, "n_in", 0), _n(r, "n_kept", 0)
    head = "Check: " if not kept or r.get("warnings") else ""
    classes = r.get("kept_classes") or []
    return (f"{head}kept {kept} of {n_in} particles in {len(classes)} of {_n(r, 'n_classes')} classes; "
            "next: ab initio 3D or refinement.")


def _select(r: Results, p: Results) -> str:
    return f"Kept {_n(r, 'n_kept')} of {_n(r, 'n_in')} rows ({_n(r, 'n_rejected')} rejected)."


def _abinitio(r: Results, p: Results) -> str:
    sizes = r.get("class_sizes") or []
    best = _n(r, "best_class", 1)
    n = sizes[best - 1] if isinstance(best, int) and 0 < best <= len(sizes) else _n(r, "n_particles")
    return (f"Initial model from class {best} ({n} particles), half-map FSC 0.143 at {_n(r, 'resolution_0143_A')} Å; "
            "next: refine with map.mrc as the reference.")


def _reconstruct(r: Results, p: Results) -> str:
    n = _n(r, "n_particles_half1", 0) + _n(r, "n_particles_half2", 0)
    return (f"Half-map FSC 0.143 at {_n(r, 'resolution_0143_A')} Å from {n} particles; "
            "next: postprocess (mask, sharpen).")


def _refine(r: Results, p: Results) -> str:
    conv = r.get("converged")
    tail = "next: postprocess (mask, sharpen)." if conv else "not converged: continue it (--continue) or look closer."
    head = "" if conv else "Check: "
    return (f"{head}gold-standard FSC 0.143 at {_n(r, 'resolution_0143_A')} Å after {_n(r, 'iterations')} "
            f"iterations; {tail}")


def _postprocess(r: Results, p: Results) -> str:
    return (f"Final resolution {_n(r, 'resolution_corrected_A')} Å (corrected FSC 0.143), B-factor "
            f"{_n(r, 'bfactor_A2')} Å²; map_sharp.mrc is the map to look at and deposit.")


def _align(r: Results, p: Results) -> str:
    hand = "mirrored hand" if r.get("flipped") else "same hand"
    return f"Maps agree to FSC 0.5 at {_n(r, 'resolution_05_A')} Å after alignment ({hand})."


def _imported(what: str, key: str, nxt: str) -> Callable[[Results, Results], str]:
    return lambda r, p: f"{_n(r, key)} {what} imported; next: {nxt}."


VERDICTS: dict[str, Callable[[Results, Results], str]] = {
    "simulate_particles": _simulate("particles", "n_particles"),
    "simulate_micrographs": _simulate("micrographs", "n_micrographs"),
    "simulate_movies": _simulate("movies", "n_movies"),
    "import_movies": _imported("movies", "n_movies", "motion correction"),
    "import_micrographs": _imported("micrographs", "n_micrographs", "CTF estimation"),
    "import_particles": _imported("particles", "n_particles", "2D classification"),
    "import_coords": _imported("picks", "n_picks", "extract them"),
    "import_map": lambda r, p: "Map imported; next: use it as a reference or compare maps.",
    "motion": _motion,
    "ctf": _ctf,
    "pick": _pick,
    "extract": _extract,
    "class2d": _class2d,
    "select_classes": _select_classes,
    "select": _select,
    "abinitio": _abinitio,
    "reconstruct": _reconstruct,
    "refine": _refine,
    "postprocess": _postprocess,
    "align-maps": _align,
}
"""Verdict of each stage, keyed by ``Job.stage``; a stage module may add its own entry."""


def verdict(stage: str, results: Results, params: Results | None = None) -> str:
    """The verdict line of a finished job (one sentence; see the module docstring)."""
    fn = VERDICTS.get(stage)
    if fn is None:
        return f"{stage} finished."
    try:
        text = fn(results, params or {})
    except (TypeError, ValueError, KeyError, IndexError):  # odd results: the line must not break a report
        return f"{stage} finished."
    return text[:1].upper() + text[1:]


def needs_check(text: str) -> bool:
    """True for a verdict that asks the user to look before going on."""
    return text.startswith("Check:")
