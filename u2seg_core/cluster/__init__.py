"""Cluster stage: global faiss K-means of mask embeddings -> pseudo-class ids 1..K."""

from .kmeans import assign, kmeans_fit
from .stage import assign_shard, fit_centroids

__all__ = ["assign", "assign_shard", "fit_centroids", "kmeans_fit"]
