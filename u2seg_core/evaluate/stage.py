"""Evaluate stage: pseudo-labels (or any COCO-panoptic predictions) against ground truth.

Ground truth is a folder in the synthetic-dataset layout (docs/architecture.md):
`annotations/panoptic.json` + `panoptic/` PNGs (required), `annotations/instances.json` (for AP),
`images/` (for overlays). Its semantic labels are derived from the panoptic ground truth (things
as one class 0, stuff 1..S in category order, VOID 255), the same as its `semantic/` PNGs.

One pass over the images keeps per-image overlap tables and semantic confusions; cluster-to-class
mapping, PQ, mIoU and AP all follow from them. Writes `report.json`, `report.md`,
`confusion.png` and `overlays/<image_id>.png` under the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import storage
from ..coco import rgb2id
from ..config import EvaluateConfig, PipelineConfig
from ..io.decode import load_rgb
from ..manifest import GlobalResult
from ..merge.panoptic import segment_labels
from ..rundir import RunDir
from .ap import coco_ap, coco_from_dict
from .matching import (
    CategoryLayout,
    apply_mapping,
    box_vote_evidence,
    category_mapping,
    evidence_mapping,
    map_detections,
    segment_match_evidence,
    semantic_vote_evidence,
)
from .pq import VOID, PanopticOverlap, panoptic_overlap, pq_compute
from .report import overlay_pair, write_report
from .semantic import confusion_matrix, semantic_scores

STAGE = "evaluate"
GT_LAYOUT = "annotations/panoptic.json + panoptic/*.png (+ annotations/instances.json for AP), as `u2seg synth` writes"


def read_segment_ids(url: str) -> np.ndarray:
    """(H, W) int32 segment ids of a COCO panoptic PNG."""
    rgb = storage.read_png(url)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"{url} is not an RGB panoptic PNG (shape {rgb.shape})")
    return rgb2id(rgb[..., :3])


def ground_truth_paths(gt_dir: str) -> dict[str, str]:
    paths = {
        "panoptic_json": storage.join(gt_dir, "annotations", "panoptic.json"),
        "panoptic": storage.join(gt_dir, "panoptic"),
        "instances_json": storage.join(gt_dir, "annotations", "instances.json"),
        "images": storage.join(gt_dir, "images"),
    }
    if not storage.exists(paths["panoptic_json"]):
        raise FileNotFoundError(f"ground truth {gt_dir} has no {paths['panoptic_json']}; expected {GT_LAYOUT}")
    return paths


def segment_boxes_as_instances(annotations: dict[int, dict[str, Any]], thing_ids: set[int]) -> list[dict[str, Any]]:
    """Score-1 box instances from panoptic thing segments: the box votes' input when there is no
    instances file."""
    return [
        {
            "image_id": image_id,
            "category_id": s["category_id"],
            "bbox": s["bbox"],
            "score": 1.0,
            "iscrowd": s.get("iscrowd", 0),
        }
        for image_id, ann in annotations.items()
        for s in ann["segments_info"]
        if s["category_id"] in thing_ids and s.get("bbox")
    ]


@dataclass
class ImageScores:
    """What one pass over the images leaves: PQ overlap tables and semantic confusions.

    confusion: (S_pred + 2, S_gt + 1) pixels; predicted labels 0 things, 1..S_pred stuff,
    S_pred + 1 VOID (always an error); ground-truth labels 0 things, 1..S_gt stuff.
    """

    overlaps: list[PanopticOverlap]
    confusion: np.ndarray
    image_confusions: list[np.ndarray]
    failures: list[dict[str, Any]]
    n_missing: int


def score_images(
    gt_paths: dict[str, str],
    gt_annotations: dict[int, dict[str, Any]],
    pred_annotations: dict[int, dict[str, Any]],
    pred_panoptic_dir: str,
    gt_layout: CategoryLayout,
    pred_layout: CategoryLayout,
    keep_image_confusions: bool,
) -> ImageScores:
    """Read every ground-truth image's panoptic PNG and its prediction once; a missing or unreadable
    prediction is scored as all VOID (and recorded), never skipped."""
    n_pred_labels = len(pred_layout.stuff_ids) + 2
    if n_pred_labels > 255:
        raise ValueError(f"predictions have {len(pred_layout.stuff_ids)} stuff categories; at most 253 are supported")
    n_gt_labels = len(gt_layout.stuff_ids) + 1
    scores = ImageScores([], np.zeros((n_pred_labels, n_gt_labels), dtype=np.int64), [], [], 0)
    for image_id in sorted(gt_annotations):
        gt_ann = gt_annotations[image_id]
        gt_ids = read_segment_ids(storage.join(gt_paths["panoptic"], gt_ann["file_name"]))
        pred_ids, pred_segments = np.zeros_like(gt_ids), []
        pred_ann = pred_annotations.get(image_id)
        scores.n_missing += pred_ann is None
        if pred_ann is not None:
            try:
                ids = read_segment_ids(storage.join(pred_panoptic_dir, pred_ann["file_name"]))
                panoptic_overlap(image_id, gt_ids, gt_ann["segments_info"], ids, pred_ann["segments_info"])
                pred_ids, pred_segments = ids, pred_ann["segments_info"]
            except (ValueError, OSError) as exc:
                scores.failures.append({"image_id": image_id, "reason": str(exc)})
        scores.overlaps.append(panoptic_overlap(image_id, gt_ids, gt_ann["segments_info"], pred_ids, pred_segments))
        gt_labels = segment_labels(gt_ids, gt_ann["segments_info"], gt_layout.semantic_label)
        pred_labels = segment_labels(pred_ids, pred_segments, pred_layout.semantic_label, void_label=n_pred_labels - 1)
        image_confusion = confusion_matrix(pred_labels, gt_labels, n_pred_labels, n_gt_labels)
        scores.confusion += image_confusion
        if keep_image_confusions:
            scores.image_confusions.append(image_confusion)
    return scores


@dataclass
class Mapping:
    """Cluster-to-class mapping: evidence matrices' row -> column maps and the category maps."""

    thing_evidence: np.ndarray
    thing_rows: np.ndarray
    stuff_rows: np.ndarray
    things: dict[int, int]
    stuff: dict[int, int]


def fit_mapping(
    cfg: EvaluateConfig,
    scores: ImageScores,
    gt_layout: CategoryLayout,
    pred_layout: CategoryLayout,
    pred_instances: list[dict[str, Any]] | None,
    gt_instances: list[dict[str, Any]] | None,
    pred_annotations: dict[int, dict[str, Any]],
    gt_annotations: dict[int, dict[str, Any]],
) -> Mapping:
    """Map predicted thing clusters and stuff classes to ground-truth categories (`cfg.matching`).

    Box votes use the instance files when given, else the panoptic segments' boxes.
    """
    if cfg.matching == "hungarian":
        thing_evidence = segment_match_evidence(scores.overlaps, pred_layout, gt_layout)
        stuff_evidence = scores.confusion[1:-1, 1:]
    else:
        if pred_instances is None:
            pred_instances = segment_boxes_as_instances(pred_annotations, set(pred_layout.thing_ids))
        if gt_instances is None:
            gt_instances = segment_boxes_as_instances(gt_annotations, set(gt_layout.thing_ids))
        thing_evidence = box_vote_evidence(
            pred_instances, gt_instances, pred_layout, gt_layout, cfg.majority_score_min, cfg.majority_box_iou
        )
        stuff_evidence = semantic_vote_evidence(scores.image_confusions, cfg.majority_semantic_iou)[1:-1, 1:]
    thing_rows = evidence_mapping(thing_evidence, cfg.matching)
    stuff_rows = evidence_mapping(stuff_evidence, cfg.matching)
    return Mapping(
        thing_evidence,
        thing_rows,
        stuff_rows,
        category_mapping(thing_rows, pred_layout.thing_ids, gt_layout.thing_ids),
        category_mapping(stuff_rows, pred_layout.stuff_ids, gt_layout.stuff_ids),
    )


def evaluate_predictions(
    pred_panoptic_json: str,
    pred_panoptic_dir: str,
    pred_instances_json: str | None,
    gt_dir: str,
    cfg: EvaluateConfig,
    out_dir: str,
    image_urls: dict[int, str] | None = None,
    image_ids: set[int] | None = None,
) -> dict[str, Any]:
    """Score predictions against the ground truth in `gt_dir` and write the report to `out_dir`.

    pred_panoptic_json / pred_panoptic_dir: COCO panoptic predictions in their own label space
    (categories with `isthing`; e.g. clusters 1..K and STEGO classes K+1..K+S); pred_instances_json:
    class-aware COCO instances with scores in the same thing label space, or None (no AP).
    image_urls: image_id -> image file for the overlays (default: `gt_dir/images/<file_name>`).
    image_ids: the images that were processed (default: every ground-truth image); ground-truth
    images among them without a prediction count as misses, others are not scored.
    Returns the report dict (also written as report.json); `report["summary"]` has the headline
    numbers.
    """
    start = time.perf_counter()
    gt_paths = ground_truth_paths(gt_dir)
    for url in (pred_panoptic_json, *([pred_instances_json] if pred_instances_json else [])):
        if not storage.exists(url):
            raise FileNotFoundError(f"predictions {url} do not exist")
    gt_doc = storage.read_json(gt_paths["panoptic_json"])
    pred_doc = storage.read_json(pred_panoptic_json)
    gt_layout = CategoryLayout.from_categories(gt_doc["categories"])
    pred_layout = CategoryLayout.from_categories(pred_doc["categories"])
    gt_annotations = {
        int(a["image_id"]): a for a in gt_doc["annotations"] if image_ids is None or int(a["image_id"]) in image_ids
    }
    pred_annotations = {int(a["image_id"]): a for a in pred_doc["annotations"]}
    pred_instances = storage.read_json(pred_instances_json)["annotations"] if pred_instances_json else None
    gt_instances_doc = (
        storage.read_json(gt_paths["instances_json"]) if storage.exists(gt_paths["instances_json"]) else None
    )

    scores = score_images(
        gt_paths, gt_annotations, pred_annotations, pred_panoptic_dir, gt_layout, pred_layout,
        keep_image_confusions=cfg.matching == "majority",
    )
    mapping = fit_mapping(
        cfg, scores, gt_layout, pred_layout, pred_instances,
        gt_instances_doc["annotations"] if gt_instances_doc else None, pred_annotations, gt_annotations,
    )
    category_map = {**mapping.things, **mapping.stuff}
    panoptic = pq_compute(
        [apply_mapping(o, category_map, set(gt_layout.stuff_ids)) for o in scores.overlaps], gt_doc["categories"]
    )
    stuff_rows = mapping.stuff_rows
    label_mapping = np.concatenate([[0], np.where(stuff_rows >= 0, stuff_rows + 1, -1), [-1]]).astype(np.int64)
    names = {int(c["id"]): c.get("name", str(c["id"])) for c in gt_doc["categories"]}
    semantic = semantic_scores(scores.confusion, label_mapping)
    semantic["class_names"] = ["things"] + [names[c] for c in gt_layout.stuff_ids]

    instances: dict[str, Any] = {}
    n_detections = None
    if pred_instances is not None and gt_instances_doc is not None:
        gt_coco = coco_from_dict(gt_instances_doc)
        scored = set(gt_coco.getImgIds()) & set(gt_annotations)
        mapped = [d for d in map_detections(pred_instances, mapping.things) if int(d["image_id"]) in scored]
        instances = {task: coco_ap(gt_coco, mapped, task, sorted(scored)) for task in ("bbox", "segm")}
        n_detections = {"all": len(pred_instances), "mapped": len(mapped)}

    report: dict[str, Any] = {
        "ground_truth": gt_dir,
        "predictions": pred_panoptic_json,
        "matching": cfg.matching,
        "n_images": len(gt_annotations),
        "n_missing_predictions": scores.n_missing,
        "n_predictions_without_ground_truth": len(set(pred_annotations) - set(gt_annotations)),
        "failures": scores.failures,
        "mapping": {
            "things": {str(p): g for p, g in mapping.things.items()},
            "stuff": {str(p): g for p, g in mapping.stuff.items()},
            "n_pred_things": len(pred_layout.thing_ids),
            "n_mapped_things": len(mapping.things),
            "n_pred_stuff": len(pred_layout.stuff_ids),
            "n_mapped_stuff": len(mapping.stuff),
        },
        "panoptic": {**panoptic, "per_class": {str(c): row for c, row in panoptic["per_class"].items()}},
        "semantic": semantic,
        "instances": instances,
        "n_detections": n_detections,
    }
    report["summary"] = summary(report)
    files = {int(im["id"]): im["file_name"] for im in gt_doc["images"]}
    overlay_urls, report["overlay_failures"] = write_overlays(
        out_dir, cfg.overlays, gt_paths, files, gt_annotations, pred_annotations, pred_panoptic_dir, category_map,
        names, set(gt_layout.thing_ids), image_urls,
    )
    report["seconds"] = time.perf_counter() - start
    thing_names = [names[c] for c in gt_layout.thing_ids]
    outputs = write_report(
        out_dir, report, mapped_semantic_confusion(scores.confusion, label_mapping), mapping.thing_evidence,
        mapping.thing_rows, thing_names,
    )
    report["outputs"] = {**outputs, "overlays": overlay_urls}
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers (all x100): PQ/SQ/RQ all/things/stuff, box and mask AP, mIoU, pixel accuracy."""
    pan = report["panoptic"]
    out: dict[str, Any] = {}
    for group, suffix in (("all", ""), ("things", "_th"), ("stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            out[f"{metric.upper()}{suffix}"] = pan[group][metric]
    out["AP_box"] = report["instances"].get("bbox", {}).get("AP")
    out["AP50_box"] = report["instances"].get("bbox", {}).get("AP50")
    out["AP_mask"] = report["instances"].get("segm", {}).get("AP")
    out["AP50_mask"] = report["instances"].get("segm", {}).get("AP50")
    out["mIoU"] = report["semantic"]["miou"]
    out["pixel_accuracy"] = report["semantic"]["pixel_accuracy"]
    return out


def mapped_semantic_confusion(confusion: np.ndarray, label_mapping: np.ndarray) -> np.ndarray:
    """(n_gt, n_gt + 1) pixels per (ground-truth label, mapped predicted label); last column unmapped."""
    n_gt = confusion.shape[1]
    columns = np.where(label_mapping >= 0, label_mapping, n_gt)
    out = np.zeros((n_gt, n_gt + 1), dtype=np.int64)
    np.add.at(out.T, columns, confusion)
    return out


def write_overlays(
    out_dir: str,
    n: int,
    gt_paths: dict[str, str],
    files: dict[int, str],
    gt_annotations: dict[int, dict[str, Any]],
    pred_annotations: dict[int, dict[str, Any]],
    pred_panoptic_dir: str,
    category_map: dict[int, int],
    names: dict[int, str],
    thing_ids: set[int],
    image_urls: dict[int, str] | None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """overlays/<image_id>.png (ground truth | mapped prediction) for the first `n` predicted images.

    files: image_id -> ground-truth image file name (used when `image_urls` lacks the image).
    Stuff is coloured by category (the same colour on both sides), things by segment.

    Returns the written URLs and {image_id, reason} for overlays that could not be drawn.
    """
    written, failed = [], []
    for image_id in sorted(set(gt_annotations) & set(pred_annotations))[:n]:
        image_url = (image_urls or {}).get(image_id) or storage.join(gt_paths["images"], files.get(image_id, ""))
        gt_ann, pred_ann = gt_annotations[image_id], pred_annotations[image_id]
        gt_segments = [{**s, "isthing": s["category_id"] in thing_ids} for s in gt_ann["segments_info"]]
        mapped = [
            {**s, "category_id": category_map[s["category_id"]], "isthing": category_map[s["category_id"]] in thing_ids}
            for s in pred_ann["segments_info"]
            if s["category_id"] in category_map
        ]
        try:
            gt_ids = read_segment_ids(storage.join(gt_paths["panoptic"], gt_ann["file_name"]))
            pred_ids = read_segment_ids(storage.join(pred_panoptic_dir, pred_ann["file_name"]))
            kept = np.array([s["id"] for s in mapped], dtype=np.int64)
            pred_ids = np.where(np.isin(pred_ids, kept), pred_ids, VOID)
            picture = overlay_pair(load_rgb(image_url), gt_ids, gt_segments, pred_ids, mapped, names)
        except (ValueError, OSError) as exc:  # a missing or unreadable image only costs its overlay
            failed.append({"image_id": image_id, "reason": f"overlay not drawn: {exc}"})
            continue
        url = storage.join(out_dir, "overlays", f"{image_id}.png")
        storage.write_png(url, picture)
        written.append(url)
    return written, failed


def evaluate_folder(
    pred_dir: str, gt_dir: str, cfg: EvaluateConfig | None = None, out_dir: str | None = None
) -> dict[str, Any]:
    """`evaluate_predictions` for a prediction folder in the synthetic-dataset layout
    (annotations/panoptic.json, panoptic/, optional annotations/instances.json); the report goes to
    `out_dir` (default: `pred_dir/evaluate`)."""
    instances = storage.join(pred_dir, "annotations", "instances.json")
    return evaluate_predictions(
        storage.join(pred_dir, "annotations", "panoptic.json"),
        storage.join(pred_dir, "panoptic"),
        instances if storage.exists(instances) else None,
        gt_dir,
        cfg or EvaluateConfig(),
        out_dir or storage.join(pred_dir, "evaluate"),
    )


def evaluate_run(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """Evaluate the run's merged pseudo-labels against `evaluate.ground_truth` or the run's synthetic
    dataset."""
    gt_dir = cfg.evaluate.ground_truth
    if gt_dir is None:
        if not storage.exists(run.url("synthetic", "annotations", "panoptic.json")):
            raise FileNotFoundError(
                f"no ground truth for {run.root}: set evaluate.ground_truth to a folder with {GT_LAYOUT}; "
                f"only runs on the built-in synthetic source ({run.url('synthetic')}) have one by default"
            )
        gt_dir = run.url("synthetic")
    pred_json = run.url("merge", "panoptic.json")
    instances_json = run.url("merge", "instances.json")
    for url in (pred_json, instances_json):
        if not storage.exists(url):
            raise FileNotFoundError(f"{url} is missing; run the merge stage first")
    image_urls = {im.image_id: im.url for shard in run.shards() for im in shard.images}
    report = evaluate_predictions(
        pred_json, run.url("merge", "panoptic"), instances_json, gt_dir, cfg.evaluate, run.url(STAGE), image_urls,
        image_ids=set(image_urls),
    )
    outputs = {name: run.rel(url) for name, url in report["outputs"].items() if isinstance(url, str)}
    return GlobalResult(
        stage=STAGE,
        outputs=outputs,
        summary={**report["summary"], "matching": report["matching"], "n_images": report["n_images"]},
        seconds=report["seconds"],
    )
