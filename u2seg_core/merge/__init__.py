"""Merge stage: things over stuff -> COCO panoptic, class-aware instances and semantic pseudo-labels."""

from .panoptic import merge_image
from .stage import finalize, merge_shard

__all__ = ["finalize", "merge_image", "merge_shard"]
