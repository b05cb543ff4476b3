"""Panoptic combine of instances and semantic map (detectron2 modeling/meta_arch/panoptic_fpn.py,
`combine_semantic_and_instance_outputs`, after panopticapi's combine script).

Instances in descending score order (torch.argsort(-scores)) until a score < `instances_score_thresh`;
an instance with an empty mask is skipped; one whose overlap with already placed segments is more than
`overlap_threshold` of its area is skipped; otherwise its still-free pixels become the next segment id.
Then each stuff label of the semantic argmax (ascending; label 0 = things is ignored) takes its free pixels
if there are at least `stuff_area_thresh` of them. Ids start at 1; 0 = void.
segments_info: things {"id", "isthing": True, "score", "category_id" (0-based thing class), "instance_id"};
stuff {"id", "isthing": False, "category_id" (the semantic label 1..S), "area"}.

The instance loop is sequential by definition (each decision depends on the pixels placed before); it runs on
CPU copies (so its decisions do not each wait for a GPU) and only on each mask's bounding window.
"""

from __future__ import annotations

from typing import Any

import torch

from .structures import Detections


def combine_semantic_and_instance_outputs(
    instances: Detections,
    semantic: torch.Tensor,
    overlap_threshold: float,
    stuff_area_thresh: int,
    instances_score_thresh: float,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """instances with (N,H,W) bool masks, semantic (H,W) labels -> ((H,W) int32 segment ids, segments_info)."""
    device = semantic.device
    semantic = semantic.cpu()
    scores = instances.scores.cpu()
    classes = instances.pred_classes.cpu()
    panoptic = torch.zeros_like(semantic, dtype=torch.int32)
    segments: list[dict[str, Any]] = []
    segment_id = 0
    if len(instances):
        masks = instances.pred_masks.cpu().to(torch.bool)
        # each mask's bounding rows/cols: the sequential loop then touches only that window (same result)
        as_bytes = masks.view(torch.uint8)  # amax over bytes is much faster than bool any()
        rows, cols = as_bytes.amax(dim=2) > 0, as_bytes.amax(dim=1) > 0
        row_lo, row_hi = _span(rows)
        col_lo, col_hi = _span(cols)
        for inst in torch.argsort(-scores).tolist():
            score = scores[inst].item()
            if score < instances_score_thresh:
                break
            window = (slice(row_lo[inst], row_hi[inst]), slice(col_lo[inst], col_hi[inst]))
            mask = masks[inst][window]
            mask_area = int(torch.count_nonzero(mask))
            if mask_area == 0:
                continue
            placed = panoptic[window]
            intersect_area = int(torch.count_nonzero(mask & (placed > 0)))
            if intersect_area * 1.0 / mask_area > overlap_threshold:
                continue
            if intersect_area > 0:
                mask = mask & (placed == 0)
            segment_id += 1
            placed[mask] = segment_id
            segments.append(
                {"id": segment_id, "isthing": True, "score": score, "category_id": classes[inst].item(),
                 "instance_id": inst}
            )
    # stuff labels are disjoint, so each label's free area can be counted at once; ids in ascending label order
    n_labels = int(semantic.max().item()) + 1 if semantic.numel() else 1
    present = torch.bincount(semantic.flatten(), minlength=n_labels) > 0
    free_area = torch.bincount(semantic[panoptic == 0], minlength=n_labels)
    lut = torch.zeros(n_labels, dtype=torch.int32)
    for label in torch.nonzero(present).flatten().tolist():
        area = int(free_area[label])
        if label == 0 or area < stuff_area_thresh:
            continue
        segment_id += 1
        lut[label] = segment_id
        segments.append({"id": segment_id, "isthing": False, "category_id": label, "area": area})
    panoptic = torch.where(panoptic == 0, lut[semantic], panoptic)
    return panoptic.to(device), segments


def _span(any_along: torch.Tensor) -> tuple[list[int], list[int]]:
    """First index and one past the last True index per row of (N, L) bool (0, 0 when none)."""
    length = any_along.shape[1]
    positions = torch.arange(length)
    lo = torch.where(any_along, positions, length).min(dim=1).values
    hi = torch.where(any_along, positions + 1, 0).max(dim=1).values
    return torch.minimum(lo, hi).tolist(), hi.tolist()
