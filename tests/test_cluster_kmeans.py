"""faiss K-means wrapper: reproducibility, degenerate data, metrics, assignment vs brute force."""

import numpy as np
import pytest

from u2seg_core.cluster.kmeans import assign, kmeans_fit, reseed_empty, sample_indices


def blobs(n_per: int, centers: np.ndarray, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centers)), n_per)
    return (centers[labels] + spread * rng.standard_normal((len(labels), centers.shape[1]))).astype(np.float32), labels


def test_same_seed_same_centroids_other_seed_differs():
    x = np.random.default_rng(0).standard_normal((4000, 16)).astype(np.float32)
    a, stats = kmeans_fit(x, 20, niter=10, seed=3, max_points_per_centroid=50)
    b, _ = kmeans_fit(x, 20, niter=10, seed=3, max_points_per_centroid=50)
    c, _ = kmeans_fit(x, 20, niter=10, seed=4, max_points_per_centroid=50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert stats["n_train"] == 20 * 50 and stats["n_points"] == 4000


def test_sample_indices_seeded_sorted_and_bounded():
    assert np.array_equal(sample_indices(50, 10, 8, seed=0), np.arange(50))
    rows = sample_indices(1000, 10, 8, seed=1)
    assert len(rows) == 80 and len(np.unique(rows)) == 80 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, sample_indices(1000, 10, 8, seed=1))
    assert not np.array_equal(rows, sample_indices(1000, 10, 8, seed=2))


@pytest.mark.parametrize("n_distinct, n_rows", [(5, 100), (3, 3), (1, 40)])
def test_more_clusters_than_distinct_points_is_finite(n_distinct, n_rows):
    points = np.random.default_rng(1).standard_normal((n_distinct, 8)).astype(np.float32)
    x = points[np.arange(n_rows) % n_distinct]
    centroids, stats = kmeans_fit(x, 10, niter=20, seed=0)
    assert centroids.shape == (10, 8) and np.isfinite(centroids).all()
    labels, dist = assign(x, centroids)
    assert labels.min() >= 0 and labels.max() < 10
    assert len(np.unique(labels)) == n_distinct  # every distinct point owns a cluster...
    assert stats["n_empty"] == 10 - n_distinct  # ...and the surplus clusters are reported empty
    assert dist.max() < 1e-4


def test_reseed_moves_empty_cluster_onto_far_point():
    x = np.array([[0, 0], [0.1, 0], [5, 5], [5.2, 5], [9, 9]], dtype=np.float32)
    centroids = np.array([[0.05, 0], [5.5, 5.5], [100, 100]], dtype=np.float32)  # the third owns nothing
    new, moved, labels, dist = reseed_empty(x, centroids, "l2")
    np.testing.assert_array_equal((labels, dist), assign(x, new))
    assert moved == 1
    assert np.array_equal(np.bincount(labels, minlength=3) > 0, [True, True, True])
    np.testing.assert_array_equal(new[2], [9, 9])  # the point farthest from its centroid


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_assign_matches_brute_force(metric):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((700, 12)).astype(np.float16)
    centroids = rng.standard_normal((9, 12)).astype(np.float32)
    xf = x.astype(np.float64)
    if metric == "cosine":
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        xn = xf / np.linalg.norm(xf, axis=1, keepdims=True)
        expected_dist = 1 - xn @ centroids.T
    else:
        expected_dist = ((xf[:, None, :] - centroids[None]) ** 2).sum(-1)
    labels, dist = assign(x, centroids, metric, batch_size=128)
    np.testing.assert_array_equal(labels, expected_dist.argmin(1))
    np.testing.assert_allclose(dist, expected_dist.min(1), atol=1e-4)


def test_separated_blobs_recovered_with_both_metrics():
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((6, 32)) * 10
    x, truth = blobs(80, centers, 0.3, seed=4)
    for metric in ("l2", "cosine"):
        # Lloyd from a random sample (U2Seg's init) may merge two blobs; the best of 3 seeds may not
        fits = [kmeans_fit(x, 6, niter=30, seed=seed, metric=metric) for seed in range(3)]
        centroids, stats = min(fits, key=lambda fit: fit[1]["inertia"])
        labels, _ = assign(x, centroids, metric)
        pairs = set(zip(truth.tolist(), labels.tolist()))
        assert len(pairs) == 6 and len({p[1] for p in pairs}) == 6, metric
        assert stats["n_empty"] == 0
        if metric == "l2":  # a Lloyd fixed point: every centroid is the mean of its points
            means = np.stack([x[labels == c].mean(0) for c in range(6)])
            np.testing.assert_allclose(centroids, means, atol=1e-4)
    norms = np.linalg.norm(kmeans_fit(x, 6, niter=5, seed=0, metric="cosine")[0], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_cosine_ignores_scale_l2_does_not():
    # two directions, each at two very different scales: cosine groups by direction, L2 by scale
    base = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)
    rng = np.random.default_rng(5)
    x = np.concatenate([base[i] * s + 0.01 * rng.standard_normal((30, 4)) for i in (0, 1) for s in (1, 50)])
    direction = np.repeat([0, 0, 1, 1], 30)
    cos_labels, _ = assign(x, kmeans_fit(x, 2, niter=20, seed=0, metric="cosine")[0], "cosine")
    l2_labels, _ = assign(x, kmeans_fit(x, 2, niter=20, seed=0, metric="l2")[0], "l2")
    assert len(set(zip(direction.tolist(), cos_labels.tolist()))) == 2
    assert len(set(zip(direction.tolist(), l2_labels.tolist()))) > 2


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        kmeans_fit(np.full((10, 3), np.nan, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="at least one"):
        kmeans_fit(np.zeros((0, 3), dtype=np.float32), 2)
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        kmeans_fit(np.zeros((10, 3), dtype=np.float32), 2, use_gpu="always")
