"""COCO helpers shared by every stage: RLE masks, boxes, panoptic id <-> RGB, JSON skeletons, and the
streaming writer of dataset-level JSONs.

Datasets written with these stay readable by detectron2 and pycocotools.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import IO, Any

import numpy as np
from pycocotools import mask as mask_utils

from . import storage

COPY_BUFFER = 16 * 2**20


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a (H, W) boolean mask, `counts` as ASCII (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """`encode_rle` of each (H, W) mask of an (N, H, W) bool stack, in one pycocotools call."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """(H, W) bool mask from a compressed (str or bytes counts) or uncompressed RLE."""
    if isinstance(rle.get("counts"), list):
        h, w = rle["size"]
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """Tight [x, y, w, h] box of a (H, W) bool mask ([0, 0, 0, 0] when empty)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids -> (H, W, 3) uint8 (COCO panoptic: id = R + 256 G + 256^2 B)."""
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) int32 segment ids."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def image_entry(image_id: int, file_name: str, height: int, width: int) -> dict[str, Any]:
    """COCO `images` entry with width and height the right way round."""
    return {"id": int(image_id), "file_name": file_name, "height": int(height), "width": int(width)}


def dataset_json(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    description: str,
) -> dict[str, Any]:
    """A complete COCO-style JSON document."""
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def compact_json(obj: Any) -> str:
    """JSON without whitespace (what the dataset-level files use)."""
    return json.dumps(obj, separators=(",", ":"), default=str)


class CocoJsonWriter:
    """Writes one COCO-style document (the `dataset_json` layout) part by part, compact, in flat memory.

    `add(images, annotations)` streams the image entries straight into the output and the annotations
    into a local spill file, appended after the images on exit. The target (local path or fsspec URL)
    appears only on a clean exit, whole: locally a temporary sibling is renamed over it, remotely a
    local file is uploaded in one PUT (multipart for large files). Use as a context manager.
    """

    def __init__(self, url: str, categories: list[dict[str, Any]], description: str):
        self.url, self.categories, self.description = url, categories, description
        self.n_images = self.n_annotations = 0

    def __enter__(self) -> "CocoJsonWriter":
        local_dir = None
        if not storage.is_remote(self.url):
            local_dir = os.path.dirname(os.path.abspath(self.url))
            os.makedirs(local_dir, exist_ok=True)
        prefix = f".{os.path.basename(self.url)}."
        handle, self._path = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=local_dir)
        self._out: IO[str] = os.fdopen(handle, "w")
        self._spill: IO[str] = tempfile.TemporaryFile("w+")
        header = compact_json({"info": {"description": self.description, "version": "1.0"}, "licenses": []})
        self._out.write(header[:-1] + ',"images":[')
        return self

    def add(self, images: Iterable[dict[str, Any]], annotations: Iterable[dict[str, Any]]) -> None:
        """Append image entries and annotations (any counts; an image's annotations may come in any part)."""
        for image in images:
            self._out.write(("," if self.n_images else "") + compact_json(image))
            self.n_images += 1
        for annotation in annotations:
            self._spill.write(("," if self.n_annotations else "") + compact_json(annotation))
            self.n_annotations += 1

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self._out.write('],"annotations":[')
                self._spill.seek(0)
                shutil.copyfileobj(self._spill, self._out, COPY_BUFFER)
                self._out.write('],"categories":' + compact_json(self.categories) + "}")
                self._out.flush()
                os.fsync(self._out.fileno())
            self._out.close()
            self._spill.close()
            if exc_type is None:
                self._commit()
        finally:
            if os.path.exists(self._path):
                os.remove(self._path)

    def _commit(self) -> None:
        if storage.is_remote(self.url):
            fs, path = storage.get_fs(self.url)
            fs.put_file(self._path, path)
        else:
            os.replace(self._path, self.url)


def write_dataset_json_streaming(
    url: str,
    parts: Iterable[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    categories: list[dict[str, Any]],
    description: str,
) -> int:
    """Write the COCO document of every (images, annotations) part of `parts` (e.g. one per shard JSON, read
    lazily) to `url` with `CocoJsonWriter`; json-equal to `dataset_json` of the concatenated parts. Returns the
    number of images."""
    with CocoJsonWriter(url, categories, description) as writer:
        for images, annotations in parts:
            writer.add(images, annotations)
    return writer.n_images
