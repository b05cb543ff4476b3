"""Mapping pseudo-classes (clusters, STEGO classes) to ground-truth classes, for any K.

Both mappings work on evidence matrices (rows: predicted categories, columns: ground-truth categories)
summed over the shards:

* `u2seg`: U2Seg's released evaluation (reference notes §2.7), a many-to-one majority vote. Things: each
  prediction with score >= 0.6 votes for the class of every ground-truth box of its image (crowd boxes
  included, as U2Seg reads `imgToAnns`) with box IoU > 0.7. Stuff: each (predicted stuff class, ground-truth
  stuff class) pair whose IoU within one image exceeds 0.15 is one vote. Each row takes its most voted
  column (first on ties, as numpy's argmax); rows without votes are unmapped.
* `hungarian`: one-to-one `linear_sum_assignment` maximising the evidence (things: class-agnostic segment
  matches at IoU > 0.5; stuff: the pixel confusion); rows left over or matched with no evidence are
  unmapped.

Unmapped clusters' predictions are dropped (instances) or VOID (panoptic and semantic).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from .semantic import hungarian_mapping, majority_mapping

Mapping = Literal["u2seg", "hungarian"]


def fit_mapping(evidence: np.ndarray, how: Mapping) -> np.ndarray:
    """(n_pred,) column of each row of an (n_pred, n_gt) evidence matrix, -1 = unmapped."""
    if evidence.size == 0:
        return np.full(evidence.shape[0], -1, dtype=np.int64)
    if how == "u2seg":
        return majority_mapping(evidence)
    mapping = hungarian_mapping(evidence)
    rows = np.flatnonzero(mapping >= 0)
    mapping[rows[evidence[rows, mapping[rows]] <= 0]] = -1
    return mapping


def box_votes(
    detections: list[dict[str, Any]],
    gt_boxes: list[dict[str, Any]],
    pred_thing: dict[int, int],
    gt_thing: dict[int, int],
    shape: tuple[int, int],
    score_min: float,
    box_iou_min: float,
) -> np.ndarray:
    """U2Seg's votes of one image: (n_pred_things, n_gt_things) counts of (detection with score >=
    score_min, ground-truth box with box IoU > box_iou_min) pairs. pred_thing / gt_thing: category id ->
    thing position."""
    votes = np.zeros(shape, np.int64)
    dets = [d for d in detections if float(d.get("score", 1.0)) >= score_min and int(d["category_id"]) in pred_thing]
    gts = [a for a in gt_boxes if int(a["category_id"]) in gt_thing]
    if not dets or not gts:
        return votes
    iou = np.asarray(
        mask_utils.iou([list(map(float, d["bbox"])) for d in dets], [list(map(float, a["bbox"])) for a in gts],
                       [0] * len(gts))
    ).reshape(len(dets), len(gts))
    rows, cols = np.nonzero(iou > box_iou_min)
    pred_pos = np.array([pred_thing[int(d["category_id"])] for d in dets], np.int64)
    gt_pos = np.array([gt_thing[int(a["category_id"])] for a in gts], np.int64)
    np.add.at(votes, (pred_pos[rows], gt_pos[cols]), 1)
    return votes


def semantic_votes(confusion: np.ndarray, iou_min: float) -> np.ndarray:
    """[IoU(pred == p, gt == g) > iou_min] of one image's (n_pred, n_gt) confusion, where the row and
    column sums are the whole masks (pass the rows/columns of VOID and ignore pixels along)."""
    union = confusion.sum(axis=1, keepdims=True) + confusion.sum(axis=0, keepdims=True) - confusion
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(union > 0, confusion / union, 0.0) > iou_min).astype(np.int64)


def map_detections(detections: list[dict[str, Any]], category_map: dict[int, int]) -> list[dict[str, Any]]:
    """Detections with mapped category ids; those of unmapped clusters are dropped."""
    return [
        {**det, "category_id": category_map[int(det["category_id"])]}
        for det in detections
        if int(det["category_id"]) in category_map
    ]
