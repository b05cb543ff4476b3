"""Plan stage: list the source, cut it into fixed-size shards, write one ShardManifest per shard."""

from __future__ import annotations

from .. import storage
from ..config import PipelineConfig, SourceConfig
from ..manifest import ImageRecord, ShardManifest
from ..rundir import RunDir
from ..synth import dataset_is_complete, dataset_paths, generate_dataset
from .sources import list_images

SYNTHETIC_DIR = "synthetic"


def make_shards(records: list[ImageRecord], shard_size: int, source: str) -> list[ShardManifest]:
    """Consecutive slices of `shard_size` records (the last one may be shorter), in order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [
        ShardManifest(shard_index=i, source=source, images=records[start : start + shard_size])
        for i, start in enumerate(range(0, len(records), shard_size))
    ]


def synthetic_source(run: RunDir, cfg: SourceConfig) -> SourceConfig:
    """Generate the synthetic dataset under RUN/synthetic (unless already there with this config) and
    return the COCO source config that reads it."""
    out = run.url(SYNTHETIC_DIR)
    if not dataset_is_complete(out, cfg.synthetic):
        storage.remove(out, recursive=True)  # stale images of another config must not linger
        generate_dataset(out, cfg.synthetic)
    paths = dataset_paths(out)
    return cfg.model_copy(update={"uri": paths["instances"], "kind": "coco", "image_root": paths["images"]})


def plan_shards(run: RunDir, cfg: PipelineConfig) -> list[ShardManifest]:
    """List `cfg.source` (synthesising it when `source.uri` is None), write RUN/plan/shards/shard-NNNNN.json.

    Shard files left over from an earlier plan with more shards are removed. The plan StageManifest is
    written by the pipeline layer, not here.
    """
    source = synthetic_source(run, cfg.source) if cfg.source.uri is None else cfg.source
    shards = make_shards(list_images(source), source.shard_size, source=source.uri)
    for shard in shards:
        storage.write_json(run.shard_manifest_url(shard.shard_index), shard.model_dump(mode="json"))
    shard_dir = run.url("plan", "shards")
    current = {f"{shard.name}.json" for shard in shards}
    for name in storage.listdir(shard_dir):
        if name.startswith("shard-") and name not in current:
            storage.remove(storage.join(shard_dir, name))
    return shards
