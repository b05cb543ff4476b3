"""Cluster specs: each `deploy/<name>.py` builds a Dask cluster from the defaults in `deploy/<name>.yaml`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import yaml

SPECS = {"local-cpu": "deploy.local_cpu", "local-cuda": "deploy.local_cuda", "slurm": "deploy.slurm"}
GPU_SPECS = frozenset({"local-cuda", "slurm"})


def load_defaults(module_file: str) -> dict[str, Any]:
    """The YAML next to a spec module (`local_cpu.py` -> `local_cpu.yaml`)."""
    return yaml.safe_load(Path(module_file).with_suffix(".yaml").read_text()) or {}


def cluster_factory(name: str) -> Callable[..., Any]:
    """`make_cluster` of the named spec (local-cpu, local-cuda, slurm)."""
    if name not in SPECS:
        raise ValueError(f"unknown Dask spec '{name}'; choose from {sorted(SPECS)}")
    return importlib.import_module(SPECS[name]).make_cluster
