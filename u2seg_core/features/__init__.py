"""Features stage: pooled backbone features of every image, token grids of the STEGO training sample."""

from .stage import SampleShard, features_shard, training_sample

__all__ = ["SampleShard", "features_shard", "training_sample"]
