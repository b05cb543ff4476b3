"""Cluster stage: one global K-means over every MaskCut mask embedding, then per-shard assignment.

Reads zarr `store.zarr/maskcut/<shard>/{embeddings (m, D) f16, ann_ids (m,) i64}`.
Writes zarr `store.zarr/cluster/centroids (K, D) f32` (global step) and
`cluster/assignments/<shard>.json` = {str(ann_id): cluster id 1..K} (shard step).

The training sample is drawn by global row index (`kmeans.sample_indices`) while streaming the
shards, so memory holds at most `k * max_points_per_centroid` embeddings, and the result equals
`kmeans_fit` on all embeddings at once. Masks whose embedding is not finite get no cluster: their
image is recorded as a failure (the merge stage then records it too).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import storage
from ..config import ClusterConfig, PipelineConfig
from ..manifest import FailureRecord, GlobalResult, ShardManifest, ShardResult, shard_name
from ..rundir import RunDir
from ..store import FeatureStore
from ..store.feature_store import read_rows
from .kmeans import assign, kmeans_fit, sample_indices

STAGE = "cluster"
GROUP = "cluster"
SOURCE_GROUP = "maskcut"
CENTROIDS = "centroids"
ANN_ID_STRIDE = 100  # annotation id = image_id * 100 + mask index (docs/architecture.md)


def assignments_url(run: RunDir, shard: str) -> str:
    return run.url(STAGE, "assignments", f"{shard}.json")


def fit_centroids(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """Fit the K-means centroids on (a seeded sample of) all mask embeddings of the run."""
    start = time.perf_counter()
    params = cfg.cluster
    store = FeatureStore(run.store)
    shards = [shard_name(index) for index, _ in run.plan_shards()]
    # row counts from the arrays' metadata (one small GET per shard: the consolidated shard group)
    sizes = [store.open_array(SOURCE_GROUP, shard, "ann_ids").shape[0] for shard in shards]
    n_points = sum(sizes)
    if n_points == 0:
        raise ValueError(f"MaskCut found no masks in any of the {len(shards)} shards of {run.root}; nothing to cluster")
    rows = sample_indices(n_points, params.k, params.max_points_per_centroid, params.seed)
    sample = gather_rows(store, shards, sizes, rows)
    finite = np.isfinite(sample).all(axis=1)
    centroids, stats = kmeans_fit(
        sample[finite],
        params.k,
        niter=params.niter,
        seed=params.seed,
        metric=params.metric,
        max_points_per_centroid=params.max_points_per_centroid,
        use_gpu=params.use_gpu,
    )
    store.write_array(GROUP, CENTROIDS, centroids, attrs=centroid_attrs(params, n_points))
    summary: dict[str, Any] = {**stats, "n_points": n_points, "n_nonfinite_in_sample": int((~finite).sum())}
    warnings = [
        f"cluster.k={params.k} is more than the {n_points} MaskCut masks of the run: at least "
        f"{params.k - n_points} clusters stay empty; lower cluster.k or add images"
    ] if params.k > n_points else []
    return GlobalResult(
        stage=STAGE,
        outputs={CENTROIDS: run.rel(storage.join(run.store, GROUP, CENTROIDS))},
        summary=summary,
        warnings=warnings,
        seconds=time.perf_counter() - start,
    )


def gather_rows(store: FeatureStore, shards: list[str], sizes: list[int], rows: np.ndarray) -> np.ndarray:
    """(len(rows), D) float32 embeddings at sorted global `rows`, shard by shard (only their chunks are read)."""
    parts = []
    offset = 0
    for shard, size in zip(shards, sizes):
        embeddings = store.open_array(SOURCE_GROUP, shard, "embeddings")
        if embeddings.shape[0] != size:
            raise ValueError(f"maskcut/{shard}: {embeddings.shape[0]} embeddings but {size} ann_ids; re-run maskcut")
        lo, hi = np.searchsorted(rows, [offset, offset + size])
        parts.append(np.asarray(read_rows(embeddings, rows[lo:hi] - offset), dtype=np.float32))
        offset += size
    return np.concatenate(parts)


def centroid_attrs(params: ClusterConfig, n_points: int) -> dict[str, Any]:
    return {"k": params.k, "metric": params.metric, "seed": params.seed, "niter": params.niter, "n_points": n_points}


def assign_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Label every mask of one shard with its nearest centroid (cluster ids 1..K)."""
    start = time.perf_counter()
    params = cfg.cluster
    store = FeatureStore(run.store)
    centroids = store.read_array(GROUP, CENTROIDS)
    attrs = store.array_attrs(GROUP, CENTROIDS)
    if attrs.get("k") != params.k or attrs.get("metric") != params.metric:
        raise ValueError(
            f"{run.store}/{GROUP}/{CENTROIDS} was fitted with k={attrs.get('k')}, metric={attrs.get('metric')} "
            f"but the config asks for k={params.k}, metric={params.metric}; re-run the cluster stage's fit"
        )
    embeddings = store.read(SOURCE_GROUP, shard.name, "embeddings")
    ann_ids = store.read(SOURCE_GROUP, shard.name, "ann_ids").astype(np.int64)
    if len(embeddings) != len(ann_ids):
        raise ValueError(
            f"maskcut/{shard.name}: {len(embeddings)} embeddings but {len(ann_ids)} ann_ids; re-run maskcut"
        )
    finite = np.isfinite(embeddings).all(axis=1) if len(embeddings) else np.ones(0, dtype=bool)
    labels, distances = assign(embeddings[finite], centroids, params.metric, use_gpu=params.use_gpu)
    assignments = {str(int(a)): int(c) + 1 for a, c in zip(ann_ids[finite], labels)}
    url = assignments_url(run, shard.name)
    storage.write_json(url, assignments)

    names = {im.image_id: im.file_name for im in shard.images}
    bad: dict[int, list[int]] = {}
    for ann_id in ann_ids[~finite].tolist():
        bad.setdefault(ann_id // ANN_ID_STRIDE, []).append(ann_id)
    failures = [
        FailureRecord(
            image_id=image_id,
            file_name=names.get(image_id, ""),
            stage=STAGE,
            reason=f"mask embeddings {ids} contain NaN or inf (bad MaskCut output); re-run maskcut for this shard",
        )
        for image_id, ids in sorted(bad.items())
    ]
    return ShardResult(
        stage=STAGE,
        shard=shard.name,
        n_images=len(shard.images),
        n_failed=len(failures),
        failures=failures,
        outputs={"assignments": run.rel(url)},
        counts={
            "n_masks": float(len(ann_ids)),
            "n_assigned": float(len(assignments)),
            "inertia": float(distances.astype(np.float64).sum()),
        },
        seconds=time.perf_counter() - start,
    )
