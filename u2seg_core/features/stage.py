"""Features stage: pooled backbone features of every image of a shard, full token grids of the STEGO sample.

Writes zarr `store.zarr/features/<shard>/`:
    pooled    (n, C)       float16  spatial mean of the final normed patch tokens, every decoded image
    image_ids (n,)         int64    rows of `pooled`, in shard order; failed images are left out (recorded)
    tokens    (m, C, h, w) float16  patch tokens at `features.resolution`, only the images of the stored
                                    STEGO sample (features/sample.py), in shard order
and the shard group attributes `token_image_ids` / `token_keys` (image id and sample key u of each
`tokens` row: the index STEGO training reads, one GET per shard with the consolidated metadata).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from .. import storage
from ..backbone import build_backbone
from ..config import PipelineConfig
from ..io.loader import iter_batches
from ..manifest import FailureRecord, ShardManifest, ShardResult
from ..rundir import RunDir
from ..store import FeatureStore
from .sample import image_key, planned_images, store_fraction, train_fraction

STAGE = "features"
GROUP = "features"
TOKENS = "tokens"


def features_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Compute and store the features of one shard (see the module docstring)."""
    features = cfg.features
    backbone = build_backbone(features.backbone)
    grid = features.resolution // backbone.patch_size
    stored_below = store_fraction(planned_images(run), features.stego_sample)
    attrs = {
        "backbone": features.backbone.arch,
        "weights": features.backbone.weights,
        "random_init": features.backbone.random_init,
        "resolution": features.resolution,
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.embed_dim,
        "u2seg_version": version("u2seg"),
        "store_fraction": stored_below,
    }
    failures: list[FailureRecord] = []
    token_ids: list[int] = []
    token_keys: list[float] = []
    start = time.perf_counter()
    with FeatureStore(run.store).shard_writer(GROUP, shard.name, attrs) as writer:
        writer.append(
            {
                TOKENS: np.zeros((0, backbone.embed_dim, grid, grid), np.float16),
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
            keys = np.array([image_key(record.file_name, features.sample_seed) for record in batch.records])
            stored = np.flatnonzero(keys < stored_below)
            writer.append(
                {
                    TOKENS: tokens[stored].half().cpu().numpy(),
                    "pooled": tokens.mean(dim=(2, 3)).half().cpu().numpy(),
                    "image_ids": np.array([record.image_id for record in batch.records], np.int64),
                }
            )
            token_ids.extend(batch.records[i].image_id for i in stored)
            token_keys.extend(keys[stored].tolist())
        writer.attrs.update({"token_image_ids": token_ids, "token_keys": token_keys})
    seconds = time.perf_counter() - start
    n_written = len(shard.images) - len(failures)
    return ShardResult(
        stage=STAGE,
        shard=shard.name,
        n_images=len(shard.images),
        n_failed=len(failures),
        failures=failures,
        outputs={"store": run.rel(storage.join(run.store, GROUP, shard.name))},
        counts={"images_per_s": n_written / seconds if seconds > 0 else 0.0, "stored_grids": float(len(token_ids))},
    )


@dataclass(frozen=True)
class SampleShard:
    """The trained sample's rows of one shard's stored `tokens` (rows ascending) and their image ids."""

    shard: str
    rows: np.ndarray  # (m,) int64
    image_ids: np.ndarray  # (m,) int64


def training_sample(run: RunDir, shards: list[str], cfg: PipelineConfig) -> list[SampleShard]:
    """The STEGO training sample (features/sample.py) over `shards`, in shard order; reads only the shard
    group metadata (one small object per shard), never a token grid. Shards without sample rows are left out."""
    store = FeatureStore(run.store)
    below = train_fraction(planned_images(run), cfg.features.stego_sample)
    sample = []
    for shard in shards:
        attrs = store.shard_attrs(GROUP, shard)
        if attrs.get("store_fraction", 0.0) < below:
            raise ValueError(
                f"{run.store}/{GROUP}/{shard} stored token grids for sample keys < {attrs.get('store_fraction')} but "
                f"the plan's {planned_images(run)} images need keys < {below} (the dataset shrank); re-run the "
                f"features stage with `--refresh features`"
            )
        keys = np.asarray(attrs.get("token_keys", []), dtype=np.float64)
        rows = np.flatnonzero(keys < below)
        if len(rows):
            sample.append(SampleShard(shard, rows, np.asarray(attrs["token_image_ids"], np.int64)[rows]))
    return sample
