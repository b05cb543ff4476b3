"""The training set: the merge stage's pseudo-labels, read shard by shard.

Things are the whole (un-occluded) MaskCut masks with their cluster ids (`instances_unoccluded` of
`merge/shards/<shard>.json`), stuff the semantic PNGs `merge/semantic/...` (0 things, 1..S stuff, 255 ignore).
Memory stays flat: `TrainIndex` holds six small integers per image; each DataLoader worker keeps the few merge
shard JSONs it last read (`shard_cache`), and decodes RLE masks itself.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import storage
from ..io.decode import load_rgb
from ..manifest import ShardManifest
from ..model.config import InputConfig
from ..rundir import RunDir
from .holdout import is_held_out
from .mapper import map_example


@dataclass(frozen=True)
class TrainIndex:
    """One row per training image: which merge shard (`shard_of` into `shards`), its row in that shard's
    `images`, its image id and size. `shards` are (shard name, merge shard JSON path relative to RUN)."""

    shards: tuple[tuple[str, str], ...]
    shard_of: np.ndarray
    row: np.ndarray
    image_id: np.ndarray
    height: np.ndarray
    width: np.ndarray

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def aspect_group(self) -> np.ndarray:
        """(N,) 0 for landscape (w > h) images, 1 otherwise (detectron2's AspectRatioGroupedDataset)."""
        return (self.width <= self.height).astype(np.int64)


def build_index(run: RunDir, holdout_fraction: float) -> tuple[TrainIndex, int]:
    """Index of the merged images that are not held out (reads each merge shard JSON once, one at a time).
    Returns (index, number of held-out images)."""
    shards: list[tuple[str, str]] = []
    columns: list[list[int]] = [[], [], [], [], []]
    held_out = 0
    for result in run.stage_manifest("merge").shards:
        rel = result.outputs["shard"]
        part = storage.read_json(run.url(rel))
        if "instances_unoccluded" not in part:
            raise ValueError(
                f"{rel} has no 'instances_unoccluded' (written by an older merge); re-run `u2seg stage merge`"
            )
        shard_index = len(shards)
        shards.append((result.shard, rel))
        for row, image in enumerate(part["images"]):
            if is_held_out(image["file_name"], holdout_fraction):
                held_out += 1
                continue
            for column, value in zip(columns, (shard_index, row, image["id"], image["height"], image["width"])):
                column.append(int(value))
    shard_of, rows, ids, heights, widths = (np.asarray(c, dtype=np.int64) for c in columns)
    return TrainIndex(tuple(shards), shard_of, rows, ids, heights, widths), held_out


@dataclass
class _Shard:
    images: list[dict[str, Any]]
    panoptic: dict[int, dict[str, Any]]
    instances: dict[int, list[dict[str, Any]]]
    urls: dict[int, str]


class MergeDataset(torch.utils.data.Dataset):
    """`dataset[(i, seed)]` -> the model's training input for index row `i` (augmentation drawn from `seed`)."""

    def __init__(self, run: RunDir, index: TrainIndex, input_cfg: InputConfig, shard_cache: int = 4) -> None:
        self.run = run
        self.index = index
        self.input_cfg = input_cfg
        self.shard_cache = shard_cache
        self._cache: OrderedDict[int, _Shard] = OrderedDict()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict()}  # each worker builds its own cache

    def _shard(self, shard: int) -> _Shard:
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        name, rel = self.index.shards[shard]
        part = storage.read_json(self.run.url(rel))
        plan = ShardManifest.model_validate(storage.read_json(self.run.shard_manifest_url(int(name.split("-")[1]))))
        instances: dict[int, list[dict[str, Any]]] = {}
        for ann in part["instances_unoccluded"]:
            instances.setdefault(int(ann["image_id"]), []).append(ann)
        loaded = _Shard(
            images=part["images"],
            panoptic={int(a["image_id"]): a for a in part["panoptic"]},
            instances=instances,
            urls={im.image_id: im.url for im in plan.images},
        )
        self._cache[shard] = loaded
        while len(self._cache) > self.shard_cache:
            self._cache.popitem(last=False)
        return loaded

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        i, seed = key
        shard = self._shard(int(self.index.shard_of[i]))
        entry = shard.images[int(self.index.row[i])]
        image_id = int(entry["id"])
        if image_id not in shard.urls:
            raise ValueError(f"image {image_id} of the merge stage is not in its plan shard; re-run the pipeline")
        image = load_rgb(shard.urls[image_id])
        semantic = storage.read_png(self.run.url("merge", "semantic", shard.panoptic[image_id]["file_name"]))
        if image.shape[:2] != (entry["height"], entry["width"]):
            raise ValueError(
                f"image {image_id} is {image.shape[:2]}, merge recorded {(entry['height'], entry['width'])}; "
                "the source changed since the plan: re-run the pipeline"
            )
        example = map_example(image, semantic, shard.instances.get(image_id, []), self.input_cfg, seed)
        example["image_id"] = image_id
        return example
