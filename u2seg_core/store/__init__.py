"""zarr v3 feature store (local folder or s3://): per-shard arrays written by one task each."""

from .feature_store import FeatureStore, MissingShardError

__all__ = ["FeatureStore", "MissingShardError"]
