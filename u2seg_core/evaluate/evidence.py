"""Per-shard evaluation evidence: everything the global reduce needs, from one read of every PNG.

For one shard and every prediction set, `shard_evidence` joins the set's images with the ground truth by
identity (file name), reads each ground-truth label file and each predicted panoptic PNG once, and keeps:

* `joint` (n_pred_categories + 1, n_gt_categories + 1) pixel counts of (predicted category, ground-truth
  category); row 0 = predicted VOID, column 0 = ground-truth ignore (VOID / unlabeled);
* `semantic_votes` (S_pred, S_gt): images in which a predicted stuff class and a ground-truth stuff class
  overlap with IoU > u2seg_semantic_iou (U2Seg's per-image vote);
* `box_votes` (T_pred, T_gt): U2Seg's box votes; `match` (T_pred, T_gt): class-agnostic segment matches
  at IoU > 0.5 (Hungarian's thing evidence);
* `tables`: the PQ pair tables (`pq.SegmentTables`);
* pseudo-label statistics (segments and pixels per predicted category), also without ground truth.

A ground-truth image without a prediction in a set is scored as an all-VOID prediction for that set; a
predicted image without ground truth is counted, not scored. Evidence is written as one .npz per shard
(no pickles) plus its JSON summary inside.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import storage
from .datasets import IGNORE, GroundTruth, GtImage, identity
from .datasets.coco import read_segment_ids
from .matching import box_votes, semantic_votes
from .pq import SegmentTables, image_tables, match_evidence, segment_positions
from .predictions import PredictionSet

MAX_LISTED = 20  # names listed per kind of problem; the counts are always complete


@dataclass(frozen=True)
class LabelSpace:
    """Index maps of one (ground truth, prediction set) pair.

    Semantic labels (things as one class): 0 = any thing, 1..S = stuff in category order.
    """

    pred_index: dict[int, int]
    pred_semantic: np.ndarray  # (n_pred,) semantic label of each predicted category
    pred_thing: np.ndarray  # (n_pred,) thing position, -1 for stuff
    gt_semantic: np.ndarray  # (n_gt,)
    gt_thing: np.ndarray  # (n_gt,)

    @staticmethod
    def of(gt: GroundTruth | None, pset: PredictionSet) -> "LabelSpace":
        """The maps of `pset` against `gt` (without ground truth: an empty ground-truth side)."""
        def maps(categories: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
            things = np.array([bool(c.get("isthing")) for c in categories], bool)
            semantic = np.where(things, 0, np.cumsum(~things))
            thing = np.where(things, np.cumsum(things) - 1, -1)
            return semantic.astype(np.int64), thing.astype(np.int64)

        pred_semantic, pred_thing = maps(list(pset.categories))
        gt_semantic, gt_thing = maps(gt.categories if gt else [])
        index = {int(c["id"]): i for i, c in enumerate(pset.categories)}
        return LabelSpace(index, pred_semantic, pred_thing, gt_semantic, gt_thing)

    @property
    def n_pred(self) -> int:
        return len(self.pred_semantic)

    @property
    def n_gt(self) -> int:
        return len(self.gt_semantic)

    def semantic_confusion(self, joint: np.ndarray) -> np.ndarray:
        """(S_pred + 2, S_gt + 2) collapse of a joint matrix: row 0 VOID, rows 1.. semantic labels;
        column 0 ignore, columns 1.. semantic labels."""
        rows = np.concatenate([[0], self.pred_semantic + 1])
        cols = np.concatenate([[0], self.gt_semantic + 1])
        by_row = np.zeros((int(rows.max()) + 1, joint.shape[1]), np.int64)
        np.add.at(by_row, rows, joint)
        out = np.zeros((by_row.shape[0], int(cols.max()) + 1), np.int64)
        np.add.at(out.T, cols, by_row.T)
        return out


@dataclass
class SetEvidence:
    """Evidence of one prediction set on one shard (module docstring)."""

    joint: np.ndarray
    semantic: np.ndarray  # (S_pred + 2, S_gt + 2) as `LabelSpace.semantic_confusion`
    semantic_votes: np.ndarray
    box_votes: np.ndarray
    match: np.ndarray
    tables: list[SegmentTables] = field(default_factory=list)
    segments: np.ndarray | None = None  # (n_pred,) segments per predicted category
    pixels: np.ndarray | None = None  # (n_pred,) pixels per predicted category (segments_info areas)
    scored: list[int] = field(default_factory=list)  # ground-truth image ids scored, in order
    counts: dict[str, int] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def empty(space: LabelSpace) -> "SetEvidence":
        n_sp, n_sg = int(space.pred_semantic.max(initial=0)), int(space.gt_semantic.max(initial=0))
        n_tp, n_tg = int((space.pred_thing >= 0).sum()), int((space.gt_thing >= 0).sum())
        return SetEvidence(
            joint=np.zeros((space.n_pred + 1, space.n_gt + 1), np.int64),
            semantic=np.zeros((n_sp + 2, n_sg + 2), np.int64),
            semantic_votes=np.zeros((n_sp, n_sg), np.int64),
            box_votes=np.zeros((n_tp, n_tg), np.int64),
            match=np.zeros((n_tp, n_tg), np.int64),
            segments=np.zeros(space.n_pred, np.int64),
            pixels=np.zeros(space.n_pred, np.int64),
            counts={key: 0 for key in COUNT_KEYS},
        )

    def note(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        listed = self.problems.setdefault(kind, [])
        if len(listed) < MAX_LISTED:
            listed.append(text)


COUNT_KEYS = (
    "n_images", "n_scored", "missing_prediction", "missing_ground_truth", "unreadable_prediction",
    "unreadable_ground_truth", "n_thing_segments", "n_stuff_segments", "images_without_things", "n_pixels",
)


def _pred_tables(doc: dict[str, Any]) -> tuple[dict[str, dict], dict[str, dict], dict[int, list[dict]]]:
    """identity -> image entry, identity -> panoptic annotation, image id -> instances, of one shard's JSON."""
    images = {identity(im["file_name"]): im for im in doc["images"]}
    by_id = {int(im["id"]): key for key, im in images.items()}
    panoptic = {by_id[int(a["image_id"])]: a for a in doc["panoptic"] if int(a["image_id"]) in by_id}
    instances: dict[int, list[dict]] = {}
    for ann in doc.get("instances", []):
        instances.setdefault(int(ann["image_id"]), []).append(ann)
    return images, panoptic, instances


def _segment_table(segments: list[dict[str, Any]], index: dict[int, int]) -> np.ndarray:
    """(Q, 2) segment id and predicted category index, in segments_info order (unknown categories: ValueError)."""
    unknown = sorted({int(s["category_id"]) for s in segments} - set(index))
    if unknown:
        raise ValueError(f"segments of unknown categories {unknown[:5]}")
    return np.array([(int(s["id"]), index[int(s["category_id"])]) for s in segments], np.int64).reshape(-1, 2)


def _pred_positions(pred_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W) position of each pixel's segment in `table`, -1 VOID; ValueError on ids missing from segments_info
    (panopticapi raises on them too)."""
    pos = segment_positions(pred_ids, table[:, 0])
    unknown = (pos < 0) & (pred_ids != 0)
    if unknown.any():
        raise ValueError(f"PNG has segment ids {np.unique(pred_ids[unknown])[:5].tolist()} missing from segments_info")
    return pos


def _add_stats(evidence: SetEvidence, space: LabelSpace, annotation: dict[str, Any]) -> None:
    segments = annotation["segments_info"]
    cats = np.array([space.pred_index.get(int(s["category_id"]), -1) for s in segments], np.int64)
    areas = np.array([int(s.get("area", 0)) for s in segments], np.int64)
    ok = cats >= 0
    np.add.at(evidence.segments, cats[ok], 1)
    np.add.at(evidence.pixels, cats[ok], areas[ok])
    n_things = int((space.pred_thing[cats[ok]] >= 0).sum())
    evidence.counts["n_thing_segments"] += n_things
    evidence.counts["n_stuff_segments"] += int(ok.sum()) - n_things
    evidence.counts["images_without_things"] += n_things == 0


def shard_evidence(
    gt: GroundTruth | None,
    sets: list[PredictionSet],
    shard: str,
    planned: list[str] | None,
    score_min: float,
    box_iou_min: float,
    semantic_iou_min: float,
    png_reads: list[str] | None = None,
    only_planned: bool = False,
) -> tuple[list[SetEvidence], list[LabelSpace]]:
    """Evidence of every set on one shard. planned: the file names the run planned for this shard (their
    GT counts as missing in a set that lacks them); png_reads: when given, every PNG read is appended;
    only_planned: the sets' images outside `planned` are left out (the held-out split)."""
    docs = [pset.read_shard(shard) or {"images": [], "panoptic": [], "instances": []} for pset in sets]
    loaded = [_pred_tables(doc) for doc in docs]
    sets = [replace(pset, semantic_head=True) if "model" in doc else pset for pset, doc in zip(sets, docs)]
    spaces = [LabelSpace.of(gt, pset) for pset in sets]
    evidence = [SetEvidence.empty(space) for space in spaces]
    order: dict[str, str] = {identity(name): name for name in planned or []}
    for images, _, _ in [] if only_planned else loaded:
        for key, entry in images.items():
            order.setdefault(key, entry["file_name"])

    for key, file_name in order.items():
        for (images, panoptic, _), ev, space in zip(loaded, evidence, spaces):
            if key in panoptic:
                ev.counts["n_images"] += 1
                _add_stats(ev, space, panoptic[key])
        if gt is None:
            continue
        gt_image = gt.lookup(file_name)
        if gt_image is None:
            for (images, _, _), ev in zip(loaded, evidence):
                if key in images:
                    ev.note("missing_ground_truth", file_name)
            continue
        try:
            sample = gt.read(gt_image)
            if png_reads is not None:
                png_reads.append(gt_image.label_url)
        except (OSError, ValueError) as exc:
            for ev in evidence:
                ev.note("unreadable_ground_truth", f"{gt_image.file_name}: {exc}")
            continue
        for pset, (images, panoptic, instances), ev, space in zip(sets, loaded, evidence, spaces):
            _score_image(gt, gt_image, sample, pset, images.get(key), panoptic.get(key), instances, ev, space,
                         score_min, box_iou_min, semantic_iou_min, png_reads)
    for ev, space in zip(evidence, spaces):
        if ev.tables:
            ev.tables = [SegmentTables.concat(ev.tables)]
            ev.match = match_evidence(ev.tables[0], space.pred_thing, space.gt_thing, *ev.match.shape)
    return evidence, spaces


def _score_image(
    gt: GroundTruth,
    gt_image: GtImage,
    sample: Any,
    pset: PredictionSet,
    entry: dict[str, Any] | None,
    annotation: dict[str, Any] | None,
    instances: dict[int, list[dict]],
    ev: SetEvidence,
    space: LabelSpace,
    score_min: float,
    box_iou_min: float,
    semantic_iou_min: float,
    png_reads: list[str] | None,
) -> None:
    shape = sample.category_index.shape
    pred_pos, table, segments, detections = np.full(shape, -1, np.int64), np.zeros((0, 2), np.int64), [], []
    if annotation is None:
        ev.note("missing_prediction", gt_image.file_name)
    else:
        try:
            url = pset.png_url(annotation)
            ids = read_segment_ids(url)
            if png_reads is not None:
                png_reads.append(url)
            if ids.shape != shape:
                raise ValueError(f"prediction is {ids.shape[1]}x{ids.shape[0]}, ground truth {shape[1]}x{shape[0]}")
            table = _segment_table(annotation["segments_info"], space.pred_index)
            pred_pos = _pred_positions(ids, table)
            segments = annotation["segments_info"]
            detections = instances.get(int(entry["id"]), []) if entry else []
        except (OSError, ValueError) as exc:
            ev.note("unreadable_prediction", f"{gt_image.file_name}: {exc}")
            pred_pos, table = np.full(shape, -1, np.int64), np.zeros((0, 2), np.int64)
    category_map = np.concatenate([table[:, 1] + 1, [0]])[pred_pos]  # predicted category index + 1, 0 VOID
    ev.counts["n_scored"] += 1
    ev.scored.append(gt_image.image_id)
    ev.counts["n_pixels"] += int(np.prod(shape))

    n_cols = space.n_gt + 1
    gt_column = np.where(sample.category_index == IGNORE, 0, sample.category_index + 1)
    joint = np.bincount((category_map * n_cols + gt_column).ravel(), minlength=(space.n_pred + 1) * n_cols)
    joint = joint.reshape(space.n_pred + 1, n_cols)
    ev.joint += joint
    semantic = space.semantic_confusion(joint)
    if pset.semantic_head and annotation is not None and segments:
        try:
            semantic = _semantic_head_confusion(pset, annotation, sample, space, semantic.shape, png_reads)
        except (OSError, ValueError) as exc:  # scored on the panoptic PNG's semantic view instead
            ev.note("unreadable_prediction", f"{gt_image.file_name} (semantic): {exc}")
    ev.semantic += semantic
    ev.semantic_votes += semantic_votes(semantic, semantic_iou_min)[2:, 2:]

    if not detections:  # no instance list: the panoptic thing segments vote with score 1
        detections = [
            {"bbox": s["bbox"], "category_id": s["category_id"], "score": 1.0}
            for s in segments if s.get("bbox") and space.pred_thing[space.pred_index[int(s["category_id"])]] >= 0
        ]
    pred_thing_of = {cid: int(space.pred_thing[i]) for cid, i in space.pred_index.items() if space.pred_thing[i] >= 0}
    gt_lookup = gt.category_lookup()
    gt_thing_of = {cid: int(space.gt_thing[i]) for cid, i in gt_lookup.items() if space.gt_thing[i] >= 0}
    ev.box_votes += box_votes(
        detections, gt.instances(gt_image, sample), pred_thing_of, gt_thing_of, ev.box_votes.shape, score_min,
        box_iou_min,
    )
    if sample.segment_ids is not None:
        gt_table = np.array(
            [(int(s["id"]), gt_lookup[int(s["category_id"])], int(s.get("iscrowd", 0))) for s in sample.segments],
            np.int64,
        ).reshape(-1, 3)
        image = ev.counts["n_scored"] - 1
        ev.tables.append(image_tables(image, sample.segment_pos, gt_table, pred_pos, table))


def _semantic_head_confusion(
    pset: PredictionSet, annotation: dict[str, Any], sample: Any, space: LabelSpace, shape: tuple[int, int],
    png_reads: list[str] | None,
) -> np.ndarray:
    """The semantic confusion from a model's semantic-head PNG (<set>/semantic/<file_name>: 0 things, 1..S
    stuff, 255 none), which is what U2Seg scores for a model; rows / columns as `semantic_confusion`."""
    url = storage.join(pset.root, "semantic", annotation["file_name"])
    labels = storage.read_png(url).astype(np.int64)
    if png_reads is not None:
        png_reads.append(url)
    if labels.shape != sample.category_index.shape:
        raise ValueError(f"{url} is {labels.shape}, the ground truth {sample.category_index.shape}")
    rows = np.where((labels >= 0) & (labels < shape[0] - 1), labels + 1, 0)
    cols = np.where(sample.category_index == IGNORE, 0, space.gt_semantic[sample.category_index] + 1)
    return np.bincount((rows * shape[1] + cols).ravel(), minlength=shape[0] * shape[1]).reshape(shape)


# ---- storage --------------------------------------------------------------------------------------


ARRAYS = ("joint", "semantic", "semantic_votes", "box_votes", "match", "segments", "pixels")


def write_evidence(url: str, evidence: list[SetEvidence]) -> None:
    """One .npz: per set i the arrays `i.<name>`, the PQ tables `i.pairs|gt|pred`, and `meta` (JSON bytes)."""
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, ev in enumerate(evidence):
        for name in ARRAYS:
            arrays[f"{i}.{name}"] = getattr(ev, name)
        arrays[f"{i}.scored"] = np.asarray(ev.scored, np.int64)
        tables = SegmentTables.concat(ev.tables)
        for name in ("pairs", "gt", "pred"):
            arrays[f"{i}.{name}"] = getattr(tables, name)
        meta.append({"counts": ev.counts, "problems": ev.problems})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.atomic_write_bytes(url, buffer.getvalue())


def read_evidence(url: str) -> list[SetEvidence]:
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes())
        out = []
        for i, m in enumerate(meta):
            tables = SegmentTables(data[f"{i}.pairs"], data[f"{i}.gt"], data[f"{i}.pred"])
            out.append(
                SetEvidence(**{name: data[f"{i}.{name}"] for name in ARRAYS}, tables=[tables],
                            scored=data[f"{i}.scored"].tolist(),
                            counts=m["counts"], problems=m["problems"])
            )
    return out
