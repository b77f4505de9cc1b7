"""Benchmark: refine's expectation step on 1 and 2 Dask workers, and a model of time per iteration.

Simulates N particles (default 10 000) of an asymmetric phantom at box 96 (2.5 Å/px, SNR 0.1,
CTF), writes them to a ``.npy`` stack that the workers memory-map (as they would read a stack on a
shared file system), and refines them from the truth low-passed to 30 Å for two iterations (a
global one on the HEALPix order-0 grid, then a local one) three ways: in this process (the
default, no backend), and through a Dask LocalCluster of 1 and of 2 single-threaded worker
processes, each at N/2 and N particles. Per run and iteration it records the wall time, the
expectation map's wall time, the workers' own compute time, the overhead (map wall time minus
compute time / workers) and the bytes shipped (references once per worker, chunk rows, sums back).

The model ``time/iter = a + b·particles/workers + c·bytes`` is fitted to the distributed local
iterations (the kind that dominates a refinement; :func:`fit`) and used to predict:

* EMPIAR-10291 scale (27 000 particles, box 180): ``b`` scaled by (180/96)² (per-particle work
  ∝ pixels), ``a`` and the bytes by (180/96)³ (the driver's maximisation and the shipped
  references and sums are volumes);
* 1 000 000 particles at box 180 on N GPU workers, assuming one GPU does a CPU core's
  per-particle work ``--gpu-speedup`` times faster (default 50) and a network that moves
  ``--network-gbps`` (default 10) instead of this machine's loopback.

The machine may be shared (other jobs running): the JSON says so, with the load average.
Writes ``benchmarks/results/scaling.json``.

    python benchmarks/scaling.py [--n 10000] [--box 96] [--workers 1 2] [--iterations 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class NpyReader:
    """Picklable ``reader(rows) -> float32 images`` over a memory-mapped ``.npy`` stack."""

    path: str

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.load(self.path, mmap_mode="r")[np.asarray(rows)], dtype=np.float32)


def simulate(n: int, box: int, apix: float, folder: Path):
    import torch

    from cryolens.io import merge_optics
    from cryolens.particles import assign_half_sets
    from cryolens.simulate.particles import ParticleSimParams, simulate_particles
    from cryolens.simulate.phantom import asymmetric_phantom

    vol = asymmetric_phantom(box, apix)
    sim = simulate_particles(vol, pixel_size=apix, params=ParticleSimParams(
        n_particles=n, snr=0.1, max_shift=3.0, defocus_min=8000, defocus_max=20000, seed=1))
    stack = folder / "stack.npy"
    images = np.lib.format.open_memmap(stack, mode="w+", dtype=np.float32, shape=(n, box, box))
    for start, b in sim.batches:  # (first row, images)
        images[start:start + len(b)] = b
    images.flush()
    table = assign_half_sets(merge_optics(sim.optics, sim.particles), seed=0)
    table = table.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"])
    return vol, table, NpyReader(str(stack)), torch


def refine_once(vol, table, reader: NpyReader, apix: float, iterations: int, workers: int | None):
    from cryolens.compute.backends import Dask
    from cryolens.compute.estep import Distributor
    from cryolens.refine import RefineParams, auto_refine

    params = RefineParams(ini_high=30.0, max_iterations=iterations, global_iterations=1, global_order=0,
                          offset_range=3.0, batch_size=256)

    def batches():
        for a in range(0, len(table), params.batch_size):
            rows = np.arange(a, min(len(table), a + params.batch_size))
            yield rows, reader(rows)

    t0 = time.perf_counter()
    if workers is None:
        res = auto_refine(batches, table, vol, pixel_size=apix, params=params)
        return res, None, time.perf_counter() - t0
    import distributed

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  memory_limit=0) as cluster, Dask(cluster.scheduler_address) as backend:
        dist = Distributor(backend, reader=reader)
        t0 = time.perf_counter()
        res = auto_refine(batches, table, vol, pixel_size=apix, params=params, distributor=dist)
        return res, dist, time.perf_counter() - t0


def fit(rows: list[dict]) -> dict:
    """``seconds = a + b·particles/workers + c·bytes`` from the measured parts of the distributed iterations:
    ``a`` the driver's own time (maximisation, merging the sums), ``b`` the workers' compute time per
    particle, ``c`` the map's overhead (wall time beyond compute/workers) per byte shipped; each a mean
    over the rows (robust on a loaded machine, where a 3-parameter least squares on a few points is not).
    ``rms_residual_s`` compares the model with the measured iteration times."""
    a = float(np.mean([r["driver_seconds"] for r in rows]))
    b = float(np.mean([r["worker_seconds"] / r["particles"] for r in rows]))
    c = float(max(0.0, np.mean([r["overhead_seconds"] / max(1, r["bytes_shipped"]) for r in rows])))
    pred = np.array([a + b * r["particles"] / r["workers"] + c * r["bytes_shipped"] for r in rows])
    y = np.array([r["seconds"] for r in rows])
    return {"a_s": a, "b_s_per_particle": b, "c_s_per_byte": c,
            "rms_residual_s": float(np.sqrt(np.mean((pred - y) ** 2))), "points": len(rows),
            "measured_s": [float(v) for v in y], "predicted_s": [round(float(v), 2) for v in pred]}


def predict(model: dict, *, box: int, bytes_per_iter_at_box: float, gpu_speedup: float, network_gbps: float) -> dict:
    s2, s3 = (180 / box) ** 2, (180 / box) ** 3
    a, b = model["a_s"] * s3, model["b_s_per_particle"] * s2
    byte_s_local = max(model["c_s_per_byte"], 0.0)
    out = {"assumptions": f"per-particle work x(180/{box})^2, driver maximisation and bytes x(180/{box})^3"}
    bytes_1w = bytes_per_iter_at_box * s3  # bytes with one worker; grows ~linearly with workers (a copy each)
    out["empiar10291_27000_box180_cpu_core_workers"] = {
        str(w): round(a + b * 27000 / w + byte_s_local * bytes_1w * w, 1) for w in (1, 2, 8, 32)}
    net = 8 / (network_gbps * 1e9)  # s per byte on the network
    out["1M_box180_gpu_workers"] = {
        str(w): {"seconds_per_iteration": round(a + b / gpu_speedup * 1e6 / w + net * bytes_1w * w, 1),
                 "driver_maximisation_s": round(a, 1), "network_s": round(net * bytes_1w * w, 2)}
        for w in (1, 4, 16, 64)}
    out["gpu_speedup_assumed"], out["network_gbps_assumed"] = gpu_speedup, network_gbps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--pixel-size", type=float, default=2.5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--no-inprocess", action="store_true")
    ap.add_argument("--gpu-speedup", type=float, default=50.0)
    ap.add_argument("--network-gbps", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scaling.json")
    args = ap.parse_args()
    load0 = os.getloadavg()
    runs, fit_rows = [], []
    with tempfile.TemporaryDirectory(prefix="cryolens-scaling-") as tmp:
        t0 = time.perf_counter()
        vol, table_all, reader, _ = simulate(args.n, args.box, args.pixel_size, Path(tmp))
        print(f"simulated {args.n} particles at box {args.box} in {time.perf_counter() - t0:.0f} s", flush=True)
        for n in sorted({args.n // 2, args.n}):
            table = table_all.iloc[:n].reset_index(drop=True)
            for workers in ([None] if not args.no_inprocess and n == args.n else []) + list(args.workers):
                res, dist, wall = refine_once(vol, table, reader, args.pixel_size, args.iterations, workers)
                for i, h in enumerate(res.history):
                    rec = dist.log[i + 1] if dist is not None else None  # log[0]: the image power pass
                    row = {"particles": n, "workers": workers or 0, "iteration": h.iteration, "mode": h.mode,
                           "seconds": round(h.seconds, 2)}
                    if rec is not None:
                        row.update(map_seconds=round(rec.seconds, 2), worker_seconds=round(rec.worker_seconds, 2),
                                   overhead_seconds=round(rec.overhead_seconds, 2),
                                   driver_seconds=round(h.seconds - rec.seconds, 2), chunks=rec.chunks,
                                   bytes_shipped=rec.bytes_shipped, shared_bytes=rec.shared,
                                   result_bytes=rec.results, item_bytes=rec.items)
                        if h.mode.endswith("local"):
                            fit_rows.append(row)
                    runs.append(row)
                    print(json.dumps(row), flush=True)
                print(f"  {n} particles, {workers or 'in-process'} worker(s): {wall:.1f} s, "
                      f"{res.resolution:.2f} A", flush=True)
    model = fit(fit_rows) if len(fit_rows) >= 3 else None
    one = [r for r in fit_rows if r["workers"] == 1]
    per_iter_bytes = (max(r["bytes_shipped"] for r in one) / max(r["particles"] for r in one)) if one else 0.0
    out = {"machine": {"cores": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                       "note": "the machine may be shared: the load averages say how busy it was"},
           "n": args.n, "box": args.box, "runs": runs, "model": model}
    if model is not None:
        # bytes scale with the number of chunks' sums and the references, not the particles: take the 1-worker total
        bytes_1w = max(r["bytes_shipped"] for r in one)
        out["prediction"] = predict(model, box=args.box, bytes_per_iter_at_box=bytes_1w,
                                    gpu_speedup=args.gpu_speedup, network_gbps=args.network_gbps)
        out["bytes_per_particle_1_worker"] = per_iter_bytes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("model", "prediction") if k in out}, indent=1))


if __name__ == "__main__":
    main()
