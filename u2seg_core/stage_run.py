"""Stage and run manifests: one execution of a stage (its keys, its manifest) and `RUN/run.json`.

Every executor (`u2seg_core.local_runner`, the Prefect flows in `flows/`) drives a stage the same way:

    stage = StageRun.start(spec, run, cfg)          # upstream manifests; drops a stale stage manifest
    before = run_global_step(spec, run, cfg, stage.global_key())          # plan / cluster / stego
    results = [run_shard_step(spec, run, ref, cfg, key) for ref, key in stage.shard_keys(before)]
    after = run_global_step(spec, run, cfg, stage.global_key(results))    # merge finalize
    manifest = stage.finish(results, before or after)                     # RUN/<stage>/manifest.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from . import storage
from .cache_keys import code_version, global_cache_key, shard_cache_key, upstream_hashes
from .config import PipelineConfig
from .manifest import GlobalResult, ShardResult, StageManifest
from .registry import StageSpec
from .rundir import RunDir
from .steps import ShardRef, shard_refs


@dataclass(frozen=True)
class StageRun:
    """One execution of a stage: computes its keys and writes its manifest at the end."""

    spec: StageSpec
    run: RunDir
    cfg: PipelineConfig
    upstream_manifests: dict[str, StageManifest]
    upstream: dict[str, str] = field(init=False)
    key_material: Any = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "upstream", upstream_hashes(self.upstream_manifests))
        object.__setattr__(self, "key_material", self.spec.extra_key_material(self.cfg, self.upstream_manifests))

    @classmethod
    def start(cls, spec: StageSpec, run: RunDir, cfg: PipelineConfig) -> "StageRun":
        """Read the upstream manifests (raises, naming the stage to run, if one has not completed); remove this
        stage's manifest if it was built from other inputs, so a failed re-run never leaves an outdated
        manifest for downstream stages."""
        stage = cls(spec, run, cfg, {up: run.stage_manifest(up) for up in spec.upstream_for(cfg)})
        if run.has_stage(spec.name):
            old = run.stage_manifest(spec.name)
            if (old.code_version, old.config_hash, old.upstream) != (
                code_version(spec), spec.section(cfg).config_hash(), stage.upstream
            ):
                storage.remove(run.stage_manifest_url(spec.name))
        return stage

    @property
    def has_global_before(self) -> bool:
        return self.spec.global_step is not None and self.spec.global_first

    @property
    def has_global_after(self) -> bool:
        return self.spec.global_step is not None and not self.spec.global_first

    def global_key(self, shard_results: Iterable[ShardResult] = ()) -> str:
        """Key of the global step; one that runs after the shards keys on their results in shard order
        (not in the order they finished)."""
        ordered = sorted(shard_results, key=lambda r: r.shard)
        return global_cache_key(self.spec, self.cfg, self.upstream, [r.hash for r in ordered], self.key_material)

    def shard_keys(self, before: GlobalResult | None = None) -> list[tuple[ShardRef, str]]:
        """(shard, cache key) for every shard of the plan; each key sees only that shard's upstream results."""
        if self.spec.shard_step is None:
            return []
        global_hash = before.hash if before and not self.spec.relist else None  # a listing only defines the shards
        # an upstream with shard steps: its result for this shard (whose key chains on that stage's own global
        # result); one without (e.g. a trained model): its global result
        seen = {
            name: m.shard_hashes() if m.shards else (m.global_result.hash if m.global_result else None)
            for name, m in self.upstream_manifests.items()
        }
        # the shard's images enter through an upstream shard result (plan's is their content digest); without
        # one (plan itself), through the shard manifest
        via_upstream = any(isinstance(hashes, dict) for hashes in seen.values())
        return [
            (ref, shard_cache_key(
                self.spec, self.cfg, ref.name, "" if via_upstream else ref.hash,
                {up: hashes.get(ref.name) if isinstance(hashes, dict) else hashes for up, hashes in seen.items()},
                global_hash, self.key_material,
            ))
            for ref in shard_refs(self.run, before if not self.spec.upstream else None)
        ]

    def drop_removed_shards(self, current: set[str]) -> list[str]:
        """Delete the outputs and done-markers of shards the plan no longer has (their images were removed or
        re-bucketed), so nothing of them lingers in the run directory. Returns their names."""
        folder = self.run.url(self.spec.name, "_shards")
        removed = [f.removesuffix(".json") for f in storage.listdir(folder)
                   if f.endswith(".json") and f.removesuffix(".json") not in current]
        for shard in removed:
            marker = self.run.shard_result(self.spec.name, shard)
            for rel in marker.outputs.values() if marker else ():
                storage.remove(self.run.url(rel), recursive=True)
            storage.remove(self.run.shard_result_url(self.spec.name, shard))
        return removed

    def finish(self, shards: list[ShardResult], global_result: GlobalResult | None) -> StageManifest:
        """Drop the outputs of removed shards, write `RUN/<stage>/manifest.json` (shards sorted by name), return it."""
        shards = sorted(shards, key=lambda r: r.shard)
        if self.spec.shard_step:
            self.drop_removed_shards({r.shard for r in shards})
        summary: dict[str, Any] = {}
        if self.spec.shard_step:
            summary = {"n_shards": len(shards), "n_images": sum(r.n_images for r in shards),
                       "n_failed": sum(r.n_failed for r in shards)}
            for r in shards:
                for name, value in r.counts.items():
                    summary[name] = summary.get(name, 0) + value
        if global_result:
            summary.update(global_result.summary)
            summary.update(global_result.metrics)
        section = self.spec.section(self.cfg)
        manifest = StageManifest(
            stage=self.spec.name, stage_version=self.spec.version, code_version=code_version(self.spec),
            config=section.model_dump(mode="json"), config_hash=section.config_hash(), upstream=self.upstream,
            shards=shards, outputs=global_result.outputs if global_result else {}, summary=summary,
            global_result=global_result,
        )
        storage.write_json(self.run.stage_manifest_url(self.spec.name), manifest.model_dump(mode="json"))
        return manifest


def update_run_manifest(run: RunDir, cfg: PipelineConfig, manifests: dict[str, StageManifest] | None = None) -> None:
    """Write `RUN/run.json`: config (never credentials: `StorageConfig` refuses them), and the hash of every
    stage manifest written so far."""
    stages: dict[str, str] = {}
    if storage.exists(run.run_manifest):
        stages = storage.read_json(run.run_manifest).get("stages", {})
    stages.update({name: m.hash for name, m in (manifests or {}).items()})
    storage.write_json(
        run.run_manifest,
        {"updated": datetime.now(timezone.utc).isoformat(), "config": cfg.model_dump(mode="json"), "stages": stages},
    )


def load_run_config(run: RunDir) -> PipelineConfig:
    """The config the run was last started with (from `RUN/run.json`)."""
    if not storage.exists(run.run_manifest):
        raise FileNotFoundError(f"{run.run_manifest} does not exist: start the run with `u2seg run` or pass --config")
    return PipelineConfig.model_validate(storage.read_json(run.run_manifest)["config"])
