"""The per-shard Prefect task: one core shard step on one shard of the run directory."""

from __future__ import annotations

from prefect import task
from prefect.runtime import task_run

from u2seg_core.config import PipelineConfig
from u2seg_core.manifest import ShardResult, shard_name
from u2seg_core.registry import STAGES
from u2seg_core.steps import ShardRef, run_shard_step
from u2seg_core.rundir import RunDir

from .caching import shard_task_cache_key
from .options import TASK_DEFAULTS


def _task_run_name() -> str:
    """e.g. "maskcut-shard-00731"."""
    return f"{task_run.parameters['stage']}-{shard_name(task_run.parameters['shard_index'])}"


@task(
    name="shard-step",
    task_run_name=_task_run_name,
    cache_key_fn=shard_task_cache_key,
    **TASK_DEFAULTS,
)
def run_shard_task(
    stage: str, run_root: str, shard_index: int, shard_hash: str, config: str, key: str, force: bool = False
) -> ShardResult:
    """Run `stage`'s shard step on shard `shard_index` (skipped when its done-marker already has `key`);
    `config`: the PipelineConfig as JSON (see flows/stages.py `task_inputs`)."""
    cfg = PipelineConfig.model_validate_json(config)
    return run_shard_step(STAGES[stage], RunDir(run_root), ShardRef(shard_index, shard_hash), cfg, key, force)
