"""Compute backends: map independent work units (micrographs, particle chunks) over workers.

:mod:`cryolens.compute.backends` (in-process, local processes, Dask, dask-jobqueue
profiles and :func:`~cryolens.compute.backends.get_backend`), :mod:`cryolens.compute.threads`
(threads in this process, with read-ahead for two-phase units) and
:mod:`cryolens.compute.profiles` (run profiles for SLURM, SGE, PBS, LSF). This package
knows work units, not stages: it imports no ``jobs``, ``project``, ``cli`` or stage module.
"""
