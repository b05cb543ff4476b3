"""Executor-independent pipeline layer: stage registry, cache keys, done-markers, manifests.

Every executor (the plain sequential `run_pipeline_local` below, the Prefect flows in `flows/`) drives a stage
the same way, through `StageRun`:

    stage = StageRun.start(spec, run, cfg)          # upstream manifest hashes; drops a stale stage manifest
    before = run_global_step(spec, run, cfg, stage.global_key())          # cluster / stego only
    results = [run_shard_step(spec, run, ref, cfg, key) for ref, key in stage.shard_keys(before)]
    after = run_global_step(spec, run, cfg, stage.global_key(results))    # merge finalize only
    manifest = stage.finish(results, before or after)                     # RUN/<stage>/manifest.json

A shard is done when its done-marker `RUN/<stage>/_shards/shard-NNNNN.json` carries the current cache key and
every output it lists exists; the marker is written last, atomically, so a killed worker leaves no marker.

Test hook: `U2SEG_FAULT_INJECT="stage:shard-00001[,stage:shard-00003:exit:/tmp/marker]"` makes that shard's step
raise `InjectedFault` (or, with `:exit:<file>`, kill its process once: the file guards against a second kill).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import operator
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from . import storage
from .config import PipelineConfig, StrictModel
from .manifest import GlobalResult, ShardManifest, ShardResult, StageManifest, shard_name
from .rundir import RunDir

CODE_VERSION = importlib.metadata.version("u2seg")
FAULT_ENV = "U2SEG_FAULT_INJECT"


@dataclass(frozen=True)
class StageSpec:
    """One stage: its steps (lazy "module:function" paths), upstream stages and config section."""

    name: str
    version: str
    upstream: tuple[str, ...]
    section: Callable[[PipelineConfig], StrictModel]
    global_step: str | None = None
    shard_step: str | None = None
    global_first: bool = True
    gpu: bool = False

    def global_fn(self) -> Callable[[RunDir, PipelineConfig], GlobalResult]:
        return _load(self.global_step, self.name)

    def shard_fn(self) -> Callable[[RunDir, ShardManifest, PipelineConfig], ShardResult]:
        return _load(self.shard_step, self.name)

    @property
    def global_step_name(self) -> str:
        return self.global_step.rpartition(":")[2] if self.global_step else ""


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
        StageSpec("plan", "1", (), operator.attrgetter("source"), global_step="u2seg_core.pipeline:plan_step"),
        StageSpec(
            "features", "1", ("plan",), operator.attrgetter("features"),
            shard_step="u2seg_core.features.stage:features_shard", gpu=True,
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
            "merge", "1", ("maskcut", "cluster", "stego"), operator.attrgetter("merge"),
            global_step="u2seg_core.merge.stage:finalize",
            shard_step="u2seg_core.merge.stage:merge_shard", global_first=False,
        ),
        StageSpec(
            "evaluate", "1", ("merge",), operator.attrgetter("evaluate"),
            global_step="u2seg_core.evaluate.stage:evaluate_run",
        ),
    )
}


class ShardFailedError(RuntimeError):
    """A shard whose per-image failure rate passed `orchestration.max_failure_rate`."""

    def __init__(self, result: ShardResult, max_rate: float):
        self.result = result
        lines = [f"  image {f.image_id} ({f.file_name}): {f.reason}" for f in result.failures[:20]]
        more = len(result.failures) - len(lines)
        super().__init__(
            f"{result.stage} {result.shard}: {result.n_failed}/{result.n_images} images failed "
            f"(rate {result.failure_rate:.2f} > max_failure_rate {max_rate}):\n" + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix the images or raise orchestration.max_failure_rate, then re-run the stage."
        )


class InjectedFault(RuntimeError):
    """Raised by the `U2SEG_FAULT_INJECT` test hook."""


@dataclass(frozen=True)
class ShardRef:
    """A shard as the plan manifest lists it: index and content hash (the manifest itself is read lazily)."""

    index: int
    hash: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


# ---- plan adapter ---------------------------------------------------------------------------------


def plan_step(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """The plan stage's global step: `plan_shards`, summarised so later stages never load every shard."""
    from .io.plan import plan_shards

    shards = plan_shards(run, cfg)
    return GlobalResult(
        stage="plan",
        outputs={"shards": "plan/shards"},
        summary={
            "n_shards": len(shards),
            "n_images": sum(len(s.images) for s in shards),
            "shard_hashes": [s.hash for s in shards],
        },
    )


def shard_refs(run: RunDir) -> list[ShardRef]:
    """Every shard of the plan (from `plan/manifest.json`), in order."""
    hashes = run.stage_manifest("plan").summary["shard_hashes"]
    return [ShardRef(i, h) for i, h in enumerate(hashes)]


def load_shard(run: RunDir, ref: ShardRef) -> ShardManifest:
    shard = ShardManifest.model_validate(storage.read_json(run.shard_manifest_url(ref.index)))
    if shard.hash != ref.hash:
        raise ValueError(
            f"{run.shard_manifest_url(ref.index)} changed after the plan stage finished "
            f"(hash {shard.hash} != {ref.hash}); re-run `u2seg stage plan`"
        )
    return shard


# ---- cache keys -----------------------------------------------------------------------------------


def upstream_hashes(spec: StageSpec, run: RunDir) -> dict[str, str]:
    """Hash of each upstream StageManifest (raises, naming the stage to run, if one has not completed)."""
    return {up: run.stage_manifest(up).hash for up in spec.upstream}


def _key(spec: StageSpec, cfg: PipelineConfig, part: str, payload: list[Any]) -> str:
    digest = storage.hash_json([spec.name, spec.version, spec.section(cfg).config_hash(), *payload])
    return f"{spec.name}-{part}-{digest}"


def shard_cache_key(
    spec: StageSpec, cfg: PipelineConfig, shard: ShardRef, upstream: dict[str, str], global_hash: str | None = None
) -> str:
    """stage + stage version + stage config hash + shard manifest hash + upstream manifest hashes
    (+ the stage's own global result, e.g. the cluster centroids, when it runs first)."""
    return _key(spec, cfg, shard.name, [shard.hash, upstream, global_hash])


def global_cache_key(
    spec: StageSpec, cfg: PipelineConfig, upstream: dict[str, str], shard_hashes: Iterable[str] = ()
) -> str:
    """Like `shard_cache_key` for a global step; a step that runs after the shards also keys on their results."""
    return _key(spec, cfg, "global", [upstream, list(shard_hashes)])


# ---- done-markers and step runners ----------------------------------------------------------------


def global_result_url(run: RunDir, stage: str) -> str:
    return run.url(stage, "_global.json")


def shard_error_url(run: RunDir, stage: str, shard: str) -> str:
    return run.url(stage, "_errors", f"{shard}.json")


def _outputs_exist(run: RunDir, outputs: dict[str, str]) -> bool:
    return all(storage.exists(run.url(rel)) for rel in outputs.values())


def completed_shard(run: RunDir, stage: str, shard: str, key: str) -> ShardResult | None:
    """The shard's done-marker if it carries `key` and its outputs exist, else None."""
    url = run.shard_result_url(stage, shard)
    if not storage.exists(url):
        return None
    result = ShardResult.model_validate(storage.read_json(url))
    return result if result.cache_key == key and _outputs_exist(run, result.outputs) else None


def completed_global(run: RunDir, stage: str, key: str) -> GlobalResult | None:
    url = global_result_url(run, stage)
    if not storage.exists(url):
        return None
    data = storage.read_json(url)
    result = GlobalResult.model_validate(data)
    return result if data.get("cache_key") == key and _outputs_exist(run, result.outputs) else None


def _inject_faults(stage: str, shard: str) -> None:
    for entry in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        fault_stage, fault_shard, *mode = entry.split(":", 3)
        if (fault_stage, fault_shard) != (stage, shard):
            continue
        if mode[:1] == ["exit"]:
            guard = mode[1]
            if not os.path.exists(guard):
                open(guard, "w").close()
                os._exit(70)
        else:
            raise InjectedFault(f"{FAULT_ENV} injected a fault into {stage} {shard}")


def _record_error(run: RunDir, stage: str, shard: str, key: str, exc: BaseException) -> None:
    storage.write_json(
        shard_error_url(run, stage, shard),
        {"stage": stage, "shard": shard, "cache_key": key, "error": type(exc).__name__, "message": str(exc),
         "time": datetime.now(timezone.utc).isoformat()},
    )


def run_shard_step(
    spec: StageSpec, run: RunDir, shard: ShardRef, cfg: PipelineConfig, key: str, force: bool = False
) -> ShardResult:
    """Run one shard of a stage unless it is already done with `key`; writes the done-marker last."""
    if not force and (done := completed_shard(run, spec.name, shard.name, key)):
        return done
    start = time.perf_counter()
    try:
        _inject_faults(spec.name, shard.name)
        result = spec.shard_fn()(run, load_shard(run, shard), cfg)
        if (result.stage, result.shard) != (spec.name, shard.name):
            raise ValueError(f"{spec.shard_step} returned a result for {result.stage} {result.shard}")
        result = result.model_copy(update={"cache_key": key, "seconds": time.perf_counter() - start})
        if result.failure_rate > cfg.orchestration.max_failure_rate:
            raise ShardFailedError(result, cfg.orchestration.max_failure_rate)
        if not _outputs_exist(run, result.outputs):
            raise FileNotFoundError(f"{spec.shard_step} listed outputs that do not exist: {result.outputs}")
    except Exception as exc:
        _record_error(run, spec.name, shard.name, key, exc)
        raise
    storage.write_json(run.shard_result_url(spec.name, shard.name), result.model_dump(mode="json"))
    storage.remove(shard_error_url(run, spec.name, shard.name))
    return result


def run_global_step(
    spec: StageSpec, run: RunDir, cfg: PipelineConfig, key: str, force: bool = False
) -> GlobalResult:
    """Run a stage's global step unless `RUN/<stage>/_global.json` is done with `key`."""
    if not force and (done := completed_global(run, spec.name, key)):
        return done
    start = time.perf_counter()
    try:
        result = spec.global_fn()(run, cfg)
        result = result.model_copy(update={"seconds": time.perf_counter() - start})
        if not _outputs_exist(run, result.outputs):
            raise FileNotFoundError(f"{spec.global_step} listed outputs that do not exist: {result.outputs}")
    except Exception as exc:
        _record_error(run, spec.name, "global", key, exc)
        raise
    storage.write_json(global_result_url(run, spec.name), {**result.model_dump(mode="json"), "cache_key": key})
    storage.remove(shard_error_url(run, spec.name, "global"))
    return result


# ---- stage and run manifests ----------------------------------------------------------------------


@dataclass(frozen=True)
class StageRun:
    """One execution of a stage: computes its keys and writes its manifest at the end."""

    spec: StageSpec
    run: RunDir
    cfg: PipelineConfig
    upstream: dict[str, str]

    @classmethod
    def start(cls, spec: StageSpec, run: RunDir, cfg: PipelineConfig) -> "StageRun":
        """Read the upstream manifests; remove this stage's manifest if it was built from other inputs,
        so a failed re-run never leaves an outdated manifest for downstream stages."""
        stage = cls(spec, run, cfg, upstream_hashes(spec, run))
        if run.has_stage(spec.name):
            old = run.stage_manifest(spec.name)
            if (old.stage_version, old.config_hash, old.upstream) != (
                spec.version, spec.section(cfg).config_hash(), stage.upstream
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
        return global_cache_key(self.spec, self.cfg, self.upstream, [r.hash for r in ordered])

    def shard_keys(self, before: GlobalResult | None = None) -> list[tuple[ShardRef, str]]:
        if self.spec.shard_step is None:
            return []
        global_hash = before.hash if before else None
        return [
            (ref, shard_cache_key(self.spec, self.cfg, ref, self.upstream, global_hash))
            for ref in shard_refs(self.run)
        ]

    def finish(self, shards: list[ShardResult], global_result: GlobalResult | None) -> StageManifest:
        """Write `RUN/<stage>/manifest.json` (shards sorted by name) and return it."""
        shards = sorted(shards, key=lambda r: r.shard)
        summary: dict[str, Any] = {}
        if self.spec.shard_step:
            summary = {"n_shards": len(shards), "n_images": sum(r.n_images for r in shards),
                       "n_failed": sum(r.n_failed for r in shards)}
            for r in shards:
                for name, value in r.counts.items():
                    summary[name] = summary.get(name, 0) + value
        if global_result:
            summary.update(global_result.summary)
        section = self.spec.section(self.cfg)
        manifest = StageManifest(
            stage=self.spec.name, stage_version=self.spec.version, code_version=CODE_VERSION,
            config=section.model_dump(mode="json"), config_hash=section.config_hash(), upstream=self.upstream,
            shards=shards, outputs=global_result.outputs if global_result else {}, summary=summary,
            global_result=global_result,
        )
        storage.write_json(self.run.stage_manifest_url(self.spec.name), manifest.model_dump(mode="json"))
        return manifest


def update_run_manifest(run: RunDir, cfg: PipelineConfig, manifests: dict[str, StageManifest] | None = None) -> None:
    """Write `RUN/run.json`: config, code version, and the hash of every stage manifest written so far."""
    stages: dict[str, str] = {}
    if storage.exists(run.run_manifest):
        stages = storage.read_json(run.run_manifest).get("stages", {})
    stages.update({name: m.hash for name, m in (manifests or {}).items()})
    storage.write_json(
        run.run_manifest,
        {"code_version": CODE_VERSION, "updated": datetime.now(timezone.utc).isoformat(),
         "config": cfg.model_dump(mode="json"), "stages": stages},
    )


def load_run_config(run: RunDir) -> PipelineConfig:
    """The config the run was last started with (from `RUN/run.json`)."""
    if not storage.exists(run.run_manifest):
        raise FileNotFoundError(f"{run.run_manifest} does not exist: start the run with `u2seg run` or pass --config")
    return PipelineConfig.model_validate(storage.read_json(run.run_manifest)["config"])


def select_stages(stages: Iterable[str] | None) -> list[str]:
    """Stage names in pipeline order (all of them for None); unknown names are an error."""
    if stages is None:
        return list(STAGES)
    wanted = set(stages)
    if unknown := wanted - set(STAGES):
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    return [name for name in STAGES if name in wanted]


# ---- the sequential runner ------------------------------------------------------------------------


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
    return stage.finish(results, before or after)


def run_pipeline_local(
    cfg: PipelineConfig, run_dir: str, stages: Iterable[str] | None = None, refresh: Iterable[str] = ()
) -> dict[str, StageManifest]:
    """The whole pipeline (or `stages`) sequentially, without Prefect: for notebooks and as a baseline.

    `refresh` names stages to recompute even where their shards are done.
    """
    run = RunDir(run_dir)
    refresh = set(select_stages(refresh))
    update_run_manifest(run, cfg)
    manifests: dict[str, StageManifest] = {}
    for name in select_stages(stages):
        manifests[name] = run_stage_local(STAGES[name], run, cfg, force=name in refresh)
        update_run_manifest(run, cfg, {name: manifests[name]})
    return manifests


# ---- status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageStatus:
    """What `u2seg status` shows for one stage."""

    stage: str
    complete: bool
    n_shards: int
    done: list[str]
    errors: dict[str, str]
    failures: list[dict[str, Any]]
    summary: dict[str, Any]


def run_status(run: RunDir) -> list[StageStatus]:
    """Per stage: complete (manifest written), shards done, shard errors and per-image failures."""
    n_shards = int(run.stage_manifest("plan").summary["n_shards"]) if run.has_stage("plan") else 0
    table = []
    for name, spec in STAGES.items():
        errors = {
            f.removesuffix(".json"): storage.read_json(run.url(name, "_errors", f))["message"]
            for f in storage.listdir(run.url(name, "_errors")) if f.endswith(".json")
        }
        if run.has_stage(name):
            manifest = run.stage_manifest(name)
            results, summary = manifest.shards, manifest.summary
        else:
            results = [
                ShardResult.model_validate(storage.read_json(run.url(name, "_shards", f)))
                for f in storage.listdir(run.url(name, "_shards")) if f.endswith(".json")
            ]
            summary = {}
        table.append(
            StageStatus(
                stage=name, complete=run.has_stage(name), n_shards=n_shards if spec.shard_step else 0,
                done=[r.shard for r in results], errors=errors,
                failures=[f.model_dump() for r in results for f in r.failures], summary=summary,
            )
        )
    return table
