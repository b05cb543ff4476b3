"""The Prefect task for a stage's global step (plan, K-means fit, STEGO training, merge finalize, evaluate)."""

from __future__ import annotations

from prefect import task
from prefect.runtime import task_run

from u2seg_core.config import PipelineConfig
from u2seg_core.manifest import GlobalResult
from u2seg_core.registry import STAGES
from u2seg_core.steps import run_global_step
from u2seg_core.rundir import RunDir

from .caching import global_task_cache_key
from .options import TASK_DEFAULTS


def _task_run_name() -> str:
    """e.g. "cluster-fit_centroids"."""
    stage = task_run.parameters["stage"]
    return f"{stage}-{STAGES[stage].global_step_name}"


@task(
    name="global-step",
    task_run_name=_task_run_name,
    cache_key_fn=global_task_cache_key,
    **TASK_DEFAULTS,
)
def run_global_task(stage: str, run_root: str, config: str, key: str, force: bool = False) -> GlobalResult:
    """Run `stage`'s global step (skipped when `RUN/<stage>/_global.json` already has `key`); `config`: the
    PipelineConfig as JSON."""
    return run_global_step(STAGES[stage], RunDir(run_root), PipelineConfig.model_validate_json(config), key, force)
