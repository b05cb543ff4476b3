"""Box and mask AP of class-aware detections through pycocotools' COCOeval.

Guards what pycocotools does not: an empty detection list (`loadRes` raises IndexError) scores 0,
`loadRes` gets copies (it edits the dicts), and metrics COCOeval leaves undefined (-1) become None.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Literal

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IouType = Literal["bbox", "segm"]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    """An indexed pycocotools COCO object built from an in-memory COCO instances document."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections_for(detections: list[dict[str, Any]], iou_type: IouType) -> list[dict[str, Any]]:
    """Copies of the detections in COCO results format for one task: `bbox` alone for boxes (so
    areas are box areas), `segmentation` alone for masks (so areas are mask areas). A detection
    without a score (e.g. a pseudo-label) scores 1."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    required = ("image_id", "category_id", "bbox" if iou_type == "bbox" else "segmentation")
    out = []
    for det in detections:
        missing = [key for key in required if key not in det]
        if missing:
            raise ValueError(f"detection {det.get('id', '?')} of image {det.get('image_id', '?')} lacks {missing}")
        result = {key: copy.deepcopy(value) for key, value in det.items() if key not in (drop, "id", "area", "iscrowd")}
        result.setdefault("score", 1.0)
        out.append(result)
    return out


def coco_ap(
    gt: COCO, detections: list[dict[str, Any]], iou_type: IouType, image_ids: list[int] | None = None
) -> dict[str, float | None]:
    """COCOeval summary (x100; None where undefined) of `detections` against `gt`.

    detections: COCO results (image_id, category_id, score, bbox [x, y, w, h] and/or compressed RLE
    `segmentation`); every image_id must be a ground-truth image. image_ids: score only these
    images (default: all ground-truth images).
    """
    unknown = sorted({int(d["image_id"]) for d in detections} - set(gt.getImgIds()))
    if unknown:
        raise ValueError(f"detections for images {unknown[:5]} that the ground truth does not list")
    image_ids = sorted(gt.getImgIds() if image_ids is None else image_ids)
    if not gt.getAnnIds(imgIds=image_ids):
        return {name: None for name in METRICS}
    if not detections:
        return {name: 0.0 for name in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        results = gt.loadRes(detections_for(detections, iou_type))
        evaluator = COCOeval(gt, results, iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (float(v) * 100 if v >= 0 else None) for name, v in zip(METRICS, np.asarray(evaluator.stats))}
