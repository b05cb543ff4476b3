"""COCO helpers shared by every stage: RLE masks, boxes, panoptic id <-> RGB, JSON skeletons.

Datasets written with these stay readable by detectron2 and pycocotools.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a (H, W) boolean mask, `counts` as ASCII (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


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
