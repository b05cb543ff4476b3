"""Cityscapes gtFine ground truth in the 27-class protocol (STEGO, CUPS), 8 instance classes as things.

Official layout (cityscapes-dataset.com, gtFine_trainvaltest + leftImg8bit_trainvaltest):

    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   16-bit: labelId, or
                                                                             labelId * 1000 + k for instances
    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png      image

The image identity is its path under leftImg8bit/<split>/. Categories (tables/cityscapes27.json): labelIds
7..33; pixels of other labelIds are VOID. Each thing instance is a segment; thing pixels without an instance
id (labelId < 1000 of a thing class, "group" regions) form a crowd segment, as cityscapesScripts'
panoptic conversion does; each stuff class is one segment per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import storage
from ...merge.panoptic import segment_boxes
from .base import GroundTruth, GtImage, GtSample, load_table, table_categories

INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"


class CityscapesGroundTruth(GroundTruth):
    format = "cityscapes"

    def __init__(self, root: str, split: str | None = None):
        self.root, split = root, split or "val"
        table = load_table("cityscapes27")
        self.table_source = table["source"]
        self.categories = table_categories(table)
        gt_dir = storage.join(root, "gtFine", split)
        cities = storage.listdir(gt_dir)
        if not cities:
            raise FileNotFoundError(f"cityscapes ground truth {root}: no city folders under {gt_dir}")
        images = []
        for city in cities:
            for name in storage.listdir(storage.join(gt_dir, city)):
                if not name.endswith(INSTANCE_SUFFIX):
                    continue
                stem = name[: -len(INSTANCE_SUFFIX)]
                file_name = f"{city}/{stem}{IMAGE_SUFFIX}"
                images.append(
                    GtImage(
                        image_id=len(images) + 1, file_name=file_name, height=0, width=0,
                        image_url=storage.join(root, "leftImg8bit", split, file_name),
                        label_url=storage.join(gt_dir, city, name),
                    )
                )
        super().__init__(images)

    def read(self, image: GtImage) -> GtSample:
        raw = storage.read_png(image.label_url).astype(np.int64)
        label = np.where(raw >= 1000, raw // 1000, raw)
        lookup = self.category_lookup()
        index_of_label = np.full(max(int(label.max()), 33) + 1, -1, dtype=np.int64)
        for label_id, index in lookup.items():
            index_of_label[label_id] = index
        category_index = index_of_label[label]
        things = np.array([c["isthing"] for c in self.categories], dtype=bool)
        is_thing_pixel = (category_index >= 0) & things[np.maximum(category_index, 0)]
        # thing pixels keep their instance id (crowd groups keep the bare labelId); stuff: one id per class
        ids = np.where(category_index < 0, 0, np.where(is_thing_pixel, raw, label))
        segment_ids = np.unique(ids[ids > 0])
        positions = np.where(ids > 0, np.searchsorted(segment_ids, ids), -1)  # segments are in id order
        boxes = segment_boxes(positions + 1, len(segment_ids)).astype(np.int64)  # XYWH
        segments: list[dict[str, Any]] = []
        for sid, box in zip(segment_ids.tolist(), boxes.tolist()):
            category = sid // 1000 if sid >= 1000 else sid
            isthing = bool(things[lookup[category]])
            segments.append(
                {"id": sid, "category_id": category, "iscrowd": int(isthing and sid < 1000), "bbox": box}
            )
        return GtSample(ids, segments, category_index, positions)
