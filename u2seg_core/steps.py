"""Step runners and done-markers: run one shard (or a global step) of a stage unless it is already done.

A shard is done when its done-marker `RUN/<stage>/_shards/<shard>.json` carries the current cache key and every
file it vouches for is still there with its recorded size. Step authors only return the paths of what they
wrote in `ShardResult.outputs` / `GlobalResult.outputs` (a file, or a folder holding only this shard's files);
the runner lists them into `files` (path -> size) and writes the marker last, atomically, so a killed worker
leaves no marker and a deleted or truncated output makes the shard recompute.

`step_hooks` lets tests run code before every step (fault injection lives in tests/, not here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, TypeVar

from . import storage
from .config import PipelineConfig
from .manifest import GlobalResult, ShardManifest, ShardResult, shard_name
from .registry import StageSpec
from .rundir import RunDir

GLOBAL = "global"

StepHook = Callable[[str, str], None]
step_hooks: list[StepHook] = []
"""Called as hook(stage, shard name or "global") before every step this process runs (for tests)."""

MAX_LISTED_FAILURES = 20


class ShardFailedError(RuntimeError):
    """A shard whose per-image failure rate passed `orchestration.max_failure_rate`."""

    def __init__(self, result: ShardResult, max_rate: float):
        self.result = result
        lines = [f"  image {f.image_id} ({f.file_name}): {f.reason}" for f in result.failures[:MAX_LISTED_FAILURES]]
        more = len(result.failures) - len(lines)
        super().__init__(
            f"{result.stage} {result.shard}: {result.n_failed}/{result.n_images} images failed "
            f"(rate {result.failure_rate:.2f} > max_failure_rate {max_rate}):\n" + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix the images or raise orchestration.max_failure_rate, then re-run the stage."
        )


@dataclass(frozen=True)
class ShardRef:
    """A shard as the plan manifest lists it: index and content hash (the manifest itself is read lazily)."""

    index: int
    hash: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_refs(run: RunDir, plan: GlobalResult | None = None) -> list[ShardRef]:
    """Every shard of the plan, in index order: from `plan` (the plan stage's own global result, while the
    plan stage runs), else from `plan/manifest.json`."""
    listed = plan.summary["shards"] if plan is not None else run.plan_shards()
    return [ShardRef(int(i), h) for i, h in listed]


def load_shard(run: RunDir, ref: ShardRef) -> ShardManifest:
    shard = ShardManifest.model_validate(storage.read_json(run.shard_manifest_url(ref.index)))
    if shard.hash != ref.hash:
        raise ValueError(
            f"{run.shard_manifest_url(ref.index)} changed after the plan stage finished "
            f"(hash {shard.hash} != {ref.hash}); re-run `u2seg stage plan`"
        )
    return shard


# ---- what a done-marker vouches for ---------------------------------------------------------------


def _listing(run: RunDir, rel: str) -> dict[str, int]:
    """Relative path -> size of the file `rel`, or of every file below the folder `rel` (one listing call)."""
    fs, path = storage.get_fs(run.url(rel))
    base = run.url(rel)
    out = {}
    for name, info in fs.find(path, detail=True).items():
        if info.get("type") != "file" or name.rsplit("/", 1)[-1].startswith("."):  # ".x.partial": a write under way
            continue
        suffix = name[len(path.rstrip("/")):].lstrip("/")
        out[run.rel(storage.join(base, suffix)) if suffix else rel] = int(info.get("size") or 0)
    return out


def output_files(run: RunDir, outputs: dict[str, str]) -> dict[str, int]:
    """Every file under `outputs` with its size (what the done-marker vouches for)."""
    files: dict[str, int] = {}
    for rel in outputs.values():
        found = _listing(run, rel)
        if not found:
            raise FileNotFoundError(f"output {run.url(rel)} does not exist (or is an empty folder)")
        files.update(found)
    return files


def files_intact(run: RunDir, outputs: dict[str, str], files: dict[str, int]) -> bool:
    """True when every vouched file exists with its recorded size (a marker without a file list never is)."""
    if outputs and not files:
        return False
    present: dict[str, int] = {}
    for rel in outputs.values():
        present.update(_listing(run, rel))
    return all(present.get(rel) == size for rel, size in files.items())


R = TypeVar("R", ShardResult, GlobalResult)


def _vouch(run: RunDir, result: R, step: str) -> R:
    try:
        files = output_files(run, result.outputs)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{step}: {exc}") from exc
    return result.model_copy(update={"files": files})


# ---- done-markers ---------------------------------------------------------------------------------


def global_result_url(run: RunDir, stage: str) -> str:
    return run.url(stage, "_global.json")


def shard_error_url(run: RunDir, stage: str, shard: str) -> str:
    return run.url(stage, "_errors", f"{shard}.json")


def completed_shard(run: RunDir, stage: str, shard: str, key: str) -> ShardResult | None:
    """The shard's done-marker if it carries `key` and its files are intact, else None."""
    result = run.shard_result(stage, shard)
    if result is None or result.cache_key != key:
        return None
    return result if files_intact(run, result.outputs, result.files) else None


def completed_global(run: RunDir, stage: str, key: str) -> GlobalResult | None:
    url = global_result_url(run, stage)
    if not storage.exists(url):
        return None
    result = GlobalResult.model_validate(storage.read_json(url))
    if result.cache_key != key:
        return None
    return result if files_intact(run, result.outputs, result.files) else None


def _record_error(run: RunDir, stage: str, shard: str, key: str, exc: BaseException) -> None:
    storage.write_json(
        shard_error_url(run, stage, shard),
        {"stage": stage, "shard": shard, "cache_key": key, "error": type(exc).__name__, "message": str(exc),
         "time": datetime.now(timezone.utc).isoformat()},
    )


def _run_hooks(stage: str, shard: str) -> None:
    for hook in list(step_hooks):
        hook(stage, shard)


# ---- step runners ---------------------------------------------------------------------------------


def run_shard_step(
    spec: StageSpec, run: RunDir, shard: ShardRef, cfg: PipelineConfig, key: str, force: bool = False
) -> ShardResult:
    """Run one shard of a stage unless it is already done with `key`; writes the done-marker last."""
    storage.configure(cfg.storage.fsspec_options())
    if not force and (done := completed_shard(run, spec.name, shard.name, key)):
        return done
    start = time.perf_counter()
    try:
        _run_hooks(spec.name, shard.name)
        result = spec.shard_fn()(run, load_shard(run, shard), cfg)
        if (result.stage, result.shard) != (spec.name, shard.name):
            raise ValueError(f"{spec.shard_step} returned a result for {result.stage} {result.shard}")
        result = result.model_copy(update={"cache_key": key, "seconds": time.perf_counter() - start})
        if result.failure_rate > cfg.orchestration.max_failure_rate:
            raise ShardFailedError(result, cfg.orchestration.max_failure_rate)
        result = _vouch(run, result, f"{spec.shard_step} on {shard.name}")
    except Exception as exc:
        _record_error(run, spec.name, shard.name, key, exc)
        raise
    storage.write_json(run.shard_result_url(spec.name, shard.name), result.model_dump(mode="json"))
    storage.remove(shard_error_url(run, spec.name, shard.name))
    return result


def run_global_step(
    spec: StageSpec, run: RunDir, cfg: PipelineConfig, key: str, force: bool = False
) -> GlobalResult:
    """Run a stage's global step unless `RUN/<stage>/_global.json` is done with `key` (a `relist` stage's
    global step always runs)."""
    storage.configure(cfg.storage.fsspec_options())
    if not (force or spec.relist) and (done := completed_global(run, spec.name, key)):
        return done
    start = time.perf_counter()
    try:
        _run_hooks(spec.name, GLOBAL)
        result = spec.global_fn()(run, cfg)
        result = result.model_copy(update={"cache_key": key, "seconds": time.perf_counter() - start})
        result = _vouch(run, result, spec.global_step)
    except Exception as exc:
        _record_error(run, spec.name, GLOBAL, key, exc)
        raise
    storage.write_json(global_result_url(run, spec.name), result.model_dump(mode="json"))
    storage.remove(shard_error_url(run, spec.name, GLOBAL))
    return result
