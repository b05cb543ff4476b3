"""Ground-truth adapters behind one interface (`base.GroundTruth`); `load_ground_truth` picks one by format."""

from __future__ import annotations

import functools
from typing import Callable

from .base import IGNORE, GroundTruth, GtImage, GtSample, identity
from .cityscapes import CityscapesGroundTruth
from .coco import coco_ground_truth, synthetic_ground_truth
from .cocostuff import CocoStuff27GroundTruth

FORMATS: dict[str, Callable[[str, str | None], GroundTruth]] = {
    "coco": coco_ground_truth,
    "cocostuff27": CocoStuff27GroundTruth,
    "cityscapes": CityscapesGroundTruth,
    "synthetic": synthetic_ground_truth,
}


@functools.lru_cache(maxsize=4)
def load_ground_truth(fmt: str, root: str, split: str | None = None) -> GroundTruth:
    """The ground truth at `root` in format `fmt` (cached per process: shard tasks of one worker share it)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown ground-truth format {fmt!r}; use one of {sorted(FORMATS)}")
    return FORMATS[fmt](root, split)


__all__ = ["FORMATS", "IGNORE", "GroundTruth", "GtImage", "GtSample", "identity", "load_ground_truth"]
