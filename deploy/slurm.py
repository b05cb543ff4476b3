"""Dask workers as SLURM jobs (dask-jobqueue), one GPU each, scaled adaptively (defaults in slurm.yaml)."""

from __future__ import annotations

from typing import Any

from .spec import load_defaults


def make_cluster(**overrides: Any):
    """A `SLURMCluster` whose workers declare GPU=1; `adapt` keeps between minimum_jobs and maximum_jobs jobs."""
    from dask_jobqueue import SLURMCluster

    options = {**load_defaults(__file__), **overrides}
    adapt = options.pop("adapt", None)
    cluster = SLURMCluster(**options)
    if adapt:
        cluster.adapt(**adapt)
    return cluster
