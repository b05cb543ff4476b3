"""What `u2seg status` shows: per stage, whether it is complete and current, shards done, errors, failures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from . import storage
from .cache_keys import code_version
from .config import PipelineConfig
from .manifest import ShardResult
from .registry import STAGES
from .rundir import RunDir

StageState = Literal["complete", "stale", "failed", "partial", "not run"]


@dataclass(frozen=True)
class StageStatus:
    """One stage of a run. `stale` names why a written manifest no longer matches its inputs."""

    stage: str
    state: StageState
    n_shards: int
    done: list[str]
    errors: dict[str, str]
    failures: list[dict[str, Any]]
    summary: dict[str, Any]
    stale: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def stale_reason(
    run: RunDir, stage: str, cfg: PipelineConfig | None, current: dict[str, str], stale: set[str] = frozenset()
) -> str:
    """Why the manifest of `stage` is out of date ("" when current). `current`: stage -> manifest hash of
    every stage read so far (upstream stages come first in pipeline order); `stale`: those found stale."""
    spec, manifest = STAGES[stage], run.stage_manifest(stage)
    for up in spec.upstream_for(cfg) if cfg is not None else manifest.upstream:
        if up not in current:
            return f"upstream stage {up} has no manifest"
        if manifest.upstream.get(up) != current[up]:
            return f"upstream stage {up} changed since it ran"
        if up in stale:
            return f"upstream stage {up} is stale"
    if manifest.code_version != code_version(spec):
        return "the stage's code changed since it ran"
    if cfg is not None and manifest.config_hash != spec.section(cfg).config_hash():
        return "its config section changed since it ran"
    return ""


def _marker_results(run: RunDir, stage: str) -> list[ShardResult]:
    return [
        ShardResult.model_validate(storage.read_json(run.url(stage, "_shards", f)))
        for f in storage.listdir(run.url(stage, "_shards")) if f.endswith(".json")
    ]


def run_status(run: RunDir, cfg: PipelineConfig | None = None) -> list[StageStatus]:
    """Every stage in pipeline order; `cfg` (default: RUN/run.json's) decides config staleness."""
    n_shards = len(run.plan_shards()) if run.has_stage("plan") else 0
    current: dict[str, str] = {}
    stale_stages: set[str] = set()
    table = []
    for name, spec in STAGES.items():
        errors = {
            f.removesuffix(".json"): storage.read_json(run.url(name, "_errors", f))["message"]
            for f in storage.listdir(run.url(name, "_errors")) if f.endswith(".json")
        }
        stale, warnings = "", ()
        if run.has_stage(name):
            manifest = run.stage_manifest(name)
            results, summary = manifest.shards, manifest.summary
            warnings = tuple(manifest.global_result.warnings) if manifest.global_result else ()
            stale = stale_reason(run, name, cfg, current, stale_stages)
            current[name] = manifest.hash
            if stale:
                stale_stages.add(name)
        else:
            results, summary = _marker_results(run, name), {}
        if run.has_stage(name):
            state: StageState = "stale" if stale else "complete"
        else:
            state = "failed" if errors else ("partial" if results else "not run")
        table.append(
            StageStatus(
                stage=name, state=state, n_shards=n_shards if spec.shard_step else 0,
                done=[r.shard for r in results], errors=errors,
                failures=[f.model_dump() for r in results for f in r.failures], summary=summary, stale=stale,
                warnings=warnings,
            )
        )
    return table
