"""The global reduce: sum the shards' evidence, fit each protocol's mapping, score PQ / AP / semantic.

Protocols (the report names the one of each row; every mapping is fitted on the evaluated set itself,
i.e. transductively, as U2Seg and STEGO publish):

* `u2seg`: U2Seg's released COCO evaluation: majority votes (matching.py) for things and stuff; PQ/SQ/RQ
  with panopticapi's rules on the mapped predictions (unmapped segments VOID); box and mask AP of the
  mapped instances (U2Seg reports box AP only); semantic mIoU / fwIoU / mACC / pACC over things-as-one +
  ground-truth stuff, unmapped predictions left out as in U2Seg's SemSegEvaluator.
* `hungarian`: the same scores with one-to-one Hungarian mappings; unmapped/VOID pixels count as errors.
* `stego27`: STEGO's protocol for semantic maps: one Hungarian assignment on the dataset-level confusion of
  every predicted category against every ground-truth category (27 x 27 for STEGO's maps on COCO-Stuff-27
  or Cityscapes-27), unsupervised mIoU and pixel accuracy; no PQ or AP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from .ap import coco_ap, coco_from_dict
from .datasets import GroundTruth
from .evidence import COUNT_KEYS, LabelSpace, SetEvidence
from .matching import fit_mapping, map_detections
from .pq import pq_counts, pq_summary
from .predictions import PredictionSet
from .semantic import hungarian_mapping, semantic_scores, u2seg_semantic_scores

PROTOCOLS = ("u2seg", "hungarian", "stego27")


@dataclass
class Totals:
    """One prediction set's evidence summed over the shards."""

    joint: np.ndarray
    semantic: np.ndarray
    semantic_votes: np.ndarray
    box_votes: np.ndarray
    match: np.ndarray
    segments: np.ndarray
    pixels: np.ndarray
    scored: set[int]
    counts: dict[str, int]
    problems: dict[str, list[str]]


def sum_evidence(shards: Iterator[list[SetEvidence]], n_sets: int) -> list[Totals]:
    totals: list[Totals | None] = [None] * n_sets
    for evidence in shards:
        for i, ev in enumerate(evidence):
            t = totals[i]
            if t is None:
                totals[i] = Totals(ev.joint.copy(), ev.semantic.copy(), ev.semantic_votes.copy(), ev.box_votes.copy(), ev.match.copy(),
                                   ev.segments.copy(), ev.pixels.copy(), set(ev.scored), dict(ev.counts),
                                   {k: list(v) for k, v in ev.problems.items()})
                continue
            for name in ("joint", "semantic", "semantic_votes", "box_votes", "match", "segments", "pixels"):
                setattr(t, name, getattr(t, name) + getattr(ev, name))
            t.scored.update(ev.scored)
            for key in COUNT_KEYS:
                t.counts[key] += ev.counts.get(key, 0)
            for key, names in ev.problems.items():
                t.problems.setdefault(key, []).extend(names[: max(0, 20 - len(t.problems.get(key, [])))])
    if any(t is None for t in totals):
        raise ValueError("no shard evidence to reduce: the prediction sets have no shards")
    return totals  # type: ignore[return-value]


@dataclass
class FittedMapping:
    """A protocol's mapping of one set: predicted category index -> ground-truth category index (-1)."""

    protocol: str
    pred_to_gt: np.ndarray
    thing_rows: np.ndarray  # (T_pred,) gt thing position or -1
    stuff_rows: np.ndarray  # (S_pred,) gt stuff position or -1


def fit(protocol: str, totals: Totals, space: LabelSpace) -> FittedMapping:
    """The protocol's cluster-to-class mapping from the summed evidence."""
    gt_things = np.flatnonzero(space.gt_thing >= 0)
    gt_stuff = np.flatnonzero(space.gt_thing < 0)
    pred_things = np.flatnonzero(space.pred_thing >= 0)
    pred_stuff = np.flatnonzero(space.pred_thing < 0)
    pred_to_gt = np.full(space.n_pred, -1, np.int64)
    if protocol == "stego27":
        rows = hungarian_mapping(totals.joint[1:, 1:]) if totals.joint[1:, 1:].size else pred_to_gt
        return FittedMapping(protocol, rows, np.full(len(pred_things), -1), np.full(len(pred_stuff), -1))
    semantic = totals.semantic
    if protocol == "u2seg":
        thing_rows = fit_mapping(totals.box_votes, "u2seg")
        stuff_rows = fit_mapping(totals.semantic_votes, "u2seg")
    else:
        thing_rows = fit_mapping(totals.match, "hungarian")
        stuff_rows = fit_mapping(semantic[2:, 2:], "hungarian")
    pred_to_gt[pred_things] = np.where(thing_rows >= 0, gt_things[np.maximum(thing_rows, 0)] if len(gt_things) else -1, -1)
    pred_to_gt[pred_stuff] = np.where(stuff_rows >= 0, gt_stuff[np.maximum(stuff_rows, 0)] if len(gt_stuff) else -1, -1)
    return FittedMapping(protocol, pred_to_gt, thing_rows, stuff_rows)


def semantic_result(protocol: str, totals: Totals, space: LabelSpace, mapping: FittedMapping,
                    gt: GroundTruth) -> dict[str, Any]:
    """Semantic scores of the protocol, with its class names."""
    if protocol == "stego27":
        confusion, label_map = totals.joint[1:, 1:], mapping.pred_to_gt
        result = semantic_scores(confusion, label_map)
        result["class_names"] = [c["name"] for c in gt.categories]
    else:
        semantic = totals.semantic
        confusion = np.concatenate([semantic[1:, 1:], semantic[:1, 1:]])  # VOID row last
        label_map = np.concatenate([[0], np.where(mapping.stuff_rows >= 0, mapping.stuff_rows + 1, -1), [-1]])
        label_map = label_map.astype(np.int64)
        result = (u2seg_semantic_scores if protocol == "u2seg" else semantic_scores)(confusion, label_map)
        result["class_names"] = ["things"] + [c["name"] for c in gt.categories if not c["isthing"]]
    result["mapped_confusion"] = mapped_confusion(confusion, label_map).tolist()
    return result


def mapped_confusion(confusion: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """(n_gt, n_gt + 1) pixels per (ground-truth label, mapped predicted label); last column unmapped/VOID."""
    n_gt = confusion.shape[1]
    columns = np.where(label_map >= 0, label_map, n_gt)
    out = np.zeros((n_gt, n_gt + 1), dtype=np.int64)
    np.add.at(out.T, columns, confusion)
    return out


def panoptic_result(mappings: list[FittedMapping], tables: Callable[[], Iterator[Any]],
                    gt: GroundTruth) -> list[dict[str, Any]]:
    """PQ of every mapping, streaming the shards' pair tables once."""
    totals = [np.zeros((len(gt.categories), 4)) for _ in mappings]
    for table in tables():
        for total, mapping in zip(totals, mappings):
            total += pq_counts(table, mapping.pred_to_gt, len(gt.categories))
    return [pq_summary(total, gt.categories) for total in totals]


def instance_result(
    gt: GroundTruth, pset: PredictionSet, mapping: FittedMapping, shard_docs: Callable[[], Iterator[dict]],
    scored: set[int],
) -> tuple[dict[str, Any], dict[str, int] | None]:
    """Box and mask AP of the mapped instances (pycocotools) on the `scored` ground-truth image ids, or
    ({}, None) when either side has no instances."""
    category_map = {
        int(pset.categories[i]["id"]): int(gt.categories[j]["id"]) for i, j in enumerate(mapping.pred_to_gt) if j >= 0
    }
    detections, n_all = [], 0
    for doc in shard_docs():
        image_of = {}
        for im in doc["images"]:
            match = gt.lookup(im["file_name"])
            if match is not None and match.image_id in scored:
                image_of[int(im["id"])] = match.image_id
        n_all += len(doc.get("instances", []))
        for det in map_detections(doc.get("instances", []), category_map):
            if int(det["image_id"]) in image_of:
                detections.append({**det, "image_id": image_of[int(det["image_id"])]})
    doc = gt.coco_instances(scored) if n_all else None
    if doc is None:
        return {}, None
    coco = coco_from_dict(doc)
    results = {task: coco_ap(coco, detections, task, sorted(scored)) for task in ("bbox", "segm")}
    return results, {"all": n_all, "mapped": len(detections)}


def mapping_summary(mapping: FittedMapping, pset: PredictionSet, gt: GroundTruth) -> dict[str, Any]:
    """The mapping as {"things": {cluster id: class name}, "stuff": {...}} (what `u2seg predict --mapping`
    reads), plus `pred_to_gt` (both together) and counts."""
    names = gt.category_names
    groups: dict[str, dict[str, str]] = {"things": {}, "stuff": {}}
    for i, j in enumerate(mapping.pred_to_gt.tolist()):
        if j >= 0:
            category = pset.categories[i]
            groups["things" if category.get("isthing") else "stuff"][str(category["id"])] = names[int(gt.categories[j]["id"])]
    return {
        **groups,
        "pred_to_gt": {**groups["things"], **groups["stuff"]},
        "n_pred_things": len(pset.thing_ids), "n_mapped_things": len(groups["things"]),
        "n_pred_stuff": len(pset.stuff_ids), "n_mapped_stuff": len(groups["stuff"]),
    }
