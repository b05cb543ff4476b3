"""The sequential runner: every stage in this process, shard after shard, without Prefect (notebooks, baseline)."""

from __future__ import annotations

import logging
from typing import Iterable

from . import storage
from .config import PipelineConfig
from .manifest import StageManifest
from .registry import STAGES, StageSpec, select_stages
from .rundir import RunDir
from .stage_run import StageRun, update_run_manifest
from .steps import run_global_step, run_shard_step

log = logging.getLogger(__name__)


def run_stage_local(spec: StageSpec, run: RunDir, cfg: PipelineConfig, force: bool = False) -> StageManifest:
    """Run one stage in this process, shard after shard (skips shards that are already done)."""
    from tqdm.auto import tqdm

    stage = StageRun.start(spec, run, cfg)
    before = run_global_step(spec, run, cfg, stage.global_key(), force) if stage.has_global_before else None
    results = [
        run_shard_step(spec, run, ref, cfg, key, force)
        for ref, key in tqdm(stage.shard_keys(before), desc=spec.name, unit="shard", disable=None)
    ]
    after = run_global_step(spec, run, cfg, stage.global_key(results), force) if stage.has_global_after else None
    for warning in (before or after).warnings if (before or after) else []:
        log.warning("%s: %s", spec.name, warning)
    return stage.finish(results, before or after)


def run_pipeline_local(
    cfg: PipelineConfig, run_dir: str, stages: Iterable[str] | None = None, refresh: Iterable[str] = ()
) -> dict[str, StageManifest]:
    """The whole pipeline (or `stages`) sequentially; `refresh` names stages to recompute even where done."""
    run = RunDir(run_dir)
    refresh = set(select_stages(refresh))
    storage.configure(cfg.storage.fsspec_options())
    update_run_manifest(run, cfg)
    manifests: dict[str, StageManifest] = {}
    for name in select_stages(stages, cfg):
        manifests[name] = run_stage_local(STAGES[name], run, cfg, force=name in refresh)
        update_run_manifest(run, cfg, {name: manifests[name]})
    return manifests
