"""COCO-panoptic-style ground truth: COCO 2017 (official layout) and the synthetic dataset.

COCO 2017, as downloaded from cocodataset.org:

    ROOT/annotations/panoptic_<split>.json        COCO panoptic (images, annotations, categories)
    ROOT/annotations/panoptic_<split>/*.png       id2rgb segment ids
    ROOT/annotations/instances_<split>.json       COCO instances (box and mask AP, box votes)
    ROOT/<split>/*.jpg                            images (overlays)

Its 53 stuff categories are collapsed to their 15 supercategories (tables/coco_stuff_supercategories.json),
as U2Seg's evaluation does; things keep their 80 COCO ids. Several GT stuff segments of one image may then
share a category; they stay separate segments (U2Seg leaves its GT PNGs unchanged).

The synthetic layout (`u2seg synth`): ROOT/annotations/{panoptic,instances}.json, ROOT/panoptic/, ROOT/images/,
evaluated as is.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ... import storage
from ...coco import rgb2id
from .base import GroundTruth, GtImage, GtSample, load_table

SUPERCATEGORY_ID_BASE = 200  # evaluated stuff ids: 201..215 (above every COCO category id)


def read_segment_ids(url: str) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO panoptic PNG."""
    rgb = storage.read_png(url)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"{url} is not an RGB panoptic PNG (shape {rgb.shape})")
    return rgb2id(rgb[..., :3]).astype(np.int64)


class PanopticJsonGroundTruth(GroundTruth):
    """Ground truth given as a COCO panoptic JSON + PNG folder (+ optional COCO instances JSON)."""

    def __init__(
        self,
        fmt: str,
        root: str,
        panoptic_json: str,
        panoptic_dir: str,
        images_dir: str,
        instances_json: str | None,
        collapse_stuff: bool,
    ):
        for url, what in ((panoptic_json, "panoptic JSON"), (panoptic_dir, "panoptic PNG folder")):
            if not storage.exists(url):
                raise FileNotFoundError(f"{fmt} ground truth {root}: no {what} {url}")
        self.format, self.root = fmt, root
        self.instances_json = instances_json if instances_json and storage.exists(instances_json) else None
        doc = storage.read_json(panoptic_json)
        self.category_map, self.categories = self._categories(doc["categories"], collapse_stuff)
        entries = {int(im["id"]): im for im in doc["images"]}
        images = []
        for ann in doc["annotations"]:
            entry = entries[int(ann["image_id"])]
            segments = tuple(
                {**s, "category_id": self.category_map[int(s["category_id"])]} for s in ann["segments_info"]
            )
            images.append(
                GtImage(
                    image_id=int(ann["image_id"]), file_name=entry["file_name"], height=int(entry["height"]),
                    width=int(entry["width"]), image_url=storage.join(images_dir, entry["file_name"]),
                    label_url=storage.join(panoptic_dir, ann["file_name"]), segments=segments,
                )
            )
        super().__init__(images)

    def _categories(
        self, categories: list[dict[str, Any]], collapse_stuff: bool
    ) -> tuple[dict[int, int], list[dict[str, Any]]]:
        things = [{"id": int(c["id"]), "name": c["name"], "isthing": 1} for c in categories if c.get("isthing")]
        mapping = {c["id"]: c["id"] for c in things}
        if not collapse_stuff:
            stuff = [{"id": int(c["id"]), "name": c["name"], "isthing": 0} for c in categories if not c.get("isthing")]
            mapping.update({c["id"]: c["id"] for c in stuff})
            return mapping, things + stuff
        table = load_table("coco_stuff_supercategories")
        self.table_source = table["source"]
        to_super = {int(k): v for k, v in table["stuff_to_supercategory"].items()}
        for c in categories:
            if not c.get("isthing"):
                if int(c["id"]) not in to_super:
                    raise ValueError(f"COCO stuff category {c['id']} ({c['name']}) is not in the supercategory table")
                mapping[int(c["id"])] = SUPERCATEGORY_ID_BASE + to_super[int(c["id"])]
        stuff = [
            {"id": SUPERCATEGORY_ID_BASE + s["id"], "name": s["name"], "isthing": 0} for s in table["supercategories"]
        ]
        return mapping, things + stuff

    def read(self, image: GtImage) -> GtSample:
        return self.sample_from_segments(read_segment_ids(image.label_url), list(image.segments))

    @functools.cached_property
    def _instances_doc(self) -> dict[str, Any] | None:
        return storage.read_json(self.instances_json) if self.instances_json else None

    @functools.cached_property
    def _instances_by_image(self) -> dict[int, list[dict[str, Any]]]:
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in (self._instances_doc or {}).get("annotations", []):
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        return by_image

    def instances(self, image: GtImage, sample: GtSample) -> list[dict[str, Any]]:
        """The instances JSON's annotations of the image (crowd included, as U2Seg's votes use every GT
        box); without an instances JSON, the panoptic thing segments."""
        if self._instances_doc is None:
            return super().instances(image, sample)
        return self._instances_by_image.get(image.image_id, [])

    def coco_instances(self, image_ids: set[int]) -> dict[str, Any] | None:
        doc = self._instances_doc
        if doc is None:
            return None
        return {
            "images": [im for im in doc["images"] if int(im["id"]) in image_ids],
            "annotations": [a for a in doc["annotations"] if int(a["image_id"]) in image_ids],
            "categories": [c for c in doc["categories"] if int(c["id"]) in set(self.thing_ids)],
        }


def coco_ground_truth(root: str, split: str | None) -> PanopticJsonGroundTruth:
    split = split or "val2017"
    annotations = storage.join(root, "annotations")
    return PanopticJsonGroundTruth(
        "coco", root, storage.join(annotations, f"panoptic_{split}.json"),
        storage.join(annotations, f"panoptic_{split}"), storage.join(root, split),
        storage.join(annotations, f"instances_{split}.json"), collapse_stuff=True,
    )


def synthetic_ground_truth(root: str, split: str | None = None) -> PanopticJsonGroundTruth:
    return PanopticJsonGroundTruth(
        "synthetic", root, storage.join(root, "annotations", "panoptic.json"), storage.join(root, "panoptic"),
        storage.join(root, "images"), storage.join(root, "annotations", "instances.json"), collapse_stuff=False,
    )
