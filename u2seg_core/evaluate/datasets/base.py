"""The ground-truth interface every dataset adapter implements.

An adapter turns one official dataset layout into the evaluation's label space:

* `categories`: the evaluated categories (COCO style: id, name, isthing), things first in the order
  the adapter defines; semantic label `i` of a pixel is the index of its category in this list;
* `images`: one `GtImage` per ground-truth image, joined with predictions by `identity(file_name)`;
* `read(image)`: the panoptic segment ids and segments (if the dataset has panoptic labels) and the
  per-pixel category index, from one read of the image's label file(s);
* `instances(image)`: COCO instance annotations (bbox XYWH, iscrowd, category_id) used for box votes,
  and `coco_instances(image_ids)` the COCO document box/mask AP is scored against (None: no AP).
"""

from __future__ import annotations

import json
import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

IGNORE = -1  # category index of pixels that are not evaluated (VOID / unlabeled)


def identity(file_name: str) -> str:
    """Join key of an image: its relative path, POSIX separators, without the extension."""
    return posixpath.splitext(file_name.replace("\\", "/").lstrip("./"))[0]


def load_table(name: str) -> dict[str, Any]:
    """A category table shipped with the package (u2seg_core/evaluate/datasets/tables/<name>.json)."""
    return json.loads(resources.files(__package__).joinpath("tables", f"{name}.json").read_text())


def table_categories(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The categories (id, name, isthing) of a category table's `classes`."""
    return [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in table["classes"]]


@dataclass(frozen=True)
class GtImage:
    """One ground-truth image: its identity and where its labels live."""

    image_id: int
    file_name: str  # image path relative to the image root: the join key
    height: int
    width: int
    image_url: str
    label_url: str
    segments: tuple[dict[str, Any], ...] = ()


@dataclass
class GtSample:
    """Labels of one image. segment_ids: (H, W) int64 (0 = VOID) or None without panoptic labels;
    segments: COCO segments_info in evaluated category ids (id, category_id, iscrowd, bbox);
    category_index: (H, W) int64 index into `GroundTruth.categories`, IGNORE where not evaluated."""

    segment_ids: np.ndarray | None
    segments: list[dict[str, Any]]
    category_index: np.ndarray
    segment_pos: np.ndarray | None = None  # (H, W) position of each pixel's segment in `segments`, -1 VOID


class GroundTruth(ABC):
    """One dataset's ground truth in the evaluation's label space (module docstring)."""

    format: str
    root: str
    categories: list[dict[str, Any]]
    has_panoptic: bool = True
    table_source: str = ""

    def __init__(self, images: list[GtImage]):
        self._images = images
        self._by_identity = {identity(im.file_name): im for im in images}
        if len(self._by_identity) != len(images):
            raise ValueError(f"{self.root}: several ground-truth images share a file name (without extension)")
        by_stem: dict[str, list[GtImage]] = {}
        for im in images:
            by_stem.setdefault(posixpath.basename(identity(im.file_name)), []).append(im)
        self._by_stem = {stem: ims[0] for stem, ims in by_stem.items() if len(ims) == 1}

    @property
    def images(self) -> list[GtImage]:
        return self._images

    def lookup(self, file_name: str) -> GtImage | None:
        """The ground-truth image of a prediction's `file_name`: same relative path (extension aside),
        else the same base name when only one ground-truth image has it (source roots may differ)."""
        key = identity(file_name)
        return self._by_identity.get(key) or self._by_stem.get(posixpath.basename(key))

    @property
    def thing_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories if c["isthing"]]

    @property
    def stuff_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories if not c["isthing"]]

    @property
    def category_names(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.categories}

    @abstractmethod
    def read(self, image: GtImage) -> GtSample:
        """The labels of one image (reads its label file once)."""

    def instances(self, image: GtImage, sample: GtSample) -> list[dict[str, Any]]:
        """Instance annotations for box votes; default: the panoptic thing segments (crowd included)."""
        things = set(self.thing_ids)
        return [
            {"bbox": s["bbox"], "category_id": s["category_id"], "iscrowd": int(s.get("iscrowd", 0))}
            for s in sample.segments
            if s["category_id"] in things and s.get("bbox")
        ]

    def coco_instances(self, image_ids: set[int]) -> dict[str, Any] | None:
        """COCO instances document (images, annotations with segmentation, thing categories) restricted
        to `image_ids`, for box and mask AP; None when the dataset has no instance masks."""
        return None

    def category_lookup(self) -> dict[int, int]:
        """category id -> index in `categories`."""
        return {int(c["id"]): i for i, c in enumerate(self.categories)}

    def sample_from_segments(self, segment_ids: np.ndarray, segments: list[dict[str, Any]]) -> GtSample:
        """A GtSample from a segment-id map: positions and category index of every pixel (VOID and
        unlisted ids: -1 / IGNORE)."""
        from ..pq import segment_positions

        lookup = self.category_lookup()
        pos = segment_positions(segment_ids, np.array([int(s["id"]) for s in segments], np.int64))
        index = np.array([*(lookup[int(s["category_id"])] for s in segments), IGNORE], dtype=np.int64)
        return GtSample(segment_ids, segments, index[pos], pos)
