"""Truth panels of job reports: a job's outputs scored against the simulator's ground truth.

Each panel reads the job's output files in its folder and the truth (:mod:`cryolens.jobs.truth`),
writes its PNG into the folder and returns a :class:`Panel` (rows of numbers, image names):

* ``pick``: precision and recall of ``coords.star`` against the true coordinates (a pick matches the
  nearest true particle on its micrograph within 0.2 particle diameters; each true
  particle counts once), and an overlay of picks and truth on the first micrograph;
* ``refine``: angular error (degrees) of each particle's pose after the best global rotation (the
  map's frame is arbitrary) and shift error (Å) after the best 3-D translation of the map;
* ``abinitio``: the truth map brought onto the ab-initio map through the particles' poses (global
  rotation and hand from true vs found poses, shift from the cross-correlation peak; no map search, so
  seconds) or, when the poses are far from the truth (:data:`POSE_ALIGN_MAX_DEG`), by
  :func:`cryolens.mapalign.align_maps` with coarse settings; FSC between them and the map's hand;
* ``reconstruct``: FSC of the map against the truth map without alignment (the poses given are the
  simulator's, or in its frame);
* any job that writes ``particles.star`` and ``rejected.star`` (class selection): keep/reject against
  the junk labels (``rlnCryolensJunk``);
* ``class3d``: confusion matrix of ``rlnClassNumber`` against the true class;
* ``class2d``: junk particles in each class (what the class selection should drop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryolens.io import read_mrc, read_star
from cryolens.jobs.report import new_figure, plot_fsc, save_figure
from cryolens.jobs.truth import Truth, find_truth, match_particles, micrograph_key, nearest_rows, particle_table

__all__ = ["Panel", "truth_panels", "pose_errors", "frame_fit", "align_truth_by_poses", "PANELS"]


@dataclass
class Panel:
    """One block of a report: a title, rows of numbers (or a table as HTML-ready rows) and PNG names."""

    title: str
    rows: dict[str, Any] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    table: list[list[Any]] | None = None  # first row: header


def _pick_panel(folder: Path, params: Mapping[str, Any], truth: Truth) -> Panel | None:
    coords = folder / "coords.star"
    if not coords.is_file() or truth.by_image_name:
        return None
    picks = particle_table(coords)
    true = particle_table(truth.particles).reset_index(drop=True)
    apix = 1.0
    if (folder / "picks_all.star").is_file():
        mics = read_star(folder / "picks_all.star").get("micrographs")
        if mics is not None and "rlnMicrographPixelSize" in mics.columns and len(mics):
            apix = float(mics["rlnMicrographPixelSize"].iloc[0])
            names = set(micrograph_key(mics["rlnMicrographName"]))
            true = true[micrograph_key(true["rlnMicrographName"]).isin(names)].reset_index(drop=True)
    diameter = params.get("diameter") or 0
    radius = max(2.0, 0.2 * float(diameter) / apix) if diameter else 10.0
    rows = nearest_rows(picks, true, radius_px=radius) if len(picks) else np.array([])
    tp = len(np.unique(rows[~np.isnan(rows)]))
    precision = tp / len(picks) if len(picks) else float("nan")
    recall = tp / len(true) if len(true) else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    images = ["truth_picks.png"] if _pick_overlay(folder, picks, true, radius, folder / "truth_picks.png") else []
    return Panel("Picking against the truth", {
        "true particles": len(true), "picks": len(picks), "true positives": tp,
        "precision": round(precision, 4), "recall": round(recall, 4), "F1": round(f1, 4),
        "match radius (px)": round(radius, 1)}, images)


def _pick_overlay(folder: Path, picks: pd.DataFrame, true: pd.DataFrame, radius: float, path: Path) -> bool:
    if not len(true):
        return False
    stem = micrograph_key(true["rlnMicrographName"]).iloc[0]
    t = true[micrograph_key(true["rlnMicrographName"]) == stem]
    p = picks[micrograph_key(picks["rlnMicrographName"]) == stem] if len(picks) else picks
    fig, ax = new_figure(figsize=(6, 6))
    image = None
    for base in (Path.cwd(), folder.parent.parent, folder.parent.parent.parent):
        f = base / str(t["rlnMicrographName"].iloc[0])
        if f.is_file():
            try:
                image = read_mrc(f)[0]
            except Exception:  # noqa: BLE001 - the overlay is drawn without the image
                image = None
            break
    if image is not None:
        img = np.asarray(image, dtype=np.float32)
        img = img[0] if img.ndim == 3 else img
        step = max(1, int(math.ceil(max(img.shape) / 1024)))
        ax.imshow(img[::step, ::step], cmap="gray", origin="lower",
                  extent=(0, img.shape[1], 0, img.shape[0]))
    ax.scatter(t["rlnCoordinateX"], t["rlnCoordinateY"], marker="+", s=40, c="tab:green", label="truth")
    if len(p):
        ax.scatter(p["rlnCoordinateX"], p["rlnCoordinateY"], s=(2 * radius) ** 2 / 4, facecolors="none",
                   edgecolors="tab:orange", label="picks")
    ax.set_title(f"{stem}: picks (circles) and truth (+)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_aspect("equal")
    save_figure(fig, path)
    return True


def _matrices(df: pd.DataFrame) -> torch.Tensor:
    from cryolens.core.rotations import euler_to_matrix
    return euler_to_matrix(*[torch.tensor(df[c].to_numpy(np.float64)) for c in
                             ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")])


def _project_so3(m: torch.Tensor) -> torch.Tensor:
    u, _, vt = torch.linalg.svd(m)
    d = torch.sign(torch.det(u @ vt))
    return u @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ vt


def frame_fit(r_est: torch.Tensor, r_true: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, str]:
    """The global rotation between two sets of poses ``(n, 3, 3)``: ``(angular errors in degrees, G, side)``
    with ``R_est ≈ G·R_true`` (side ``left``) or ``R_est ≈ R_true·G`` (side ``right``: the estimated map is
    the true one rotated, ``est(x) = true(G·x)``), whichever fits better (median error)."""
    from cryolens.core.rotations import geodesic_distance
    g_left = _project_so3((r_est @ r_true.transpose(-1, -2)).mean(0))
    g_right = _project_so3((r_true.transpose(-1, -2) @ r_est).mean(0))
    left = geodesic_distance(r_est, g_left @ r_true).numpy()
    right = geodesic_distance(r_est, r_true @ g_right).numpy()
    return (left, g_left, "left") if np.median(left) < np.median(right) else (right, g_right, "right")


def pose_errors(est: pd.DataFrame, true: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle angular error (degrees) and shift error (Å) of estimated poses against true ones.

    ``est`` and ``true`` have rlnAngleRot/Tilt/Psi (degrees) and rlnOriginX/YAngst (Å), row for row.
    The estimated frame may differ from the truth's by a global rotation (:func:`frame_fit`) and a
    3-D translation of the map (least squares on the shift differences).
    """
    r_est = _matrices(est)
    angles, _, _ = frame_fit(r_est, _matrices(true))
    cols = ["rlnOriginXAngst", "rlnOriginYAngst"]
    if not set(cols) <= set(est.columns) or not set(cols) <= set(true.columns):
        return angles, np.full(len(est), np.nan)
    d = est[cols].to_numpy(float) - true[cols].to_numpy(float)
    best = None
    for a in (r_est.numpy()[:, :2, :], r_est.transpose(-1, -2).numpy()[:, :2, :]):
        t, *_ = np.linalg.lstsq(a.reshape(-1, 3), d.reshape(-1), rcond=None)
        res = np.linalg.norm(d - a @ t, axis=1)
        if best is None or np.median(res) < np.median(best):
            best = res
    return angles, best


def _matched_poses(folder: Path, truth: Truth) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The job's particles (not junk, with a true pose) and their true rows, or None when fewer than 3."""
    star = folder / "particles.star"
    if not star.is_file():
        return None
    table = particle_table(star)
    matched = match_particles(table, truth, radius_px=15.0)
    if "true_rlnAngleRot" not in matched or "rlnAngleRot" not in table:
        return None
    ok = matched["true_rlnAngleRot"].notna().to_numpy().copy()
    if "true_rlnCryolensJunk" in matched:
        ok &= matched["true_rlnCryolensJunk"].fillna(1).to_numpy() == 0
    if ok.sum() < 3:
        return None
    true = matched[ok].rename(columns=lambda c: c.removeprefix("true_"))
    for c in ("rlnOriginXAngst", "rlnOriginYAngst"):
        if c not in true.columns:
            true[c] = 0.0
    return table[ok], true


def _refine_panel(folder: Path, params: Mapping[str, Any], truth: Truth) -> Panel | None:
    pair = _matched_poses(folder, truth)
    if pair is None:
        return None
    est, true = pair
    angles, shifts = pose_errors(est, true)
    fig, axes = new_figure(ncols=2, figsize=(9, 3.4))
    axes[0].hist(angles, bins=40, color="tab:blue")
    axes[0].set_xlabel("angular error (°)")
    axes[1].hist(shifts[np.isfinite(shifts)], bins=40, color="tab:orange")
    axes[1].set_xlabel("shift error (Å)")
    for ax in axes:
        ax.set_ylabel("particles")
    save_figure(fig, folder / "truth_poses.png")
    return Panel("Poses against the truth", {
        "particles matched (not junk)": len(est),
        "angular error median (°)": round(float(np.median(angles)), 3),
        "angular error 90th percentile (°)": round(float(np.percentile(angles, 90)), 3),
        "within 5° (%)": round(100 * float(np.mean(angles <= 5)), 1),
        "shift error median (Å)": round(float(np.nanmedian(shifts)), 3),
        "shift error 90th percentile (Å)": round(float(np.nanpercentile(shifts, 90)), 3)}, ["truth_poses.png"])


#: Above this median pose error (degrees, in the better hand) the truth map is aligned by a map search
#: (:func:`cryolens.mapalign.align_maps`, coarse settings) instead of through the poses.
POSE_ALIGN_MAX_DEG = 20.0


def _best_shift(fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``moving`` rolled by the whole-voxel shift of highest cross-correlation with ``fixed``, and the
    correlation coefficient of the two then."""
    c = torch.fft.irfftn(torch.fft.rfftn(fixed) * torch.fft.rfftn(moving).conj(), s=fixed.shape)
    idx = np.unravel_index(int(torch.argmax(c)), tuple(c.shape))
    moved = torch.roll(moving, shifts=tuple(int(i) for i in idx), dims=(0, 1, 2))
    a, b = fixed - fixed.mean(), moved - moved.mean()
    return moved, float((a * b).sum() / ((a.norm() * b.norm()) + 1e-30))


def align_truth_by_poses(vol: torch.Tensor, ref: torch.Tensor, est: pd.DataFrame,
                         true: pd.DataFrame) -> tuple[torch.Tensor, dict[str, Any]]:
    """The truth map ``ref`` brought onto the map ``vol`` (both ``(n, n, n)``) with the frame and hand found
    from the particles' poses: ``est`` (the job's poses) against ``true`` (row for row).

    The poses give the global rotation in each hand (:func:`frame_fit`; a map mirrored along z has poses
    ``F·R·F``, ``F = diag(1, 1, -1)``); the truth is rotated (``G`` or ``Gᵀ``), mirrored for the other hand,
    shifted by the whole-voxel peak of the cross-correlation, and the candidate that correlates best wins.
    Returns the aligned truth and ``{"flipped", "correlation", "pose error median (given hand)",
    "pose error median (mirrored)"}`` (degrees). No map search: a few transforms, seconds at most.
    """
    from cryolens.mapalign import flip_hand, transform_volume
    r_est, r_true = _matrices(est), _matrices(true)
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    fits = {False: frame_fit(r_est, r_true), True: frame_fit(mirror @ r_est @ mirror, r_true)}
    n = vol.shape[-1]
    zero = torch.zeros(3)
    best: tuple[float, torch.Tensor, bool] | None = None
    for flipped, (_, g, _) in fits.items():
        for rot in (g, g.T):
            cand = transform_volume(ref, rot.float(), zero, oversample=2 if n <= 96 else 1)
            cand, corr = _best_shift(vol, flip_hand(cand) if flipped else cand)
            if best is None or corr > best[0]:
                best = (corr, cand, flipped)
    corr, aligned, flipped = best
    return aligned, {"flipped": flipped, "correlation": round(corr, 4),
                     "pose error median (given hand)": round(float(np.median(fits[False][0])), 2),
                     "pose error median (mirrored)": round(float(np.median(fits[True][0])), 2)}


def _map_fsc_panel(folder: Path, truth: Truth, *, align: bool, symmetry: str = "C1") -> Panel | None:
    """FSC of ``map.mrc`` against the truth map, as it is or aligned through the poses (:func:`align_truth_by_poses`),
    else by a map search within the maps' ``symmetry`` (its asymmetric unit of rotations only)."""
    from cryolens.core.fsc import fsc
    from cryolens.jobs.fsc_maps import load_cubic_map
    from cryolens.jobs.particles import read_reference
    if truth.map is None or not (folder / "map.mrc").is_file():
        return None
    vol, apix = load_cubic_map(folder / "map.mrc")
    n = vol.shape[-1]
    ref = read_reference(truth.map, box=n, pixel_size=apix, what="truth map")
    rows: dict[str, Any] = {}
    if align:
        pair = _matched_poses(folder, truth)
        if pair is None:
            return None
        est, true = pair
        if "rlnClassNumber" in est.columns and est["rlnClassNumber"].nunique() > 1:  # map.mrc: the largest class
            keep = (est["rlnClassNumber"] == est["rlnClassNumber"].mode().iloc[0]).to_numpy()
            est, true = est[keep], true[keep]
        aligned, info = align_truth_by_poses(vol, ref, est, true)
        how = "through the poses"
        if min(info["pose error median (given hand)"], info["pose error median (mirrored)"]) > POSE_ALIGN_MAX_DEG:
            from cryolens.mapalign import AlignMapsParams, align_maps
            symmetric = symmetry.strip().upper() != "C1"  # a smaller rotation set: a finer grid at the same cost
            res = align_maps(vol, ref, pixel_size=apix, params=AlignMapsParams(
                symmetry=symmetry, healpix_order=2 if symmetric else 1, top_k=1, coarse_box=min(16, n),
                refine_box=max(16, min(32, n))))
            aligned, how = res.aligned, "map search (poses too far from the truth)"
            info.update(flipped=res.flipped, correlation=round(res.correlation, 4))
        ref = aligned
        rows["hand"] = "mirrored: flip the map's hand" if info.pop("flipped") else "correct"
        rows["aligned by"] = how
        rows.update({k if k != "correlation" else "correlation after alignment": v for k, v in info.items()})
    curve = fsc(vol, ref, pixel_size=apix)
    rows = {"FSC 0.5 against the truth (Å)": round(curve.resolution_at(0.5), 2),
            "FSC 0.143 against the truth (Å)": round(curve.resolution_at(0.143), 2), **rows}
    label = "map vs truth (aligned)" if align else "map vs truth"
    plot_fsc({label: curve}, folder / "truth_fsc.png", title="FSC against the truth map")
    return Panel("Map against the truth", rows, ["truth_fsc.png"])


def _junk_panel(folder: Path, truth: Truth) -> Panel | None:
    kept, rejected = folder / "particles.star", folder / "rejected.star"
    if not kept.is_file() or not rejected.is_file():
        return None
    counts = {}
    for name, path in (("kept", kept), ("rejected", rejected)):
        table = particle_table(path)
        if not len(table):
            counts[name] = np.zeros(0)
            continue
        m = match_particles(table, truth, radius_px=15.0)
        if "true_rlnCryolensJunk" not in m:
            return None
        counts[name] = m["true_rlnCryolensJunk"].to_numpy(float)
    k, r = counts["kept"], counts["rejected"]
    kg, kj, rg, rj = (int(np.sum(k == 0)), int(np.sum(k == 1)), int(np.sum(r == 0)), int(np.sum(r == 1)))
    rows = {"good kept (% of good)": f"{kg} ({100 * kg / max(kg + rg, 1):.1f} %)",
            "junk rejected (% of junk)": f"{rj} ({100 * rj / max(kj + rj, 1):.1f} %)",
            "junk among kept (%)": round(100 * kj / max(kg + kj, 1), 2)}
    table = [["truth \\ selection", "kept", "rejected"], ["good", kg, rg], ["junk", kj, rj]]
    return Panel("Keep/reject against the junk labels", rows, [], table)


def _class3d_panel(folder: Path, truth: Truth) -> Panel | None:
    star = folder / "particles.star"
    if not star.is_file():
        return None
    table = particle_table(star)
    m = match_particles(table, truth, radius_px=15.0)
    if "rlnClassNumber" not in table or "true_rlnClassNumber" not in m or m["true_rlnClassNumber"].nunique() < 2:
        return None
    ok = m["true_rlnClassNumber"].notna()
    ct = pd.crosstab(m.loc[ok, "true_rlnClassNumber"].astype(int), table.loc[ok, "rlnClassNumber"].astype(int))
    rows = [["true \\ found", *[f"class {c}" for c in ct.columns]]]
    rows += [[f"class {i}", *[int(v) for v in ct.loc[i]]] for i in ct.index]
    purity = float(ct.max(axis=0).sum() / max(ct.to_numpy().sum(), 1))
    return Panel("3D classes against the true classes", {"purity (%)": round(100 * purity, 1)}, [], rows)


def _class_junk_panel(folder: Path, truth: Truth) -> Panel | None:
    """Junk (``rlnCryolensJunk``) in each class of ``particles.star``: what a class selection should drop."""
    star = folder / "particles.star"
    if not star.is_file():
        return None
    table = particle_table(star)
    m = match_particles(table, truth, radius_px=15.0)
    if "rlnClassNumber" not in table or "true_rlnCryolensJunk" not in m:
        return None
    junk = m["true_rlnCryolensJunk"]
    ok = junk.notna()
    by = pd.DataFrame({"c": table.loc[ok, "rlnClassNumber"].astype(int), "j": junk[ok].astype(int)}).groupby("c")["j"]
    rows = [["class", "particles", "junk", "junk %"]]
    rows += [[int(c), int(n), int(j), f"{100 * j / max(n, 1):.0f}"] for c, n, j in zip(by.size().index, by.size(),
                                                                                       by.sum())]
    pure = int(sum(1 for r in rows[1:] if r[2] <= 0.1 * r[1]))
    return Panel("Junk per class against the truth", {"junk particles": int(junk[ok].sum()),
                                                       "classes with at most 10 % junk": pure}, [], rows)


PANELS: dict[str, Callable[[Path, Mapping[str, Any], Truth], Panel | None]] = {
    "pick": _pick_panel,
    "refine": _refine_panel,
    "abinitio": lambda f, p, t: _map_fsc_panel(f, t, align=True, symmetry=p.get("symmetry") or "C1"),
    "reconstruct": lambda f, p, t: _map_fsc_panel(f, t, align=False),
    "class3d": lambda f, p, t: _class3d_panel(f, t),
    "class2d": lambda f, p, t: _class_junk_panel(f, t),
}
"""Truth panel of each stage (the junk panel applies to every stage with particles + rejected STAR files)."""


def truth_panels(folder: str | Path, stage: str, params: Mapping[str, Any]) -> list[Panel]:
    """The truth panels of a job in ``folder`` (empty when the data were not simulated); a panel that fails
    becomes a one-row panel giving the reason."""
    folder = Path(folder)
    truth = None if stage.startswith("simulate") else find_truth(folder)
    if truth is None:
        return []
    out = []
    fn = PANELS.get(stage)
    for make in ((lambda: fn(folder, params, truth)) if fn is not None else None, lambda: _junk_panel(folder, truth)):
        if make is None:
            continue
        try:
            out.append(make())
        except Exception as e:  # noqa: BLE001 - one panel failing must not take the others (or the verdict) along
            out.append(Panel("Truth panel not drawn", {"reason": f"{type(e).__name__}: {e}"}))
    return [p for p in out if p is not None]
