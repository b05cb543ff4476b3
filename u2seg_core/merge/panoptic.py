"""U2Seg's things-over-stuff merge rule for one image, vectorised.

The reference (`generate_pseudo_panoptic.py`, docs: reference notes §2.4) paints instances
largest box first so smaller ones overwrite them, drops instances left without pixels, then turns
the still-free pixels of every semantic class into one stuff segment unless more than
`stuff_overlap_max` of that class is covered by instances. Fixes over the reference: segment ids
restart at 1 in every image, and areas and boxes are measured after occlusion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

VOID = 0
SEMANTIC_THING = 0
SEMANTIC_VOID = 255


def paint_order(boxes: np.ndarray) -> np.ndarray:
    """(M,) instance indices, largest box area (w * h) first; equal areas keep their input order."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")


def segment_boxes(segment_ids: np.ndarray, n_segments: int) -> np.ndarray:
    """(n_segments, 4) tight [x, y, w, h] boxes of segment ids 1..n_segments (zeros when absent)."""
    boxes = np.zeros((n_segments, 4), dtype=np.float64)
    for i, found in enumerate(ndimage.find_objects(segment_ids, max_label=n_segments)):
        if found is not None:
            rows, cols = found
            boxes[i] = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    return boxes


def merge_image(
    instance_masks: np.ndarray,
    cluster_ids: np.ndarray,
    boxes: np.ndarray,
    semantic: np.ndarray,
    k: int,
    n_stuff: int,
    stuff_overlap_max: float = 0.7,
    min_segment_area: int = 1,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Panoptic segmentation of one image from its instances and its semantic map.

    instance_masks: (M, H, W) bool; cluster_ids: (M,) in 1..k; boxes: (M, 4) [x, y, w, h] (the
    MaskCut boxes, which set the painting order); semantic: (H, W) uint8 STEGO classes 0..n_stuff-1,
    255 unknown. Segments smaller than `min_segment_area` after occlusion are dropped.
    Returns segment_ids (H, W) int32 (0 = VOID, things 1..T in painting order, then stuff) and
    COCO `segments_info` (id, category_id: cluster id for things, k+1+class for stuff, iscrowd, bbox,
    area; things also carry `instance_index`, their row in the inputs).
    """
    semantic = np.asarray(semantic)
    height, width = semantic.shape
    masks = np.asarray(instance_masks, dtype=bool).reshape(-1, height, width)
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64).reshape(-1)
    if len(cluster_ids) != len(masks) or len(np.asarray(boxes).reshape(-1, 4)) != len(masks):
        raise ValueError(
            f"{len(masks)} masks but {len(cluster_ids)} cluster ids and {len(np.asarray(boxes).reshape(-1, 4))} boxes"
        )
    if len(cluster_ids) and (cluster_ids.min() < 1 or cluster_ids.max() > k):
        raise ValueError(f"cluster ids must lie in 1..{k}, got {cluster_ids.min()}..{cluster_ids.max()}")
    unknown = (semantic >= n_stuff) & (semantic != SEMANTIC_VOID)
    if unknown.any():
        raise ValueError(f"semantic map has values {np.unique(semantic[unknown])[:5]} outside 0..{n_stuff - 1} and 255")

    order = paint_order(boxes)
    painted = masks[order]
    covered = painted.any(axis=0)
    # The last painted instance covering a pixel wins: first hit when scanning the order backwards.
    last_hit = np.argmax(painted[::-1], axis=0) if len(order) else np.zeros((height, width), dtype=np.int64)
    owner_rank = np.where(covered, len(order) - 1 - last_hit, -1)
    rank_area = np.bincount(owner_rank[covered], minlength=len(order))
    kept_ranks = np.flatnonzero(rank_area >= min_segment_area)
    rank_to_segment = np.zeros(len(order) + 1, dtype=np.int32)  # slot -1 (uncovered) stays VOID
    rank_to_segment[kept_ranks] = np.arange(1, len(kept_ranks) + 1, dtype=np.int32)
    thing_ids = rank_to_segment[owner_rank]
    on_thing = thing_ids > 0

    stuff_pixels = semantic < n_stuff
    labels = semantic[stuff_pixels].astype(np.int64)
    class_area = np.bincount(labels, minlength=n_stuff)
    class_covered = np.bincount(labels, weights=on_thing[stuff_pixels], minlength=n_stuff)
    class_free = class_area - class_covered
    overlap = class_covered / np.maximum(class_area, 1)
    accepted = (class_free >= min_segment_area) & ~(overlap > stuff_overlap_max)
    stuff_classes = np.flatnonzero(accepted)
    class_to_segment = np.zeros(256, dtype=np.int32)
    class_to_segment[stuff_classes] = len(kept_ranks) + 1 + np.arange(len(stuff_classes), dtype=np.int32)
    segment_ids = np.where(on_thing, thing_ids, class_to_segment[semantic]).astype(np.int32)

    n_segments = len(kept_ranks) + len(stuff_classes)
    areas = np.bincount(segment_ids.ravel(), minlength=n_segments + 1)
    seg_boxes = segment_boxes(segment_ids, n_segments)
    segments: list[dict[str, Any]] = []
    for segment_id in range(1, n_segments + 1):
        info: dict[str, Any] = {"id": segment_id}
        if segment_id <= len(kept_ranks):
            instance = int(order[kept_ranks[segment_id - 1]])
            info["category_id"] = int(cluster_ids[instance])
        else:
            info["category_id"] = int(k + 1 + stuff_classes[segment_id - 1 - len(kept_ranks)])
        info.update(iscrowd=0, bbox=seg_boxes[segment_id - 1].tolist(), area=int(areas[segment_id]))
        if segment_id <= len(kept_ranks):
            info["instance_index"] = instance
        segments.append(info)
    return segment_ids, segments


def segment_labels(
    segment_ids: np.ndarray,
    segments: list[dict[str, Any]],
    category_label: dict[int, int],
    void_label: int = SEMANTIC_VOID,
) -> np.ndarray:
    """(H, W) uint8 label map: each segment's category through `category_label`; VOID, unlisted
    segments and categories missing from `category_label` become `void_label`."""
    ids = np.array([s["id"] for s in segments], dtype=np.int64)
    labels = np.array([category_label.get(int(s["category_id"]), void_label) for s in segments], dtype=np.uint8)
    order = np.argsort(ids)
    ids, labels = ids[order], labels[order]
    if len(ids) == 0:
        return np.full(segment_ids.shape, void_label, dtype=np.uint8)
    pos = np.clip(np.searchsorted(ids, segment_ids), 0, len(ids) - 1)
    return np.where(ids[pos] == segment_ids, labels[pos], void_label).astype(np.uint8)


def semantic_from_segments(
    segment_ids: np.ndarray, segments: list[dict[str, Any]], k: int, n_stuff: int
) -> np.ndarray:
    """The semantic PNG of a merged image: 0 things, 1..n_stuff stuff (category - k), 255 VOID."""
    category_label = {c: SEMANTIC_THING for c in range(1, k + 1)}
    category_label.update({k + 1 + c: c + 1 for c in range(n_stuff)})
    return segment_labels(segment_ids, segments, category_label)
