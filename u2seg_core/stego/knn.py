"""KNN table of training items from their pooled global features (STEGO `precompute_knns`)."""

from __future__ import annotations

import faiss
import numpy as np


def knn_table(pooled: np.ndarray, k: int, use_gpu: bool = False) -> np.ndarray:
    """(n, C) pooled features -> (n, k) int64 indices of each item's k nearest other items by cosine.

    Exact search (faiss IndexFlatIP on L2-normalised float32 vectors) over the whole set, top k+1; the
    item itself is removed from its own row (STEGO skips column 0, which is the item itself unless an
    exact duplicate ties with it). `use_gpu` runs the search on faiss-gpu when that build is installed.
    """
    n = pooled.shape[0]
    if n < 2:
        raise ValueError(f"the KNN table needs at least 2 training items, got {n}")
    k = min(k, n - 1)
    vectors = np.ascontiguousarray(pooled, dtype=np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    if use_gpu and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(vectors)
    _, neighbours = index.search(vectors, k + 1)
    is_self = neighbours == np.arange(n)[:, None]
    # keep the first k entries of each row that are not the item itself
    keep = ~is_self
    keep[~is_self.any(axis=1), k] = False
    return neighbours[keep].reshape(n, k).astype(np.int64)
