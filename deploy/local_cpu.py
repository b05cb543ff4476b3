"""Dask on this machine, CPU only: `n_workers` worker processes (defaults in local_cpu.yaml)."""

from __future__ import annotations

from typing import Any

from distributed import LocalCluster

from .spec import load_defaults


def make_cluster(**overrides: Any) -> LocalCluster:
    """A LocalCluster; `overrides` replace the YAML defaults (e.g. n_workers=4)."""
    return LocalCluster(**{**load_defaults(__file__), **overrides})
