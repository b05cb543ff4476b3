"""Task runners from `cfg.orchestration`: a bounded thread pool, or Dask (address, deploy/ spec, local cluster)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator

import dask
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from deploy.spec import GPU_SPECS, cluster_factory
from u2seg_core.config import OrchestrationConfig


def _spec_kwargs(orch: OrchestrationConfig) -> tuple[str, dict[str, int]]:
    spec = orch.dask_spec or "local-cpu"
    return spec, ({"n_workers": orch.max_workers} if spec == "local-cpu" else {})


def task_runner_for(orch: OrchestrationConfig) -> TaskRunner:
    """threads -> ThreadPoolTaskRunner(max_workers) (always bounded); dask -> DaskTaskRunner on `dask_address`,
    else on a cluster built from the `dask_spec` in deploy/ (default local-cpu with `max_workers` processes)."""
    if orch.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=orch.max_workers)
    if orch.dask_address:
        return DaskTaskRunner(address=orch.dask_address)
    spec, kwargs = _spec_kwargs(orch)
    return DaskTaskRunner(cluster_class=cluster_factory(spec), cluster_kwargs=kwargs)


@contextmanager
def shared_cluster(orch: OrchestrationConfig) -> Iterator[OrchestrationConfig]:
    """Start the spec's Dask cluster once for several stage flows; yields `orch` pointing at its scheduler.

    Threads, or Dask with an existing `dask_address`, need nothing started: `orch` is yielded unchanged.
    """
    if orch.runner != "dask" or orch.dask_address:
        yield orch
        return
    spec, kwargs = _spec_kwargs(orch)
    with cluster_factory(spec)(**kwargs) as cluster:
        yield orch.model_copy(update={"dask_address": cluster.scheduler_address})


def gpu_annotation(needs_gpu: bool, orch: OrchestrationConfig) -> ContextManager[object]:
    """`dask.annotate(resources={"GPU": 1})` for a GPU stage on a Dask runner whose workers declare GPUs
    (a GPU spec in deploy/, or connected workers with a GPU resource); otherwise a no-op."""
    runner = FlowRunContext.get().task_runner
    if not (needs_gpu and isinstance(runner, DaskTaskRunner)):
        return nullcontext()
    workers = runner.client.scheduler_info(n_workers=-1)["workers"].values()
    if orch.dask_spec in GPU_SPECS or any("GPU" in w.get("resources", {}) for w in workers):
        return dask.annotate(resources={"GPU": 1})
    return nullcontext()
