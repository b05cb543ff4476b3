"""Cluster stage on a fake run: streamed sample == in-memory fit, per-shard assignments, failures."""

import numpy as np
import pytest

from u2seg_core import storage
from u2seg_core.cluster.kmeans import assign, kmeans_fit
from u2seg_core.cluster.stage import assign_shard, fit_centroids
from u2seg_core.config import ClusterConfig, PipelineConfig
from u2seg_core.manifest import ImageRecord
from u2seg_core.store import FeatureStore


def make_cluster_run(planned_run, rng, per_shard=(3, 4, 0)):
    """A run whose maskcut store holds 8-d embeddings of 4 blobs (5 masks per image)."""
    shards, embeddings = [], []
    image_id = 1
    for n_images in per_shard:
        shards.append(
            [ImageRecord(image_id=image_id + i, file_name=f"{image_id + i}.png", url="unused") for i in range(n_images)]
        )
        image_id += n_images
    run = planned_run(shards)
    store = FeatureStore(run.store)
    centers = rng.standard_normal((4, 8)) * 5
    for index, images in enumerate(shards):
        ann_ids = np.array([im.image_id * 100 + j for im in images for j in range(5)], dtype=np.int64)
        emb = (centers[rng.integers(0, 4, len(ann_ids))] + 0.2 * rng.standard_normal((len(ann_ids), 8)))
        emb = emb.astype(np.float16).reshape(-1, 8)
        store.write_shard("maskcut", f"shard-{index:05d}", {"embeddings": emb, "ann_ids": ann_ids})
        embeddings.append(emb)
    return run, np.concatenate(embeddings)


def test_streamed_fit_equals_in_memory_fit_and_assignments(planned_run):
    run, embeddings = make_cluster_run(planned_run, np.random.default_rng(0))
    params = ClusterConfig(k=4, niter=10, seed=2, max_points_per_centroid=6)  # 35 masks > 24: sampled
    cfg = PipelineConfig.demo(cluster=params)
    result = fit_centroids(run, cfg)
    centroids = FeatureStore(run.store).read_array("cluster", "centroids")
    expected, stats = kmeans_fit(embeddings, 4, niter=10, seed=2, max_points_per_centroid=6)
    np.testing.assert_array_equal(centroids, expected)
    assert result.summary["n_points"] == 35 and result.summary["n_train"] == 24 == stats["n_train"]
    assert storage.exists(run.url(result.outputs["centroids"]))

    labels, _ = assign(embeddings, centroids)
    offset = 0
    for shard in run.shards():
        shard_result = assign_shard(run, shard, cfg)
        assignments = storage.read_json(run.url(shard_result.outputs["assignments"]))
        ann_ids = FeatureStore(run.store).read("maskcut", shard.name, "ann_ids")
        assert list(assignments) == [str(a) for a in ann_ids]
        np.testing.assert_array_equal(list(assignments.values()), labels[offset : offset + len(ann_ids)] + 1)
        assert shard_result.n_failed == 0 and shard_result.counts["n_masks"] == len(ann_ids)
        offset += len(ann_ids)


def test_nonfinite_embedding_becomes_image_failure_and_stale_k_is_refused(planned_run):
    run, _ = make_cluster_run(planned_run, np.random.default_rng(1), per_shard=(2,))
    store = FeatureStore(run.store)
    emb = store.read("maskcut", "shard-00000", "embeddings")
    ann_ids = store.read("maskcut", "shard-00000", "ann_ids")
    emb[7] = np.nan  # image 2, mask 2
    store.write_shard("maskcut", "shard-00000", {"embeddings": emb, "ann_ids": ann_ids})
    cfg = PipelineConfig.demo(cluster=ClusterConfig(k=3, niter=5))
    assert fit_centroids(run, cfg).summary["n_nonfinite_in_sample"] == 1
    result = assign_shard(run, run.shards()[0], cfg)
    assert [(f.image_id, f.stage) for f in result.failures] == [(2, "cluster")]
    assert "202" not in storage.read_json(run.url(result.outputs["assignments"]))
    with pytest.raises(ValueError, match="k=3"):
        assign_shard(run, run.shards()[0], PipelineConfig.demo(cluster=ClusterConfig(k=5)))
