"""Benchmark: how many pixels (or templates) exact bounds would let the template picker skip (issue 14).

The template picker's score at a pixel is ``max_k a_k·c / D``: ``c`` the pixel's ``q`` basis correlations
(:class:`cryolens.picking.bank.BankScores`), ``a_k`` the unit-norm filtered templates, ``D`` the NCC's image term.
With ``G = L·Lᵀ`` the Gram matrix of the filtered basis (:func:`cryolens.picking.bank.filtered_gram`), ``a' = Lᵀa``
are unit vectors and ``c' = L⁻¹c``, so by Cauchy–Schwarz

* whole span: ``max_k a_k·c <= ‖c'‖`` (one ``q × q`` triangular solve per pixel);
* partial rank: in the principal axes of the ``a'`` (by energy), the first ``r1`` terms exactly plus
  ``‖a'_tail‖·‖c'_tail‖`` for the rest (``r1/q`` of the products);
* template groups (branch and bound): k-means groups of the ``a'``, each bounded by its centroid's score plus its
  radius times ``‖c'‖``; the fraction of templates whose group's bound reaches the pixel's true maximum (an oracle
  lower bound: the least any branch and bound over those groups must evaluate).

For the first micrograph of each case of ``benchmarks/picking.py`` (seed 500, 1024², one thread) it reports, on
the coarse grid's pixels and on those scored in full around high coarse scores, the fraction whose bound lies below
the score levels (SDs of the background: the candidates' floor 1.0, the refinement floor 1.5, the pick threshold
3.25) — pixels that could be skipped there — next to the fraction that truly is. Writes
``benchmarks/results/picking_bounds.json``::

    .venv/bin/python benchmarks/picking_bounds.py [--seed 500] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from picking import CASES, simulate_case  # noqa: E402

LEVELS = (1.0, 1.5, 3.25)


def captured(case: dict) -> dict:
    """Pick the first micrograph with templates, keeping the scores object, the pixels scored (coarse, fine) and
    the filtered basis' Gram matrix (wrapped module functions: the picker does not return them)."""
    import cryolens.picking.bank as bank
    from cryolens.core.ctf import CTFParams
    from cryolens.io import read_mrc
    from cryolens.picking import PickParams, pick_micrograph

    got: dict = {}
    gram, best = bank.filtered_gram, bank.BankScores.best

    def keep_gram(*a, **k):
        got["gram"] = gram(*a, **k)
        return got["gram"]

    def keep_best(self, pix=None, **k):
        got["scores"] = self
        got.setdefault("pix", []).append(pix)
        return best(self, pix, **k)

    m = case["mics"][0]
    c = m["ctf"]
    ctf = CTFParams(defocus_u=c["defocus_u"], defocus_v=c["defocus_v"], defocus_angle=c["defocus_angle"],
                    voltage=c["voltage"], cs=c["cs"], amplitude_contrast=c["amplitude_contrast"])
    data, _ = read_mrc(m["path"])
    params = PickParams(diameter=case["diameter"], method="template")
    image = torch.from_numpy(np.array(data, dtype=np.float32))
    pick_micrograph(image, pixel_size=case["apix"], params=params, ctf=ctf, volume=case["volume"],
                    volume_pixel_size=case["apix"])  # builds the bank
    bank.filtered_gram, bank.BankScores.best = keep_gram, keep_best
    try:
        got["pix"] = []
        pick_micrograph(image, pixel_size=case["apix"], params=params, ctf=ctf, volume=case["volume"],
                        volume_pixel_size=case["apix"])
    finally:
        bank.filtered_gram, bank.BankScores.best = gram, best
    return got


def kmeans_labels(x: torch.Tensor, groups: int, iterations: int = 20) -> torch.Tensor:
    """Spherical k-means labels of the unit rows of ``x``."""
    g = torch.Generator().manual_seed(0)
    centres = x[torch.randperm(x.shape[0], generator=g)[:groups]].clone()
    for _ in range(iterations):
        label = (x @ centres.T).argmax(1)
        for j in range(groups):
            if bool((label == j).any()):
                centres[j] = x[label == j].mean(0)
    return (x @ centres.T).argmax(1)


def bounds(got: dict) -> dict:
    from cryolens.picking.peaks import mode_stats

    s = got["scores"]
    q = s.rank
    if s.split is None:
        w = s.weights[:q].double()  # (q, K)
    else:  # reflection pairs: the pairs' first templates, then their reflections (odd coefficients negated)
        e = s.split
        first = torch.cat([s.weights[:e], s.odd_weights[:q - e]]).double()
        w = torch.cat([first, first * torch.cat([torch.ones(e), -torch.ones(q - e)]).double()[:, None]], dim=1)
    chol = torch.linalg.cholesky(got["gram"].double())
    a = chol.T @ w  # unit columns
    u, _, _ = torch.linalg.svd(a, full_matrices=False)
    a_rot = u.T @ a  # principal axes, by energy
    coarse = None
    out = dict(templates=int(w.shape[1]), rank=q)
    for label, pix in zip(("coarse", "fine"), got["pix"][:2]):
        rows = s.rows(pix)
        if s.split is not None:  # the padded even and odd parts, back to the basis' order
            rows = torch.cat([rows[:, :s.split], rows[:, s.weights.shape[0]:s.weights.shape[0] + q - s.split]], dim=1)
        c = torch.linalg.solve_triangular(chol, rows[:, :q].double().T, upper=False).T  # c'
        den = s.denom.reshape(-1)[pix].double()
        ncc = (c @ a).amax(1) / den
        if coarse is None:
            coarse = mode_stats(ncc.float())  # the background of the coarse scores, as coarse_fine_best
        centre, sd = coarse
        span = c.norm(dim=1) / den
        c_rot = c @ u
        row = dict(pixels=int(pix.numel()), ncc_median=round(float(ncc.median()), 3),
                   whole_span_bound_median=round(float(span.median()), 3))
        for frac in (0.25, 0.5):
            r1 = int(q * frac)
            part = (c_rot[:, :r1] @ a_rot[:r1] + c_rot[:, r1:].norm(dim=1)[:, None] * a_rot[r1:].norm(dim=0)[None])
            row[f"partial_rank_{frac}"] = dict(rank=r1, bound=part.amax(1) / den)
        for z in LEVELS:
            level = centre + z * sd
            key = f"below_{z:g}_sd"
            row[key] = dict(true=round(float((ncc < level).double().mean()), 3),
                            whole_span=round(float((span < level).double().mean()), 3),
                            **{f"partial_rank_{f}": round(float((row[f"partial_rank_{f}"]["bound"] < level)
                                                                .double().mean()), 3) for f in (0.25, 0.5)})
        for f in (0.25, 0.5):
            row[f"partial_rank_{f}"] = dict(rank=row[f"partial_rank_{f}"]["rank"], slack_median=round(float(
                (row[f"partial_rank_{f}"]["bound"] - ncc).median()), 3))
        if label == "coarse":  # branch and bound over template groups, with the true maximum known (oracle)
            best = (c @ a).amax(1)
            norm = c.norm(dim=1)
            for groups in (16, 64, 256):
                lab = kmeans_labels(a.T.float().contiguous(), groups)
                evaluated = 0.0
                for j in range(groups):
                    idx = torch.nonzero(lab == j)[:, 0]
                    if idx.numel():
                        mu = a[:, idx].mean(1)
                        radius = (a[:, idx] - mu[:, None]).norm(dim=0).max()
                        evaluated += float(((c @ mu + radius * norm) >= best).double().sum()) * idx.numel()
                row[f"groups_{groups}_templates_evaluated"] = round(evaluated / best.numel() / a.shape[1], 3)
        out[label] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=500)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = dict(seed=args.seed, size=args.size, levels_sd=list(LEVELS), cases={})
    with tempfile.TemporaryDirectory(prefix="cryolens-pick-bounds-") as tmp:
        for name, (shape, apix) in CASES.items():
            case = simulate_case(shape, apix, 1, args.size, args.seed, Path(tmp) / name)
            results["cases"][name] = bounds(captured(case))
            print(name, json.dumps(results["cases"][name]), flush=True)
    out = HERE / "results" / "picking_bounds.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
