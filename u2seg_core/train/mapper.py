"""One training example from one merged image, as detectron2's DatasetMapper makes it for Panoptic-FPN's
"separated" data: ResizeShortestEdge (a random short side of `min_size_train`, max `max_size_train`) then a
random horizontal flip, applied to the image (PIL bilinear), the semantic map and the instance masks (PIL
nearest) and the boxes (corners scaled and mirrored, clipped to the image); instances whose box or mask became
empty are dropped; an image without instances stays (stuff only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..coco import decode_rle
from ..model.config import InputConfig
from ..model.preprocess import resize_shortest_edge, resized_shape, sample_train_short_edge
from .forward import GroundTruth


def _resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 label map or mask resized with PIL nearest (detectron2's `apply_segmentation`)."""
    if labels.shape == (height, width):
        return labels
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))


def map_example(
    image: np.ndarray,
    semantic: np.ndarray,
    annotations: list[dict[str, Any]],
    cfg: InputConfig,
    seed: int,
) -> dict[str, Any]:
    """image (H,W,3) uint8 RGB; semantic (H,W) uint8 (0 things, 1..S stuff, 255 ignore); annotations COCO
    instances (bbox XYWH, RLE segmentation, category_id = cluster id 1..K); `seed` draws the size and the flip.

    Returns the model's training input: {"image": (3,h,w) uint8 in `cfg.format` order, "height": h, "width": w,
    "sem_seg": (h,w) int64, "instances": GroundTruth (classes = cluster id - 1), "seed": seed}.
    """
    height, width = image.shape[:2]
    if semantic.shape != (height, width):
        raise ValueError(f"semantic map is {semantic.shape}, the image is {(height, width)}")
    rng = np.random.default_rng(seed)
    short = sample_train_short_edge(cfg, rng)
    new_h, new_w = resized_shape(height, width, short, cfg.max_size_train)
    flip = cfg.random_flip == "horizontal" and bool(rng.random() < 0.5)
    vflip = cfg.random_flip == "vertical" and bool(rng.random() < 0.5)

    resized, _ = resize_shortest_edge(image, short, cfg.max_size_train)
    sem = _resize_nearest(semantic, new_h, new_w)
    masks = np.zeros((len(annotations), new_h, new_w), dtype=bool)
    boxes = np.zeros((len(annotations), 4), dtype=np.float64)
    for i, ann in enumerate(annotations):
        mask = decode_rle(ann["segmentation"])
        if mask.shape != (height, width):
            raise ValueError(f"instance {ann.get('id')} mask is {mask.shape}, the image is {(height, width)}")
        masks[i] = _resize_nearest(mask.view(np.uint8), new_h, new_w).astype(bool)
        x, y, w, h = ann["bbox"]
        boxes[i] = (x, y, x + w, y + h)
    boxes *= np.array([new_w / width, new_h / height] * 2)
    if flip:
        resized, sem, masks = resized[:, ::-1], sem[:, ::-1], masks[:, :, ::-1]
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], axis=1)
    if vflip:
        resized, sem, masks = resized[::-1], sem[::-1], masks[:, ::-1]
        boxes = np.stack([boxes[:, 0], new_h - boxes[:, 3], boxes[:, 2], new_h - boxes[:, 1]], axis=1)
    boxes = np.clip(boxes, 0, [new_w, new_h, new_w, new_h])
    keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5) & masks.any(axis=(1, 2))
    classes = np.array([int(a["category_id"]) - 1 for a in annotations], dtype=np.int64)
    if cfg.format == "BGR":
        resized = resized[:, :, ::-1]
    return {
        "image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
        "height": new_h,
        "width": new_w,
        "sem_seg": torch.from_numpy(sem.astype(np.int64)),
        "instances": GroundTruth(
            torch.from_numpy(boxes[keep].astype(np.float32)),
            torch.from_numpy(classes[keep]),
            torch.from_numpy(np.ascontiguousarray(masks[keep])),
        ),
        "seed": seed,
    }
