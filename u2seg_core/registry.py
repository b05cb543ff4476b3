"""The stage registry: every stage's steps (lazy "module:function" paths), upstream stages and config section.

Pipeline order is the order of `STAGES`. Executors (`u2seg_core.local_runner`, the Prefect flows in `flows/`)
drive each stage through `u2seg_core.stage_run.StageRun`.
"""

from __future__ import annotations

import importlib
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .config import PipelineConfig, StrictModel
from .manifest import GlobalResult, ShardManifest, ShardResult, StageManifest
from .rundir import RunDir


@dataclass(frozen=True)
class StageSpec:
    """One stage.

    `version` is bumped by hand when outputs change for a reason the code hash cannot see (e.g. a dependency);
    the source of the stage's step modules and of every u2seg_core module they import (found by scanning their
    imports) enters every cache key as well (`u2seg_core.cache_keys.code_version`). `relist`: the global step
    runs on every execution (plan re-lists the source); downstream keys still only change when its result does.
    """

    name: str
    version: str
    upstream: tuple[str, ...]
    section: Callable[[PipelineConfig], StrictModel]
    global_step: str | None = None
    shard_step: str | None = None
    global_first: bool = True
    gpu: bool = False
    relist: bool = False
    upstream_when: str | None = None  # "module:function" cfg -> the subset of `upstream` this config reads
    on_request: bool = False  # runs only when named (`u2seg predict`, `u2seg stage predict`), not in a whole run
    # "module:function" (cfg, upstream stage manifests) -> JSON-able material that enters every key of the stage:
    # for outputs that depend on a dataset-level figure which the per-shard upstream results do not carry
    key_material: str | None = None

    def global_fn(self) -> Callable[[RunDir, PipelineConfig], GlobalResult]:
        return _load(self.global_step, self.name)

    def shard_fn(self) -> Callable[[RunDir, ShardManifest, PipelineConfig], ShardResult]:
        return _load(self.shard_step, self.name)

    def upstream_for(self, cfg: PipelineConfig) -> tuple[str, ...]:
        """The upstream stages a run with `cfg` reads: `upstream`, narrowed by `upstream_when` (predict reads
        the train stage only when no explicit weights are given)."""
        return tuple(_load(self.upstream_when, self.name)(cfg)) if self.upstream_when else self.upstream

    def extra_key_material(self, cfg: PipelineConfig, upstream: dict[str, StageManifest]) -> Any:
        """What `key_material` contributes to this stage's keys under `cfg` and `upstream` (None without it)."""
        return _load(self.key_material, self.name)(cfg, upstream) if self.key_material else None

    @property
    def global_step_name(self) -> str:
        return self.global_step.rpartition(":")[2] if self.global_step else ""

    @property
    def step_modules(self) -> tuple[str, ...]:
        """Modules of the stage's steps (where `code_version`'s import scan starts)."""
        return tuple(s.partition(":")[0] for s in (self.global_step, self.shard_step) if s)


def _load(dotted: str | None, stage: str) -> Callable[..., Any]:
    if dotted is None:
        raise ValueError(f"stage '{stage}' has no such step")
    module, _, attr = dotted.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"stage '{stage}': cannot import its step {dotted} ({exc})") from exc


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "plan", "2", (), operator.attrgetter("source"), global_step="u2seg_core.io.plan:plan_step",
            shard_step="u2seg_core.io.plan:hash_shard", relist=True,
        ),
        StageSpec(
            "features", "1", ("plan",), operator.attrgetter("features"),
            shard_step="u2seg_core.features.stage:features_shard", gpu=True,
            key_material="u2seg_core.features.sample:store_key_material",
        ),
        StageSpec(
            "maskcut", "1", ("plan",), operator.attrgetter("maskcut"),
            shard_step="u2seg_core.maskcut.stage:maskcut_shard", gpu=True,
        ),
        StageSpec(
            "cluster", "1", ("maskcut",), operator.attrgetter("cluster"),
            global_step="u2seg_core.cluster.stage:fit_centroids",
            shard_step="u2seg_core.cluster.stage:assign_shard", gpu=True,
        ),
        StageSpec(
            "stego", "1", ("plan", "features"), operator.attrgetter("stego"),
            global_step="u2seg_core.stego.stage:train_head",
            shard_step="u2seg_core.stego.stage:stego_shard", gpu=True,
        ),
        StageSpec(
            "merge", "2", ("maskcut", "cluster", "stego"), operator.attrgetter("merge"),
            global_step="u2seg_core.merge.stage:finalize",
            shard_step="u2seg_core.merge.stage:merge_shard", global_first=False,
        ),
        StageSpec(
            "train", "1", ("merge",), operator.attrgetter("train"), global_step="u2seg_core.train.stage:train_stage",
            gpu=True, on_request=True,
        ),
        StageSpec(
            "predict", "1", ("plan", "train"), operator.attrgetter("predict"),
            global_step="u2seg_core.predict.stage:finalize", shard_step="u2seg_core.predict.stage:predict_shard",
            global_first=False, gpu=True,
            upstream_when="u2seg_core.predict.stage:upstream_stages", on_request=True,
        ),
        StageSpec(
            "evaluate", "2", ("merge",), operator.attrgetter("evaluate"),
            global_step="u2seg_core.evaluate.stage:evaluate_run",
            shard_step="u2seg_core.evaluate.stage:evaluate_shard", global_first=False,
            upstream_when="u2seg_core.evaluate.stage:evaluate_upstream",
        ),
    )
}


def select_stages(stages: Iterable[str] | None, cfg: PipelineConfig | None = None) -> list[str]:
    """Stage names in pipeline order; unknown names are an error. For None: every stage but the `on_request`
    ones, plus (given `cfg`) the `on_request` stages another selected stage reads under it (evaluate reading a
    `predict` prediction set brings predict and, through it, train into a whole run)."""
    if stages is None:
        wanted = {name for name, spec in STAGES.items() if not spec.on_request}
        if cfg is not None:
            todo = list(wanted)
            while todo:
                for up in STAGES[todo.pop()].upstream_for(cfg):
                    if up not in wanted:
                        wanted.add(up)
                        todo.append(up)
        return [name for name in STAGES if name in wanted]
    wanted = set(stages)
    if unknown := wanted - set(STAGES):
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    return [name for name in STAGES if name in wanted]


def downstream_of(stage: str) -> list[str]:
    """Stages that read `stage`'s outputs, directly or through others, in pipeline order."""
    affected = {stage}
    for name, spec in STAGES.items():
        if affected & set(spec.upstream):
            affected.add(name)
    return [name for name in STAGES if name in affected and name != stage]
