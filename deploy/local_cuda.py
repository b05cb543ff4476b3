"""One Dask worker per local GPU, each pinned with CUDA_VISIBLE_DEVICES and declaring resources={"GPU": 1}.

Uses `dask_cuda.LocalCUDACluster` when dask-cuda is installed, else a `SpecCluster` of nannies that set
CUDA_VISIBLE_DEVICES themselves (the same placement, without dask-cuda's memory spilling).
"""

from __future__ import annotations

import os
from typing import Any

from distributed import Nanny, Scheduler, SpecCluster

from .spec import load_defaults


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every device torch sees."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def make_cluster(gpus: list[str] | None = None, **overrides: Any):
    """A cluster with one single-threaded worker per GPU in `gpus` (default: `visible_gpus()`)."""
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        raise RuntimeError("no GPU is visible (CUDA_VISIBLE_DEVICES / torch); use the local-cpu Dask spec instead")
    options = {**load_defaults(__file__), **overrides}
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        return _nanny_cluster(gpus, options)
    return LocalCUDACluster(CUDA_VISIBLE_DEVICES=gpus, resources={"GPU": 1}, **options)


def _nanny_cluster(gpus: list[str], options: dict[str, Any]) -> SpecCluster:
    dashboard = options.pop("dashboard_address", ":8787")
    workers = {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": options.get("threads_per_worker", 1),
                "memory_limit": options.get("memory_limit", "auto"),
                "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": gpu},
            },
        }
        for gpu in gpus
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": dashboard}}
    return SpecCluster(workers=workers, scheduler=scheduler, name="u2seg-local-cuda")
