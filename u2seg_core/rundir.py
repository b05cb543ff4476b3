"""The run directory: where every stage reads and writes (local path or s3:// URL).

Layout (docs/architecture.md keeps the full map):

    RUN/run.json                              run manifest
    RUN/plan/manifest.json                    plan StageManifest
    RUN/plan/shards/shard-00000.json          ShardManifest
    RUN/store.zarr/<stage>/shard-00000/...    zarr v3 arrays, one group per stage, one per shard
    RUN/<stage>/_shards/shard-00000.json      ShardResult: the shard's done-marker (written last)
    RUN/<stage>/manifest.json                 StageManifest (written when the stage completes)
    RUN/<stage>/...                           the stage's own files (see each stage)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from . import storage
from .manifest import ShardManifest, ShardResult, StageManifest, shard_name


@dataclass(frozen=True)
class RunDir:
    """Paths of one run. `root` is a local folder or an fsspec URL."""

    root: str

    def url(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def rel(self, url: str) -> str:
        """Path relative to the run root (what manifests store)."""
        prefix = self.root.rstrip("/") + "/"
        if not url.startswith(prefix):
            raise ValueError(f"{url} is not inside the run directory {self.root}")
        return url[len(prefix):]

    @property
    def run_manifest(self) -> str:
        return self.url("run.json")

    @property
    def store(self) -> str:
        """Root of the zarr v3 feature store."""
        return self.url("store.zarr")

    def stage_dir(self, stage: str) -> str:
        return self.url(stage)

    def stage_manifest_url(self, stage: str) -> str:
        return self.url(stage, "manifest.json")

    def shard_manifest_url(self, shard_index: int) -> str:
        return self.url("plan", "shards", f"{shard_name(shard_index)}.json")

    def shard_result_url(self, stage: str, shard: str) -> str:
        return self.url(stage, "_shards", f"{shard}.json")

    def image_output_url(self, stage: str, folder: str, shard: str, image_id: int, suffix: str = ".png") -> str:
        """Per-image output file, nested by shard so no folder grows with the dataset:
        `RUN/<stage>/<folder>/<shard>/<image_id><suffix>` (e.g. merge/panoptic/shard-00003/3017.png)."""
        return self.url(stage, folder, shard, f"{image_id}{suffix}")

    # ---- readers -------------------------------------------------------------------------

    def plan_shards(self) -> list[tuple[int, str]]:
        """(shard index, shard manifest hash) of every shard of the plan, in index order. Indices are hash
        buckets (io/plan.py): empty buckets have no shard, so indices need not be contiguous."""
        return [(int(i), h) for i, h in self.stage_manifest("plan").summary["shards"]]

    def iter_shards(self) -> Iterator[ShardManifest]:
        """The plan's shard manifests in index order, read one at a time (memory flat in the number of images)."""
        for index, _ in self.plan_shards():
            yield ShardManifest.model_validate(storage.read_json(self.shard_manifest_url(index)))

    def shards(self) -> list[ShardManifest]:
        """All shard manifests of the plan at once (small runs and tests; pipeline steps use `iter_shards`)."""
        return list(self.iter_shards())

    def is_run(self) -> bool:
        """True when this directory was started by `u2seg run` (it has RUN/run.json)."""
        return storage.exists(self.run_manifest)

    def stage_manifest(self, stage: str) -> StageManifest:
        url = self.stage_manifest_url(stage)
        if not storage.exists(url):
            raise FileNotFoundError(
                f"stage '{stage}' has not completed in {self.root} (no {url}); run `u2seg stage {stage}` first"
            )
        return StageManifest.model_validate(storage.read_json(url))

    def has_stage(self, stage: str) -> bool:
        return storage.exists(self.stage_manifest_url(stage))

    def shard_result(self, stage: str, shard: str) -> ShardResult | None:
        url = self.shard_result_url(stage, shard)
        if not storage.exists(url):
            return None
        return ShardResult.model_validate(storage.read_json(url))
