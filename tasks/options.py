"""Per-stage task options: result storage under the run directory, retries with backoff, tags, refresh."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from u2seg_core.config import OrchestrationConfig
from u2seg_core.registry import StageSpec
from u2seg_core.rundir import RunDir

from .caching import result_storage_for
from .retry import retry_transient

# Decorator defaults of every stage task: small JSON result records persisted under the run directory (so a new
# flow run finds them), not kept in memory, retried only for transient I/O errors.
TASK_DEFAULTS: dict[str, Any] = {
    "persist_result": True,
    "result_serializer": "json",
    "cache_result_in_memory": False,
    "retry_condition_fn": retry_transient,
}


def stage_task_options(spec: StageSpec, run: RunDir, orch: OrchestrationConfig, force: bool) -> dict[str, Any]:
    """Keyword arguments for `task.with_options(...)` shared by a stage's tasks (call inside the stage flow)."""
    return {
        "result_storage": result_storage_for(run),
        "refresh_cache": force,
        "retries": orch.retries,
        "retry_delay_seconds": exponential_backoff(orch.retry_delay_seconds),
        "retry_jitter_factor": 0.5,
        "tags": ({spec.name, "gpu"} if spec.gpu else {spec.name}) if orch.concurrency_tags else set(),
    }
