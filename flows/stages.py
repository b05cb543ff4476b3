"""One Prefect flow per stage: one task per shard (plus the stage's global step), progress and shard table
artifacts, then the stage manifest.

The flows run under whatever task runner they are given (`flows/runners.py`); `flows/pipeline.py` calls them as
subflows. Called directly they use a bounded thread pool.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from tasks.global_step import run_global_task
from tasks.options import stage_task_options
from tasks.shard import run_shard_task
from u2seg_core.config import OrchestrationConfig, PipelineConfig
from u2seg_core.manifest import GlobalResult, ShardResult, StageManifest
from u2seg_core.registry import STAGES
from u2seg_core.stage_run import StageRun
from u2seg_core.steps import ShardRef
from u2seg_core.rundir import RunDir

from .artifacts import artifact_key, failed_row, shard_row
from .runners import gpu_annotation
from .train_artifacts import loss_curves_artifact, watch_training


class StageFailedError(RuntimeError):
    """Some shards of a stage failed; the others are done and cached for the next run."""


def run_stage(stage: str, run_dir: str, cfg: PipelineConfig, refresh: bool = False) -> StageManifest:
    """Drive one stage inside the current flow run (see `u2seg_core.stage_run` for the sequence)."""
    spec, run, logger = STAGES[stage], RunDir(run_dir), get_run_logger()
    stage_run = StageRun.start(spec, run, cfg)
    options = stage_task_options(spec, run, cfg.orchestration, refresh)
    global_task = run_global_task.with_options(**options)
    shard_task = run_shard_task.with_options(**options)

    # The real dependencies (global step -> shards -> finalize) are given as wait_for; `task_inputs` keeps every
    # other input from looking like one.
    before = after = None
    before_future: list[PrefectFuture[GlobalResult]] = []
    with gpu_annotation(spec.gpu, cfg.orchestration):
        if stage_run.has_global_before:
            before_future = [global_task.submit(*task_inputs(stage, run.root, cfg, stage_run.global_key(), refresh))]
            with watch_training(run) if stage == "train" else contextlib.nullcontext():
                before = before_future[0].result()
            _log_global(logger, stage, before_future[0])
            if stage == "train":
                loss_curves_artifact(run, before.metrics)
        shard_keys = stage_run.shard_keys(before)
        _check_fan_out(stage, len(shard_keys), cfg.orchestration)
        futures = {
            shard_task.submit(
                *task_inputs(stage, run.root, ref.index, ref.hash, cfg, key, refresh), wait_for=before_future
            ): ref
            for ref, key in shard_keys
        }
    results = _collect(stage, run, futures) if futures else []
    if stage_run.has_global_after:
        after_future = global_task.submit(
            *task_inputs(stage, run.root, cfg, stage_run.global_key(results), refresh), wait_for=list(futures)
        )
        after = after_future.result()
        _log_global(logger, stage, after_future)

    manifest = stage_run.finish(results, before or after)
    logger.info(
        "%s done: %s shards, %s images, %d per-image failures", stage,
        manifest.summary.get("n_shards", "-"), manifest.summary.get("n_images", "-"), len(manifest.failures),
    )
    return manifest


def task_inputs(*args: Any) -> list[Any]:
    """Task arguments Prefect cannot mistake for data flow. Prefect draws an edge from an earlier task to every
    task that receives an object its result contains, by identity: the config object holds interned strings
    ("cluster" is also every cluster result's `stage`), and stage names are those interned strings. So the
    config goes as its JSON text and strings as new, equal objects. (`quote()` would do, but Dask turns it into
    a plain tuple on the way to its workers.)"""
    return [
        arg.model_dump_json() if isinstance(arg, PipelineConfig) else json.loads(json.dumps(arg))
        if isinstance(arg, str) else arg
        for arg in args
    ]


def _log_global(logger: Any, stage: str, future: PrefectFuture[GlobalResult]) -> None:
    """Say whether the global step ran or came from the cache, and pass on its warnings."""
    result = future.result()
    step = STAGES[stage].global_step_name
    logger.info("%s %s: %s", stage, step, "reused from cache" if future.state.name == "Cached" else "computed")
    for warning in result.warnings:
        logger.warning("%s %s: %s", stage, step, warning)


def _check_fan_out(stage: str, n_shards: int, orch: OrchestrationConfig) -> None:
    if n_shards > orch.max_shards_per_flow:
        raise ValueError(
            f"{stage}: {n_shards} shards would be {n_shards} task runs in one flow run, more than "
            f"orchestration.max_shards_per_flow={orch.max_shards_per_flow}; raise source.shard_size and re-plan"
        )


def _collect(stage: str, run: RunDir, futures: dict[PrefectFuture[ShardResult], ShardRef]) -> list[ShardResult]:
    """Wait for the shard tasks as they finish, updating the progress artifact; then the shard table.

    Raises StageFailedError naming every failed shard once all shards have finished."""
    progress = create_progress_artifact(
        0.0, key=artifact_key(run, stage, "progress"), description=f"{stage}: shards finished"
    )
    results: list[ShardResult] = []
    rows, errors = [], {}
    last_update = 0.0
    for done, future in enumerate(
        tqdm(as_completed(list(futures)), total=len(futures), desc=stage, unit="shard", disable=None), start=1
    ):
        future.wait()
        shard, state = futures[future].name, future.state
        if state.is_completed():
            results.append(future.result())
            rows.append(shard_row(results[-1], state.name))
        else:
            errors[shard] = state.message or state.name
            rows.append(failed_row(shard, errors[shard]))
        if time.monotonic() - last_update > 1.0 or done == len(futures):
            update_progress_artifact(progress, 100.0 * done / len(futures))
            last_update = time.monotonic()
    rows.sort(key=lambda row: row["shard"])
    states = [row["state"] for row in rows]
    get_run_logger().info(
        "%s: %d of %d shards reused from cache, %d computed, %d failed", stage, states.count("Cached"),
        len(states), sum(state not in ("Cached", "Failed") for state in states), len(errors),
    )
    create_table_artifact(
        rows, key=artifact_key(run, stage, "shards"),
        description=f"{stage}: per-shard state, counts, seconds and failures ({len(errors)} failed shards)",
    )
    if errors:
        listing = "\n".join(f"  {shard}: {message}" for shard, message in sorted(errors.items()))
        raise StageFailedError(
            f"{stage}: {len(errors)} of {len(futures)} shards failed (the others are done and will be reused):\n"
            + listing
        )
    return results


def _stage_run_name() -> str:
    """e.g. "maskcut-demo" (stage and run directory name)."""
    run_name = flow_run.parameters["run_dir"].rstrip("/").rsplit("/", 1)[-1]
    return f"{flow_run.flow_name}-{run_name}"


def _stage_flow(stage: str, description: str) -> Flow[..., StageManifest]:
    """The flow of one stage (named after it in the UI); a bounded thread pool unless given another runner."""

    def stage_flow(run_dir: str, config_json: str, refresh: bool = False) -> StageManifest:
        """`config_json`: the PipelineConfig as JSON (see `task_inputs`)."""
        return run_stage(stage, run_dir, PipelineConfig.model_validate_json(config_json), refresh)

    return flow(
        stage_flow, name=stage, description=description, flow_run_name=_stage_run_name,
        task_runner=ThreadPoolTaskRunner(max_workers=OrchestrationConfig().max_workers),
    )


STAGE_FLOWS = {
    stage: _stage_flow(stage, description)
    for stage, description in {
        "plan": "Fix the image shards (synthesises the built-in dataset when there is no source).",
        "features": "Patch tokens and pooled features per shard into zarr (GPU).",
        "maskcut": "MaskCut instance masks and mask embeddings per shard (GPU).",
        "cluster": "Global K-means of the mask embeddings, then cluster ids per shard.",
        "stego": "Train the STEGO head on the stored features, then semantic maps per shard (GPU).",
        "merge": "Panoptic pseudo-labels per shard, then the COCO panoptic and instance JSON files.",
        "train": "Train the Panoptic Cascade Mask R-CNN on the merged pseudo-labels (DDP over the GPUs, resumable).",
        "predict": "A U2Seg checkpoint over the planned images: panoptic, instance and semantic predictions (GPU).",
        "evaluate": "PQ / AP / mIoU of the pseudo-labels against the ground truth.",
    }.items()
}
