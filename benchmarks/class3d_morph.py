"""Benchmark: ``cryolens class3d`` on a continuous morph (the simulator's ``--morph``): do classes track it?

Simulates N particles (default 3 000) of a continuous morph between the 70S ribosome map of
``../shared/data/maps`` (4 Å/voxel) and the same map with a peripheral lobe of ``--lobe`` Å (default 60)
removed (:func:`cryolens.simulate.variants.remove_lobe`): each particle is ``(1 − t)·A + t·B`` with ``t``
uniform in [0, 1] (``rlnCryolensMorph``), box 64, 4 Å/px, SNR 0.05, CTF, true poses. The reference is
the middle of the morph (``truth_map.mrc``, t = 0.5, what a consensus refinement converges to) low-passed
to 30 Å. For each K of ``--classes`` (default 2 and 3), ``cryolens class3d`` runs under ``/usr/bin/time -v``
(``--mode skip``: ``--skip-align``; ``local``: local searches of 10° in 5° steps), with ``OMP_NUM_THREADS``
``--threads``. Reported per K, classes ordered by their mean t:

* class sizes, mean and standard deviation of the members' t;
* ``in_own_range``: the fraction of particles whose t lies in their class's part of the t range, the parts
  being the t quantiles in the classes' size proportions (a perfect split along t gives 1; classes
  drawn at random with the same sizes give ``chance`` = Σ (size / N)²);
* ``ideal_mean_t``: the members' mean t under that perfect split;
* ``map_best_t``: which morph state each class map fits best: the Pearson correlation, inside the particle's
  soft sphere and both low-passed to 20 Å, of the class map with the truth morph ``(1 − t)·A + t·B`` at t =
  0, 0.05, …, 1, its argmax (``map_correlation`` gives the curve's values at 0, 0.5, 1);
* wall and CPU time, iterations and why they stopped.

Writes ``benchmarks/results/class3d_morph.json`` (``--out``).

Measured (defaults, one thread, 2 shared cores): K 2 sizes 1 532 / 1 468, mean t 0.41 / 0.60 (a perfect
split: 0.26 / 0.76), 64 % in their own half (chance 50 %), class maps fitting t = 0.30 / 0.70; K 3 no
middle class (mean t 0.43 / 0.45 / 0.63, maps 0.35 / 0.35 / 0.80, 45 % in their own third, chance 33 %);
K 3 with ``--init-components 1``: mean t 0.40 / 0.50 / 0.61, maps 0.25 / 0.50 / 0.75.

    python benchmarks/class3d_morph.py [--n 3000] [--lobe 60] [--classes 2,3] [--iter 25] [--mode skip]
                                       [--threads 1] [--seed 1] [--init-components C] [--merge]
                                       [--keep DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from class3d import BIN, DIAMETER, HERE, MAP_APIX, RIBOSOME
from timing import timed

T_GRID = [round(0.05 * i, 2) for i in range(21)]


def make_morph(work: Path, args) -> tuple[Path, Path]:
    """The two end maps, ``args.n`` morph particles (seed ``args.seed``) and the reference;
    returns ``(particles.star, ref.mrc)``."""
    import numpy as np
    import torch
    from cryolens.core.fourier import bandpass
    from cryolens.io import read_mrc, write_mrc
    from cryolens.simulate.variants import remove_lobe
    vol, _ = read_mrc(RIBOSOME)
    a = torch.as_tensor(np.array(vol))
    write_mrc(work / "a.mrc", a.numpy(), MAP_APIX)
    write_mrc(work / "b.mrc", remove_lobe(a, pixel_size=MAP_APIX, diameter=args.lobe).numpy(), MAP_APIX)
    sim = work / "sim"
    timed([str(BIN / "cryolens"), "simulate", "particles", "--morph", str(work / "a.mrc"), str(work / "b.mrc"),
           "--n", str(args.n), "--box", "64", "--pixel-size", "4", "--snr", "0.05", "--seed", str(args.seed),
           "--out", str(sim), "--quiet", "--overwrite"], work)
    mid, apix = read_mrc(sim / "truth_map.mrc")
    write_mrc(work / "ref.mrc", bandpass(torch.as_tensor(np.array(mid)), pixel_size=apix, high_res=30.0,
                                         ndim=3).numpy(), apix)
    return sim / "particles.star", work / "ref.mrc"


def split_along_t(t, labels, k: int) -> dict:
    """Classes ordered by mean t; their sizes, t statistics, the fraction in their own t quantile range, chance."""
    import numpy as np
    means = [float(t[labels == j].mean()) if (labels == j).any() else np.inf for j in range(k)]
    order = list(np.argsort(means))
    sizes = np.array([int((labels == j).sum()) for j in order])
    edges = np.quantile(t, np.r_[0, np.cumsum(sizes)[:-1] / len(t), 1])
    edges[0], edges[-1] = -np.inf, np.inf
    ts = np.sort(t)
    bounds = np.r_[0, np.cumsum(sizes)]
    inside = sum(int(((t[labels == j] >= edges[i]) & (t[labels == j] < edges[i + 1])).sum())
                 for i, j in enumerate(order))
    return {"order": [int(j) + 1 for j in order], "sizes": sizes.tolist(),
            "mean_t": [round(means[j], 3) for j in order],
            "std_t": [round(float(t[labels == j].std()), 3) if (labels == j).any() else None for j in order],
            "ideal_mean_t": [round(float(ts[bounds[i]:bounds[i + 1]].mean()), 3) if sizes[i] else None
                             for i in range(k)],
            "in_own_range": round(inside / len(t), 4), "chance": round(float(((sizes / len(t)) ** 2).sum()), 4)}


def map_fits(out: Path, sim: Path, order: list[int]) -> tuple[list[float], list[list[float]]]:
    """Per class (in ``order``, 1-based): the morph t whose truth map the class map correlates with best."""
    import numpy as np
    import torch
    from cryolens.core.fourier import bandpass
    from cryolens.core.masks import soft_sphere
    from cryolens.io import read_mrc
    from cryolens.simulate.structures import morph_volume

    def low(path: Path) -> tuple[torch.Tensor, float]:
        v, apix = read_mrc(path)
        return bandpass(torch.as_tensor(np.array(v)).float(), pixel_size=apix, high_res=20.0, ndim=3), apix

    a, apix = low(sim / "truth_map_morph0.mrc")
    b, _ = low(sim / "truth_map_morph1.mrc")
    n = a.shape[-1]
    mask = soft_sphere(n, radius=min(DIAMETER / 2 / apix, n / 2 - 2), edge_width=3, ndim=3)

    def corr(x: torch.Tensor, y: torch.Tensor) -> float:
        w = mask / mask.sum()
        x, y = x - (x * w).sum(), y - (y * w).sum()
        return float((x * y * w).sum() / ((x * x * w).sum() * (y * y * w).sum()).sqrt())

    best, curves = [], []
    for j in order:
        c, _ = low(out / f"class{j:03d}.mrc")
        cc = [corr(c, morph_volume(a, b, t)) for t in T_GRID]
        best.append(T_GRID[int(np.argmax(cc))])
        curves.append([round(cc[0], 5), round(cc[len(T_GRID) // 2], 5), round(cc[-1], 5)])
    return best, curves


def run_name(k: int, args) -> str:
    """``K<k>``, or ``K<k>_init<c>`` with ``--init-components c``."""
    return f"K{k}" if args.init_components is None else f"K{k}_init{args.init_components}"


def run_k(star: Path, ref: Path, work: Path, k: int, args) -> dict:
    """One cryolens run with ``k`` classes and what its classes say about the morph."""
    import numpy as np
    from cryolens.io import read_particles
    out = work / ("cryolens_k" + run_name(k, args).lower()[1:])
    extra = ["--skip-align"] if args.mode == "skip" else ["--search", "local", "--local-range", "10",
                                                          "--angular-step", "5"]
    if args.init_components is not None:
        extra += ["--init-components", str(args.init_components)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TORCH_NUM_THREADS": str(args.threads)}
    load = round(os.getloadavg()[0], 2)
    r = timed([str(BIN / "cryolens"), "class3d", "--in", str(star), "--ref", str(ref), "--classes", str(k), "--iter",
               str(args.iter), "--ini-high", "30", "--particle-diameter", str(DIAMETER), *extra, "--out", str(out),
               "--quiet", "--overwrite"], work, env, log=out.with_suffix(".log"))
    r["load_1min_before"] = load
    results = json.loads((out / "job.json").read_text())["results"]
    r["iterations"], r["stopped"] = results["iterations"], results.get("stopped")
    _, got = read_particles(out / "particles.star")
    _, truth = read_particles(star)
    t = truth["rlnCryolensMorph"].to_numpy().astype(float)
    r.update(split_along_t(t, got["rlnClassNumber"].to_numpy().astype(int) - 1, k))
    r["map_best_t"], r["map_correlation_at_t_0_05_1"] = map_fits(out, star.parent, r["order"])
    print(json.dumps({f"K {k}": r}, indent=1), flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--lobe", type=float, default=60.0, help="diameter (Å) of the lobe that fades along the morph")
    ap.add_argument("--classes", default="2,3")
    ap.add_argument("--iter", type=int, default=25)
    ap.add_argument("--mode", choices=("skip", "local"), default="skip")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init-components", type=int, default=None,
                    help="cryolens --init-components (default its own, K-1); the runs are named K<k>_init<c>")
    ap.add_argument("--merge", action="store_true", help="keep the other runs already in --out (same settings)")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "class3d_morph.json")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="c3d_morph_"))
    work.mkdir(parents=True, exist_ok=True)
    star, ref = make_morph(work, args)
    result = {"n": args.n, "lobe_A": args.lobe, "seed": args.seed, "iterations": args.iter, "mode": args.mode,
              "threads": args.threads, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
              "t_grid": T_GRID, "runs": {}}
    if args.merge and args.out.is_file():
        old = json.loads(args.out.read_text())
        if all(old.get(key) == result[key] for key in ("n", "lobe_A", "seed", "iterations", "mode", "threads")):
            result["runs"] = old["runs"]
    for k in (int(v) for v in args.classes.split(",")):
        result["runs"][run_name(k, args)] = run_k(star, ref, work, k, args)
        result["load_average_at_end"] = os.getloadavg()[0]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
