"""Panoptic quality with panopticapi's definition (`pq_compute_single_core`), vectorised over many images.

Per image only the pixel counts of every (ground-truth segment, predicted segment) pair are kept; a shard's
images are stacked in `SegmentTables`. PQ for any cluster-to-class mapping follows from those tables, so
the PNGs are read once. Rules:

* a prediction matches a ground-truth segment of the same category when IoU > 0.5, where the union leaves
  out the predicted pixels on ground-truth VOID; crowd segments never match;
* every non-crowd ground-truth segment listed in segments_info and not matched is a FN, also when it has
  no pixels in the PNG (panopticapi counts the JSON's segments);
* an unmatched prediction is a FP unless more than half of it lies on ground-truth VOID or on the crowd
  region of its category (the last crowd segment of that category in segments_info, as panopticapi's dict);
  predicted segments without pixels are left out (panopticapi raises on them);
* PQ/SQ/RQ are averaged over the categories with TP + FP + FN > 0 (all, things, stuff), x100.

Differences from panopticapi: segment areas come from the PNGs on both sides (panopticapi takes ground-truth
areas from the JSON; equal for COCO); ground-truth PNG ids missing from segments_info are VOID (panopticapi
skips them but does not count them as VOID; official ground truth has none); and predicted segments of unmapped clusters are VOID (U2Seg's
evaluator erases them from the PNG before pq_compute, which is the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

VOID = 0
ID_BITS = 24  # COCO panoptic ids are 24-bit (id2rgb)
MATCH_IOU = 0.5


@dataclass
class SegmentTables:
    """Stacked per-image tables of one shard (all int64).

    pairs (P, 4): image index, gt segment id, pred segment id, pixel count (VOID = 0 included on both sides);
    gt (G, 4): image index, segment id, ground-truth category index, iscrowd;
    pred (Q, 3): image index, segment id, predicted category index.
    """

    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    gt: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    pred: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))

    @staticmethod
    def concat(parts: list["SegmentTables"]) -> "SegmentTables":
        if not parts:
            return SegmentTables()
        return SegmentTables(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("pairs", "gt", "pred")))


LOOKUP_MAX_ID = 1 << 20  # below this, positions come from a lookup table (4 MiB at most) instead of a search


def segment_positions(ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """(H, W) int64 position of each pixel's segment id in `segment_ids` (any order), -1 where not listed (VOID)."""
    segment_ids = np.asarray(segment_ids, np.int64)
    if len(segment_ids) == 0:
        return np.full(ids.shape, -1, np.int64)
    largest = max(int(segment_ids.max()), int(ids.max(initial=0)))
    if largest < LOOKUP_MAX_ID and segment_ids.min() >= 0:
        table = np.full(largest + 1, -1, np.int32)
        table[segment_ids[::-1]] = np.arange(len(segment_ids), dtype=np.int32)[::-1]  # first listed wins
        return table[ids].astype(np.int64)
    order = np.argsort(segment_ids, kind="stable")
    ordered = segment_ids[order]
    pos = np.clip(np.searchsorted(ordered, ids), 0, len(ordered) - 1)
    return np.where(ordered[pos] == ids, order[pos], -1)


def image_tables(
    image: int, gt_pos: np.ndarray, gt_segments: np.ndarray, pred_pos: np.ndarray, pred_segments: np.ndarray
) -> SegmentTables:
    """Tables of one image from (H, W) segment positions (`segment_positions`; -1 = VOID) into gt_segments
    (G, 3: id, category index, iscrowd) and pred_segments (Q, 2: id, category index). One bincount, no sort."""
    if gt_pos.shape != pred_pos.shape:
        raise ValueError(f"prediction is {pred_pos.shape}, ground truth {gt_pos.shape}")
    gt_segments = np.asarray(gt_segments, np.int64).reshape(-1, 3)
    pred_segments = np.asarray(pred_segments, np.int64).reshape(-1, 2)
    n_pred = len(pred_segments) + 1
    counts = np.bincount(((gt_pos + 1) * n_pred + pred_pos + 1).ravel(), minlength=(len(gt_segments) + 1) * n_pred)
    nonzero = np.flatnonzero(counts)
    gt_id = np.concatenate([[VOID], gt_segments[:, 0]])[nonzero // n_pred]
    pred_id = np.concatenate([[VOID], pred_segments[:, 0]])[nonzero % n_pred]
    pairs = np.stack([np.full(len(nonzero), image, np.int64), gt_id, pred_id, counts[nonzero]], axis=1)
    gt = np.concatenate([np.full((len(gt_segments), 1), image, np.int64), gt_segments], axis=1)
    pred = np.concatenate([np.full((len(pred_segments), 1), image, np.int64), pred_segments], axis=1)
    return SegmentTables(pairs, gt, pred)


def _key(image: np.ndarray, segment: np.ndarray) -> np.ndarray:
    return (image.astype(np.int64) << ID_BITS) | segment.astype(np.int64)


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `keys` in `sorted_keys` and whether each was found."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys


def _sums(keys: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each key in `at`, the sum of `values` over the rows with that key."""
    unique, inverse = np.unique(keys, return_inverse=True)
    totals = np.bincount(inverse, weights=values, minlength=len(unique))
    pos, found = _find(unique, at)
    return np.where(found, totals[pos] if len(unique) else 0, 0).astype(np.int64)


@dataclass
class _Pairs:
    """Pair rows joined with both segment tables, plus each row's VOID-aware IoU."""

    gt_row: np.ndarray
    pred_row: np.ndarray
    iou: np.ndarray
    pred_area: np.ndarray
    pred_void: np.ndarray


def _join(tables: SegmentTables, pred_keep: np.ndarray) -> _Pairs:
    pairs = tables.pairs
    gt_keys = _key(tables.gt[:, 0], tables.gt[:, 1])
    gt_order = np.argsort(gt_keys, kind="stable")
    pred = tables.pred[pred_keep]
    pred_keys = _key(pred[:, 0], pred[:, 1])
    pred_order = np.argsort(pred_keys, kind="stable")
    pair_gt, pair_pred = _key(pairs[:, 0], pairs[:, 1]), _key(pairs[:, 0], pairs[:, 2])
    gi, g_found = _find(gt_keys[gt_order], pair_gt)
    pi, p_found = _find(pred_keys[pred_order], pair_pred)
    valid = g_found & p_found & (pairs[:, 1] != VOID) & (pairs[:, 2] != VOID)
    count = pairs[:, 3].astype(np.float64)
    gt_area = _sums(pair_gt, count, pair_gt)
    pred_area = _sums(pair_pred, count, pred_keys)
    on_void = pairs[:, 1] == VOID
    pred_void = _sums(pair_pred[on_void], count[on_void], pred_keys)
    pair_pred_area = _sums(pair_pred, count, pair_pred)
    pair_pred_void = _sums(pair_pred[on_void], count[on_void], pair_pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = count / (pair_pred_area + gt_area - count - pair_pred_void)
    rows = np.flatnonzero(valid)
    return _Pairs(gt_order[gi[rows]], np.flatnonzero(pred_keep)[pred_order[pi[rows]]], iou[rows],
                  pred_area, pred_void)


def pq_counts(tables: SegmentTables, pred_to_gt: np.ndarray, n_categories: int) -> np.ndarray:
    """(n_categories, 4) float64 [tp, fp, fn, iou_sum] per ground-truth category index.

    pred_to_gt: (n_pred_categories,) ground-truth category index of each predicted category, -1 =
    unmapped (its segments are VOID).
    """
    gt, pred, pairs = tables.gt, tables.pred, tables.pairs
    pred_category = pred_to_gt[pred[:, 2]] if len(pred) else np.zeros(0, np.int64)
    keep = pred_category >= 0
    joined = _join(tables, keep)
    same = (gt[joined.gt_row, 2] == pred_category[joined.pred_row]) & (gt[joined.gt_row, 3] == 0)
    match = same & (joined.iou > MATCH_IOU)
    out = np.zeros((n_categories, 4))
    matched_gt, matched_pred = joined.gt_row[match], joined.pred_row[match]
    out[:, 0] = np.bincount(gt[matched_gt, 2], minlength=n_categories)[:n_categories]
    out[:, 3] = np.bincount(gt[matched_gt, 2], weights=joined.iou[match], minlength=n_categories)[:n_categories]
    unmatched_gt = np.ones(len(gt), bool)
    unmatched_gt[matched_gt] = False
    fn_rows = unmatched_gt & (gt[:, 3] == 0)
    out[:, 2] = np.bincount(gt[fn_rows, 2], minlength=n_categories)[:n_categories]

    # FP: kept, unmatched predictions with pixels, not mostly on VOID or on their category's crowd region
    kept_rows = np.flatnonzero(keep)
    unmatched = np.ones(len(pred), bool)
    unmatched[matched_pred] = False
    candidates = unmatched[kept_rows] & (joined.pred_area > 0)
    ignored = joined.pred_void.astype(np.float64)
    crowd = np.flatnonzero(gt[:, 3] == 1)
    if len(crowd):
        # panopticapi keeps one crowd segment per (image, category): the last one listed
        crowd_key = _key(gt[crowd, 0], gt[crowd, 2])
        _, last = np.unique(crowd_key[::-1], return_index=True)
        chosen = crowd[::-1][last]
        chosen_keys = _key(gt[chosen, 0], gt[chosen, 1])
        chosen_order = np.argsort(chosen_keys)
        pos, found = _find(chosen_keys[chosen_order], _key(pairs[:, 0], pairs[:, 1]))
        crowd_cat = np.where(found, gt[chosen[chosen_order[pos]], 2] if len(chosen) else -1, -1)
        kept_keys = _key(pred[kept_rows, 0], pred[kept_rows, 1])
        kept_order = np.argsort(kept_keys)
        ppos, pfound = _find(kept_keys[kept_order], _key(pairs[:, 0], pairs[:, 2]))
        row_of_pair = np.where(pfound, kept_order[ppos], -1)
        on_crowd = found & pfound & (pairs[:, 2] != VOID)
        on_crowd &= crowd_cat == np.where(row_of_pair >= 0, pred_category[kept_rows[row_of_pair]], -2)
        ignored += np.bincount(row_of_pair[on_crowd], weights=pairs[on_crowd, 3], minlength=len(kept_rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        is_fp = candidates & (ignored / joined.pred_area <= 0.5)
    out[:, 1] = np.bincount(pred_category[kept_rows[is_fp]], minlength=n_categories)[:n_categories]
    return out


def match_evidence(
    tables: SegmentTables, pred_thing: np.ndarray, gt_thing: np.ndarray, n_pred_things: int, n_gt_things: int
) -> np.ndarray:
    """(n_pred_things, n_gt_things) count of class-agnostic thing matches (IoU > 0.5, VOID-aware, no crowd).

    pred_thing / gt_thing: thing position of each predicted / ground-truth category index, -1 for stuff.
    """
    joined = _join(tables, np.ones(len(tables.pred), bool))
    p = pred_thing[tables.pred[joined.pred_row, 2]]
    g = gt_thing[tables.gt[joined.gt_row, 2]]
    ok = (joined.iou > MATCH_IOU) & (p >= 0) & (g >= 0) & (tables.gt[joined.gt_row, 3] == 0)
    evidence = np.zeros((n_pred_things, n_gt_things), np.int64)
    np.add.at(evidence, (p[ok], g[ok]), 1)
    return evidence


def pq_summary(totals: np.ndarray, categories: list[dict[str, Any]]) -> dict[str, Any]:
    """PQ/SQ/RQ (x100) for all, things and stuff plus a per-category table from summed `pq_counts`."""
    per_class: dict[str, dict[str, Any]] = {}
    for (tp, fp, fn, iou_sum), category in zip(totals, categories):
        if tp + fp + fn == 0:
            continue
        sq = iou_sum / tp if tp else 0.0
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[str(category["id"])] = {
            "name": category["name"], "isthing": bool(category["isthing"]),
            "pq": 100 * sq * rq, "sq": 100 * sq, "rq": 100 * rq, "tp": int(tp), "fp": int(fp), "fn": int(fn),
        }
    result: dict[str, Any] = {}
    for group, keep in (("all", None), ("things", True), ("stuff", False)):
        rows = [r for r in per_class.values() if keep is None or r["isthing"] == keep]
        result[group] = {
            metric: float(np.mean([r[metric] for r in rows])) if rows else 0.0 for metric in ("pq", "sq", "rq")
        } | {"n": len(rows)}
    result["per_class"] = per_class
    return result
