"""Mapping pseudo-classes (clusters, STEGO classes) to ground-truth classes.

Two protocols, neither with a hard-coded cluster or class count:

* `hungarian`: one-to-one `linear_sum_assignment` on an evidence matrix (things: how often a
  cluster's segment matches a class's segment with class-agnostic IoU > 0.5; stuff: the pixel
  confusion). Clusters left without a class, or matched with zero evidence, are unmapped.
* `majority`: U2Seg's many-to-one vote (reference notes §2.7). Things: every prediction with score
  >= `majority_score_min` votes for the class of each ground-truth box it overlaps with box IoU
  > `majority_box_iou`. Stuff: every (predicted class, ground-truth stuff class) pair whose IoU in
  one image exceeds `majority_semantic_iou` is a vote. Each cluster takes its most voted class.

Predictions of unmapped clusters are dropped (instances) or become VOID (panoptic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from .pq import OFFSET, VOID, PanopticOverlap, pair_ious
from .semantic import hungarian_mapping, majority_mapping

Protocol = Literal["hungarian", "majority"]


@dataclass(frozen=True)
class CategoryLayout:
    """Thing and stuff category ids of one label space, in category order.

    Semantic labels follow the project's semantic PNG: 0 = any thing, 1..S = stuff in this order.
    """

    thing_ids: tuple[int, ...]
    stuff_ids: tuple[int, ...]

    @classmethod
    def from_categories(cls, categories: list[dict[str, Any]]) -> "CategoryLayout":
        things = tuple(int(c["id"]) for c in categories if c.get("isthing", 0))
        stuff = tuple(int(c["id"]) for c in categories if not c.get("isthing", 0))
        return cls(things, stuff)

    @property
    def semantic_label(self) -> dict[int, int]:
        """category id -> semantic label (0 things, 1..S stuff)."""
        labels = {cid: 0 for cid in self.thing_ids}
        labels.update({cid: i + 1 for i, cid in enumerate(self.stuff_ids)})
        return labels

    @property
    def thing_index(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.thing_ids)}


def evidence_mapping(evidence: np.ndarray, protocol: Protocol) -> np.ndarray:
    """(n_pred,) column of each row of an (n_pred, n_gt) evidence matrix, -1 = unmapped."""
    if evidence.size == 0:
        return np.full(evidence.shape[0], -1, dtype=np.int64)
    if protocol == "majority":
        return majority_mapping(evidence)
    mapping = hungarian_mapping(evidence)
    rows = np.flatnonzero(mapping >= 0)
    mapping[rows[evidence[rows, mapping[rows]] <= 0]] = -1
    return mapping


def segment_match_evidence(
    overlaps: list[PanopticOverlap], pred: CategoryLayout, gt: CategoryLayout
) -> np.ndarray:
    """(n_pred_things, n_gt_things) count of class-agnostic thing matches (IoU > 0.5, VOID-aware)."""
    evidence = np.zeros((len(pred.thing_ids), len(gt.thing_ids)), dtype=np.int64)
    pred_index, gt_index = pred.thing_index, gt.thing_index
    for overlap in overlaps:
        for g, p, iou in pair_ious(overlap):
            gt_category, crowd = overlap.gt_segments[g]
            pred_category = overlap.pred_segments[p]
            if iou > 0.5 and not crowd and gt_category in gt_index and pred_category in pred_index:
                evidence[pred_index[pred_category], gt_index[gt_category]] += 1
    return evidence


def box_vote_evidence(
    detections: list[dict[str, Any]],
    gt_annotations: list[dict[str, Any]],
    pred: CategoryLayout,
    gt: CategoryLayout,
    score_min: float,
    box_iou_min: float,
) -> np.ndarray:
    """(n_pred_things, n_gt_things) U2Seg votes: detections with score >= score_min against every
    non-crowd ground-truth box of the same image with box IoU > box_iou_min."""
    evidence = np.zeros((len(pred.thing_ids), len(gt.thing_ids)), dtype=np.int64)
    pred_index, gt_index = pred.thing_index, gt.thing_index
    gt_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt_annotations:
        if not ann.get("iscrowd", 0) and int(ann["category_id"]) in gt_index:
            gt_by_image.setdefault(int(ann["image_id"]), []).append(ann)
    det_by_image: dict[int, list[dict[str, Any]]] = {}
    for det in detections:
        if float(det.get("score", 1.0)) >= score_min and int(det["category_id"]) in pred_index:
            det_by_image.setdefault(int(det["image_id"]), []).append(det)
    for image_id, dets in det_by_image.items():
        gts = gt_by_image.get(image_id, [])
        if not gts:
            continue
        iou = np.asarray(
            mask_utils.iou([d["bbox"] for d in dets], [a["bbox"] for a in gts], [0] * len(gts))
        ).reshape(len(dets), len(gts))
        rows, cols = np.nonzero(iou > box_iou_min)
        np.add.at(
            evidence,
            (
                np.array([pred_index[int(dets[r]["category_id"])] for r in rows], dtype=np.int64),
                np.array([gt_index[int(gts[c]["category_id"])] for c in cols], dtype=np.int64),
            ),
            1,
        )
    return evidence


def semantic_vote_evidence(image_confusions: list[np.ndarray], iou_min: float) -> np.ndarray:
    """Sum over images of [IoU(pred == p, gt == g) > iou_min] from per-image (n_pred, n_gt) confusions."""
    votes = np.zeros_like(image_confusions[0]) if image_confusions else np.zeros((0, 0), dtype=np.int64)
    for confusion in image_confusions:
        union = confusion.sum(axis=1, keepdims=True) + confusion.sum(axis=0, keepdims=True) - confusion
        with np.errstate(divide="ignore", invalid="ignore"):
            votes += (np.where(union > 0, confusion / union, 0.0) > iou_min).astype(votes.dtype)
    return votes


def category_mapping(
    mapping: np.ndarray, pred_ids: tuple[int, ...], gt_ids: tuple[int, ...]
) -> dict[int, int]:
    """{pred category id: gt category id} from a row -> column mapping (unmapped rows left out)."""
    return {pred_ids[i]: gt_ids[j] for i, j in enumerate(mapping.tolist()) if j >= 0}


def apply_mapping(overlap: PanopticOverlap, category_map: dict[int, int], merge: set[int]) -> PanopticOverlap:
    """The overlap with predicted categories replaced through `category_map`.

    Predicted segments whose category is not mapped become VOID; segments of one image that land
    in a category of `merge` (the ground-truth stuff classes) become one segment, as stuff is one
    segment per class.
    """
    new_id: dict[int, int] = {}
    segments: dict[int, int] = {}
    merged_into: dict[int, int] = {}
    for segment_id, category in sorted(overlap.pred_segments.items()):
        target = category_map.get(category)
        if target is None:
            new_id[segment_id] = VOID
            continue
        keep = merged_into.setdefault(target, segment_id) if target in merge else segment_id
        new_id[segment_id] = keep
        segments[keep] = target
    pred = np.array([new_id.get(int(p), VOID) for p in overlap.pred], dtype=np.int64)
    keys, inverse = np.unique(overlap.gt * OFFSET + pred, return_inverse=True)
    counts = np.bincount(inverse, weights=overlap.counts).astype(np.int64)
    return PanopticOverlap(overlap.image_id, overlap.gt_segments, segments, keys // OFFSET, keys % OFFSET, counts)


def map_detections(detections: list[dict[str, Any]], category_map: dict[int, int]) -> list[dict[str, Any]]:
    """Detections with mapped category ids; those of unmapped clusters are dropped."""
    return [
        {**det, "category_id": category_map[int(det["category_id"])]}
        for det in detections
        if int(det["category_id"]) in category_map
    ]
