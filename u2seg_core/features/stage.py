"""Features stage: backbone patch tokens of every image of a shard, stored for STEGO.

Writes zarr `store.zarr/features/<shard>/`:
    tokens    (n, C, h, w) float16  final normed patch tokens at `features.resolution`
    pooled    (n, C)       float16  spatial mean of the tokens (STEGO's global KNN feature)
    image_ids (n,)         int64    rows in shard order; failed images are left out (recorded)
"""

from __future__ import annotations

import time
from importlib.metadata import version

import numpy as np

from .. import storage
from ..backbone import build_backbone
from ..config import PipelineConfig
from ..io.loader import iter_batches
from ..manifest import FailureRecord, ShardManifest, ShardResult
from ..rundir import RunDir
from ..store import FeatureStore

STAGE = "features"
GROUP = "features"
ARRAYS = ("tokens", "pooled", "image_ids")


def features_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Compute and store the backbone tokens of one shard (see the module docstring)."""
    features = cfg.features
    backbone = build_backbone(features.backbone)
    grid = features.resolution // backbone.patch_size
    attrs = {
        "backbone": features.backbone.arch,
        "weights": features.backbone.weights,
        "random_init": features.backbone.random_init,
        "resolution": features.resolution,
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.embed_dim,
        "u2seg_version": version("u2seg"),
    }
    failures: list[FailureRecord] = []
    n_written = 0
    start = time.perf_counter()
    with FeatureStore(run.store).shard_writer(GROUP, shard.name, attrs) as writer:
        writer.append(
            {
                "tokens": np.zeros((0, backbone.embed_dim, grid, grid), np.float16),
                "pooled": np.zeros((0, backbone.embed_dim), np.float16),
                "image_ids": np.zeros(0, np.int64),
            }
        )
        batches = iter_batches(
            shard,
            features.resolution,
            features.backbone.batch_size,
            features.backbone.num_workers,
            stage=STAGE,
            resample="bilinear",
        )
        for batch in batches:
            failures.extend(batch.failures)
            if not batch.records:
                continue
            tokens = backbone(batch.pixels, frozenset({"tokens"})).tokens
            writer.append(
                {
                    "tokens": tokens.half().cpu().numpy(),
                    "pooled": tokens.mean(dim=(2, 3)).half().cpu().numpy(),
                    "image_ids": np.array([record.image_id for record in batch.records], np.int64),
                }
            )
            n_written += len(batch.records)
    seconds = time.perf_counter() - start
    return ShardResult(
        stage=STAGE,
        shard=shard.name,
        n_images=len(shard.images),
        n_failed=len(failures),
        failures=failures,
        outputs={"store": run.rel(storage.join(run.store, GROUP, shard.name))},
        counts={"images_per_s": n_written / seconds if seconds > 0 else 0.0},
    )


def load_features(run: RunDir, shards: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated (tokens (N, C, h, w) f16, pooled (N, C) f16, image_ids (N,) i64) of `shards`."""
    if not shards:
        raise ValueError("load_features needs at least one shard")
    store = FeatureStore(run.store)
    parts = {name: [array for _, array in store.iter_shards(GROUP, name, shards)] for name in ARRAYS}
    return tuple(np.concatenate(parts[name]) for name in ARRAYS)  # type: ignore[return-value]
