"""``cryolens profiles``: list and test the run profiles (dask-jobqueue clusters)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cryolens.cli.common import console, run_guarded
from cryolens.cli.markup import literal

app = typer.Typer(help="Run profiles: Dask workers from SLURM, SGE, PBS or LSF (see 'profiles list').",
                  no_args_is_help=True)

PROJECT_HELP = "Also read this project's profiles.toml (it overrides profiles of the same name)."


def _probe(x: int):
    """The tiny unit ``profiles test`` maps: where did it run?"""
    import os
    import socket

    return x * x, socket.gethostname(), os.getpid()


@app.command("list")
def list_profiles(
    project: Annotated[Optional[Path], typer.Option(help=PROJECT_HELP)] = None,
) -> None:
    """Show the run profiles and the files they come from.

    Profiles are [profiles.NAME] tables in ~/.config/cryolens/profiles.toml (or the
    file named by $CRYOLENS_PROFILES) and in a project's profiles.toml.

    Example:

      cryolens profiles list
    """
    from cryolens.compute.profiles import default_profile_files, load_profiles

    def body():
        profiles = load_profiles(project)
        files = ", ".join(f"{f}{'' if f.is_file() else ' (absent)'}" for f in default_profile_files(project))
        if not profiles:
            console.print(f"No run profiles. Searched: {files}.\nAdd one, e.g.:\n\n"
                          '[profiles.cpu]\nscheduler = "slurm"\nqueue = "cpu"\ncores = 8\nmemory = "32GB"\n'
                          'walltime = "04:00:00"\nn_workers = 4', highlight=False, markup=False)
            return
        t = Table(title="run profiles", caption=f"from {literal(files)}")
        for col in ("name", "scheduler", "queue", "cores", "memory", "walltime", "n_workers", "source"):
            t.add_column(col)
        for p in profiles.values():
            t.add_row(*(literal(v) for v in (p.name, p.scheduler, p.queue or "-", p.cores, p.memory,
                                             p.walltime or "-", p.n_workers, p.source)))
        console.print(t)

    run_guarded(body)


@app.command("test")
def test_profile(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    n_items: Annotated[int, typer.Option("--items", min=1, help="Tiny units to map.")] = 8,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds to wait for the workers "
                                                     "(default: the profile's wait_timeout).")] = None,
    project: Annotated[Optional[Path], typer.Option(help=PROJECT_HELP)] = None,
) -> None:
    """Start the profile's cluster, map a tiny function over a few items, print timings, shut down.

    Example:

      cryolens profiles test cpu --items 16
    """
    from cryolens.compute.backends import Dask
    from cryolens.compute.profiles import get_profile, make_cluster, wait_for_workers

    def body():
        p = get_profile(name, project_dir=project)
        t0 = time.perf_counter()
        cluster = make_cluster(p)
        try:
            t_checked = time.perf_counter() - t0
            cluster.scale(jobs=p.n_workers)
            console.print(f"profile [bold]{literal(p.name)}[/] ({literal(p.scheduler)}, {literal(p.source)}): "
                          f"submitted {p.n_workers} job(s); waiting for {p.n_workers * p.processes} worker(s) ...",
                          highlight=False)
            with Dask(cluster) as backend:
                waited = wait_for_workers(cluster, backend.client, p.n_workers * p.processes, profile=p,
                                          timeout=timeout or p.wait_timeout)
                t1 = time.perf_counter()
                out = backend.map(_probe, range(n_items), desc="profiles-test", retries=0)
                t_map = time.perf_counter() - t1
        finally:
            cluster.close()
        assert [o[0] for o in out] == [x * x for x in range(n_items)]
        hosts = sorted({o[1] for o in out})
        workers = len({(o[1], o[2]) for o in out})
        console.print(f"ok: {n_items} units on {workers} worker process(es) on {literal(', '.join(hosts))}\n"
                      f"  cluster + job-script check  {t_checked:7.2f} s\n"
                      f"  workers started             {waited:7.2f} s\n"
                      f"  map                         {t_map:7.2f} s ({1e3 * t_map / n_items:.1f} ms/unit)\n"
                      f"  total (with shutdown)       {time.perf_counter() - t0:7.2f} s", highlight=False)

    run_guarded(body)
