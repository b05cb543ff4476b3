"""Panoptic quality with panopticapi's definition, computed from per-image overlap tables.

Per image only the pixel counts of every (ground-truth segment, predicted segment) pair are kept
(`PanopticOverlap`); PQ for any cluster-to-class mapping follows from those tables, so the PNGs
are read once. Rules (panopticapi `pq_compute_single_core`):

* a prediction matches a ground-truth segment of the same category when IoU > 0.5, where the
  union leaves out the predicted pixels on ground-truth VOID;
* unmatched non-crowd ground truth counts as FN;
* an unmatched prediction counts as FP unless more than half of it lies on ground-truth VOID or
  on the crowd region of its category;
* PQ/SQ/RQ are averaged over the categories with TP + FP + FN > 0 (all, things, stuff), x100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

VOID = 0
OFFSET = 1 << 32  # segment ids fit in 24 bits (id2rgb), so gt * OFFSET + pred never collides


@dataclass(frozen=True)
class PanopticOverlap:
    """One image pair reduced to what PQ needs.

    gt_segments: id -> (category_id, iscrowd); pred_segments: id -> category_id. gt, pred, counts:
    (P,) int64 rows of the joint histogram, VOID (0) included on both sides.
    """

    image_id: int
    gt_segments: dict[int, tuple[int, bool]]
    pred_segments: dict[int, int]
    gt: np.ndarray
    pred: np.ndarray
    counts: np.ndarray


def panoptic_overlap(
    image_id: int,
    gt_ids: np.ndarray,
    gt_segments: list[dict[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: list[dict[str, Any]],
) -> PanopticOverlap:
    """Joint histogram of a (H, W) ground-truth and a (H, W) predicted segment-id map.

    Raises ValueError when the shapes differ or a map holds an id missing from its segments_info.
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"image {image_id}: prediction is {pred_ids.shape}, ground truth {gt_ids.shape}")
    keys, counts = np.unique(gt_ids.astype(np.int64) * OFFSET + pred_ids.astype(np.int64), return_counts=True)
    gt, pred = keys // OFFSET, keys % OFFSET
    gt_info = {int(s["id"]): (int(s["category_id"]), bool(s.get("iscrowd", 0))) for s in gt_segments}
    pred_info = {int(s["id"]): int(s["category_id"]) for s in pred_segments}
    for side, ids, info in (("ground-truth", gt, gt_info), ("predicted", pred, pred_info)):
        unknown = sorted({int(i) for i in ids} - set(info) - {VOID})
        if unknown:
            raise ValueError(f"image {image_id}: {side} PNG has segment ids {unknown[:5]} missing from segments_info")
    return PanopticOverlap(image_id, gt_info, pred_info, gt, pred, counts.astype(np.int64))


def pair_ious(overlap: PanopticOverlap) -> list[tuple[int, int, float]]:
    """(gt id, pred id, IoU) for every touching pair of non-VOID segments, any categories.

    The union leaves out the predicted pixels that lie on ground-truth VOID (panopticapi).
    """
    gt_area = _areas(overlap.gt, overlap.counts)
    pred_area = _areas(overlap.pred, overlap.counts)
    on_void = {int(p): int(c) for g, p, c in zip(overlap.gt, overlap.pred, overlap.counts) if g == VOID}
    out = []
    for g, p, inter in zip(overlap.gt.tolist(), overlap.pred.tolist(), overlap.counts.tolist()):
        if g != VOID and p != VOID:
            out.append((g, p, inter / (pred_area[p] + gt_area[g] - inter - on_void.get(p, 0))))
    return out


def image_pq_counts(overlap: PanopticOverlap) -> dict[int, np.ndarray]:
    """category_id -> [tp, fp, fn, iou_sum] for one image."""
    stats: dict[int, np.ndarray] = {}

    def add(category: int, column: int, value: float = 1.0) -> None:
        stats.setdefault(category, np.zeros(4))[column] += value

    matched_gt: set[int] = set()
    matched_pred: set[int] = set()
    for g, p, iou in pair_ious(overlap):
        gt_category, crowd = overlap.gt_segments[g]
        if not crowd and gt_category == overlap.pred_segments[p] and iou > 0.5:
            matched_gt.add(g)
            matched_pred.add(p)
            add(gt_category, 0)
            add(gt_category, 3, iou)

    gt_present = set(overlap.gt.tolist())
    pred_area = _areas(overlap.pred, overlap.counts)
    pair = {(int(g), int(p)): int(c) for g, p, c in zip(overlap.gt, overlap.pred, overlap.counts)}
    crowd_of: dict[int, int] = {}
    for g, (category, crowd) in overlap.gt_segments.items():
        if crowd:
            crowd_of[category] = g
        elif g not in matched_gt and g in gt_present:
            add(category, 2)
    for p, category in overlap.pred_segments.items():
        if p in matched_pred or p not in pred_area:
            continue
        ignored = pair.get((VOID, p), 0)
        if category in crowd_of:
            ignored += pair.get((crowd_of[category], p), 0)
        if ignored / pred_area[p] <= 0.5:
            add(category, 1)
    return stats


def pq_compute(overlaps: list[PanopticOverlap], categories: list[dict[str, Any]]) -> dict[str, Any]:
    """PQ/SQ/RQ (x100) for all, things and stuff, plus a per-category table.

    categories: COCO panoptic categories (id, name, isthing) of the ground truth; predictions must
    already use these ids (see `matching.apply_mapping`).
    """
    known = {int(c["id"]): c for c in categories}
    totals = {cid: np.zeros(4) for cid in known}
    for overlap in overlaps:
        for category, stats in image_pq_counts(overlap).items():
            if category not in known:
                raise ValueError(f"image {overlap.image_id}: category {category} is not a ground-truth category")
            totals[category] += stats

    per_class: dict[int, dict[str, Any]] = {}
    for cid, (tp, fp, fn, iou_sum) in totals.items():
        if tp + fp + fn == 0:
            continue
        sq = iou_sum / tp if tp else 0.0
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[cid] = {
            "name": known[cid].get("name", str(cid)),
            "isthing": bool(known[cid].get("isthing", 0)),
            "pq": 100 * sq * rq,
            "sq": 100 * sq,
            "rq": 100 * rq,
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
        }
    result: dict[str, Any] = {}
    for group, keep in (("all", None), ("things", True), ("stuff", False)):
        rows = [r for r in per_class.values() if keep is None or r["isthing"] == keep]
        result[group] = {
            "pq": float(np.mean([r["pq"] for r in rows])) if rows else 0.0,
            "sq": float(np.mean([r["sq"] for r in rows])) if rows else 0.0,
            "rq": float(np.mean([r["rq"] for r in rows])) if rows else 0.0,
            "n": len(rows),
        }
    result["per_class"] = per_class
    return result


def _areas(ids: np.ndarray, counts: np.ndarray) -> dict[int, int]:
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.bincount(inverse, weights=counts)
    return {int(i): int(s) for i, s in zip(unique, sums)}
