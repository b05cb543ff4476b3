"""Features stage: stored backbone tokens for STEGO."""

from .stage import features_shard, load_features

__all__ = ["features_shard", "load_features"]
