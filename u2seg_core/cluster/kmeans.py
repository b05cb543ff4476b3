"""K-means of mask embeddings with faiss (U2Seg's Lloyd K-means, with its empty-cluster NaNs fixed).

`kmeans_fit` trains on a seeded sample of at most `k * max_points_per_centroid` rows (faiss's own
rule, but drawn by us so the stage can stream the same sample out of the store), then re-seeds
every cluster that ended empty with the training point farthest from its centroid. Centroids are
never NaN, also when there are fewer distinct points than clusters: the surplus clusters keep a
duplicate centroid, stay empty and are counted in the stats. `assign` labels any number of rows
in batches through a flat (exact) faiss index, on the GPU when faiss-gpu is installed.
"""

from __future__ import annotations

from typing import Any, Literal

import faiss
import numpy as np

Metric = Literal["l2", "cosine"]
GpuUse = Literal["auto", "never", "always"]

ASSIGN_BATCH = 65536
RESEED_ROUNDS = 10
# Points closer than this (relative to the mean squared norm) to their centroid count as duplicates
# of it: faiss computes ||x||^2 + ||c||^2 - 2<x,c>, so exact duplicates come out as small non-zeros.
DUPLICATE_TOL = 1e-5


def use_faiss_gpu(use_gpu: GpuUse) -> bool:
    """Resolve `use_gpu` against the installed faiss ('always' without faiss-gpu is an error)."""
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu == "always" and n_gpus == 0:
        raise RuntimeError(
            "cluster.use_gpu='always' but faiss sees no GPU; install faiss-gpu (`pip install -e .[gpu]`) "
            "on a CUDA machine or set cluster.use_gpu='auto'"
        )
    return use_gpu != "never" and n_gpus > 0


def sample_indices(n: int, k: int, max_points_per_centroid: int, seed: int) -> np.ndarray:
    """Sorted row indices of the training sample: all `n` rows, or a seeded draw of `k * max_points_per_centroid`."""
    budget = k * max_points_per_centroid
    if n <= budget:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=budget, replace=False)).astype(np.int64)


def prepare(x: np.ndarray, metric: Metric) -> np.ndarray:
    """(n, d) rows as contiguous float32, L2-normalised for the cosine metric (always a copy)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {x.shape}")
    if metric == "cosine":
        faiss.normalize_L2(x)
    return x


def flat_index(centroids: np.ndarray, metric: Metric, gpu: bool) -> faiss.Index:
    """Exact index over the (k, d) centroids: L2, or inner product on unit vectors for cosine."""
    d = centroids.shape[1]
    index: faiss.Index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    if gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.referenced_resources = resources  # keep the GPU memory pool alive with the index
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


def assign(
    x: np.ndarray,
    centroids: np.ndarray,
    metric: Metric = "l2",
    use_gpu: GpuUse = "auto",
    batch_size: int = ASSIGN_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row.

    x: (n, d) any float dtype (float16 zarr data is converted batch by batch); centroids: (k, d).
    Returns labels (n,) int64 in 0..k-1 and distances (n,) float32: squared L2, or 1 - cosine.
    """
    index = flat_index(centroids, metric, use_faiss_gpu(use_gpu))
    n = len(x)
    labels = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        batch = prepare(x[start : start + batch_size], metric)
        score, nearest = index.search(batch, 1)
        labels[start : start + len(batch)] = nearest[:, 0]
        distances[start : start + len(batch)] = 1.0 - score[:, 0] if metric == "cosine" else score[:, 0]
    np.maximum(distances, 0.0, out=distances)  # rounding can make exact matches slightly negative
    return labels, distances


def kmeans_fit(
    x: np.ndarray,
    k: int,
    niter: int = 100,
    seed: int = 0,
    metric: Metric = "l2",
    max_points_per_centroid: int = 256,
    use_gpu: GpuUse = "auto",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit `k` centroids to the rows of x (n, d).

    Returns centroids (k, d) float32 (unit norm for cosine) and stats, all over the training
    sample: n_points, n_train, k, metric, inertia (sum of the distances `assign` returns), n_empty
    (clusters no training point is nearest to; > 0 only with fewer distinct points than k),
    cluster_size (min/median/mean/max), imbalance_factor (faiss's: k * sum(size^2) / n^2),
    n_reseeded, gpu.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(x) == 0:
        raise ValueError("K-means needs at least one embedding; MaskCut produced no masks")
    gpu = use_faiss_gpu(use_gpu)
    rows = sample_indices(len(x), k, max_points_per_centroid, seed)
    train = prepare(x if len(rows) == len(x) else np.asarray(x)[rows], metric)
    if not np.isfinite(train).all():
        raise ValueError("embeddings contain NaN or inf; drop those rows before clustering")
    n_train, d = train.shape
    if n_train >= k:
        km = faiss.Kmeans(
            d,
            k,
            niter=niter,
            seed=seed,
            spherical=metric == "cosine",
            min_points_per_centroid=1,
            max_points_per_centroid=max_points_per_centroid,
            gpu=gpu,
        )
        km.train(train)
        centroids = np.array(km.centroids, dtype=np.float32)
    else:  # faiss needs n >= k: every point is a centroid, the surplus duplicates seeded points
        rng = np.random.default_rng(seed)
        centroids = np.concatenate([train, train[rng.integers(0, n_train, k - n_train)]])
    centroids, n_reseeded, labels, dist = reseed_empty(train, centroids, metric, "always" if gpu else "never")
    sizes = np.bincount(labels, minlength=k)
    stats = {
        "n_points": int(len(x)),
        "n_train": int(n_train),
        "k": int(k),
        "metric": metric,
        "inertia": float(dist.astype(np.float64).sum()),
        "n_empty": int((sizes == 0).sum()),
        "cluster_size": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "mean": float(sizes.mean()),
            "max": int(sizes.max()),
        },
        "imbalance_factor": float(k * np.sum(sizes.astype(np.float64) ** 2) / n_train**2),
        "n_reseeded": int(n_reseeded),
        "gpu": bool(gpu),
    }
    return centroids, stats


def reseed_empty(
    train: np.ndarray, centroids: np.ndarray, metric: Metric, use_gpu: GpuUse = "never"
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Move every empty cluster onto a far training point until none is empty or no point is left.

    train: (n, d) prepared rows; centroids: (k, d). A point is taken only if it is not a duplicate
    of its centroid or of another chosen point, and only while its cluster keeps one other member.
    Returns the new centroids, how many were moved, and the final labels and distances of `train`.
    """
    centroids = centroids.copy()
    k = len(centroids)
    scale = float(np.mean(np.sum(train.astype(np.float64) ** 2, axis=1))) if metric == "l2" else 1.0
    tol = DUPLICATE_TOL * max(scale, 1e-12)
    n_moved = 0
    for round_index in range(RESEED_ROUNDS + 1):
        labels, dist = assign(train, centroids, metric, use_gpu=use_gpu)
        sizes = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if len(empty) == 0 or round_index == RESEED_ROUNDS:
            break
        chosen: list[int] = []
        seen: set[bytes] = set()
        for i in np.argsort(-dist, kind="stable"):
            if dist[i] <= tol or len(chosen) == len(empty):
                break
            key = train[i].tobytes()
            if sizes[labels[i]] <= 1 or key in seen:
                continue
            sizes[labels[i]] -= 1
            seen.add(key)
            chosen.append(int(i))
        if not chosen:
            break
        centroids[empty[: len(chosen)]] = train[chosen]
        n_moved += len(chosen)
    return centroids, n_moved, labels, dist
