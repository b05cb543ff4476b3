"""Cluster-to-class matching on hand-built cases, and the AP path against pycocotools used directly."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from u2seg_core.coco import encode_rle, mask_bbox
from u2seg_core.evaluate.ap import METRICS, coco_ap, coco_from_dict
from u2seg_core.evaluate.matching import box_votes, fit_mapping, map_detections, semantic_votes
from u2seg_core.evaluate.pq import image_tables, match_evidence, segment_positions

PRED_THINGS = {1: 0, 2: 1, 3: 2, 4: 3}  # category id -> thing position
GT_THINGS = {10: 0, 20: 1}


def test_hungarian_is_one_to_one_and_needs_evidence():
    evidence = np.array([[5, 1], [4, 0], [0, 3], [0, 0]])
    mapping = fit_mapping(evidence, "hungarian")
    np.testing.assert_array_equal(mapping, [0, -1, 1, -1])  # cluster 1 loses class 0 to cluster 0
    evidence = np.array([[0, 0], [0, 2]])  # Hungarian pairs row 0 with column 0 at zero gain: unmapped
    np.testing.assert_array_equal(fit_mapping(evidence, "hungarian"), [-1, 1])


def test_u2seg_vote_is_many_to_one_first_on_ties():
    evidence = np.array([[5, 1], [4, 0], [0, 3], [0, 0], [2, 2]])
    np.testing.assert_array_equal(fit_mapping(evidence, "u2seg"), [0, 0, 1, -1, 0])


def test_box_votes_follow_u2seg_thresholds_and_count_crowd_boxes():
    gt = [
        {"category_id": 10, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"category_id": 20, "bbox": [50, 50, 10, 10], "iscrowd": 0},
        {"category_id": 20, "bbox": [100, 100, 10, 10], "iscrowd": 1},  # U2Seg's imgToAnns holds crowd boxes too
    ]
    dets = [
        {"category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.9},  # IoU 0.9: vote 1 -> 10
        {"category_id": 2, "bbox": [0, 0, 10, 7], "score": 0.9},  # IoU 0.7: not > 0.7
        {"category_id": 3, "bbox": [50, 50, 10, 10], "score": 0.5},  # score < 0.6
        {"category_id": 3, "bbox": [51, 50, 10, 10], "score": 0.6},  # IoU 0.818, score 0.6: vote 3 -> 20
        {"category_id": 4, "bbox": [100, 100, 10, 10], "score": 1.0},  # the crowd box: vote 4 -> 20
    ]
    votes = box_votes(dets, gt, PRED_THINGS, GT_THINGS, (4, 2), score_min=0.6, box_iou_min=0.7)
    np.testing.assert_array_equal(votes, [[1, 0], [0, 0], [0, 1], [0, 1]])


def test_semantic_votes_use_whole_masks():
    # rows: predicted labels, columns: ground-truth labels of one image (whole masks, VOID/ignore included)
    image_a = np.array([[10, 0], [0, 10]])  # pred 0 ~ gt 0 and pred 1 ~ gt 1, IoU 1
    image_b = np.array([[1, 9], [0, 0]])  # pred 0 vs gt 0: IoU 1/10 = 0.1; vs gt 1: 9/10
    votes = semantic_votes(image_a, 0.15) + semantic_votes(image_b, 0.15)
    np.testing.assert_array_equal(votes, [[1, 1], [0, 1]])


def test_segment_match_evidence_is_class_agnostic_and_void_aware():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3]])
    gt_segments = np.array([[1, 0, 0], [2, 1, 0], [3, 2, 0]])  # id, GT category index (10, 20, 30), crowd
    pred = np.array([[4, 4, 5, 5], [4, 4, 5, 0], [6, 6, 7, 7]])
    pred_segments = np.array([[4, 1], [5, 2], [6, 4], [7, 5]])  # id, pred category index (ids 1..4 things, 5, 6)
    tables = image_tables(0, segment_positions(gt, gt_segments[:, 0]), gt_segments,
                          segment_positions(pred, pred_segments[:, 0]), pred_segments)
    pred_thing = np.array([0, 1, 2, 3, -1, -1])
    gt_thing = np.array([0, 1, -1])
    np.testing.assert_array_equal(match_evidence(tables, pred_thing, gt_thing, 4, 2), [[0, 0], [1, 0], [0, 1], [0, 0]])
    dets = [{"category_id": 2, "image_id": 1}, {"category_id": 4, "image_id": 1}]
    assert map_detections(dets, {2: 10}) == [{"category_id": 10, "image_id": 1}]


def coco_case(rng, n_images=4, size=24):
    images, gts, dets = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": size, "width": size})
        for j in range(int(rng.integers(1, 4))):
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(0, size - 8, 2)
            mask[y : y + rng.integers(3, 8), x : x + rng.integers(3, 8)] = True
            category = int(rng.integers(1, 3))
            gts.append(
                {"id": len(gts) + 1, "image_id": image_id, "category_id": category, "segmentation": encode_rle(mask),
                 "bbox": mask_bbox(mask), "area": int(mask.sum()), "iscrowd": 0}
            )
            for _ in range(2):  # a near-copy and a shifted, lower-scored copy, sometimes the wrong class
                shifted = np.roll(mask, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
                dets.append(
                    {"image_id": image_id, "category_id": category if rng.random() < 0.8 else 3 - category,
                     "segmentation": encode_rle(shifted), "bbox": mask_bbox(shifted), "score": float(rng.random())}
                )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": gts, "categories": categories}, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ap_equals_pycocotools_direct(tmp_path, iou_type):
    gt, dets = coco_case(np.random.default_rng(0))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = [{k: v for k, v in d.items() if k != ("segmentation" if iou_type == "bbox" else "bbox")} for d in dets]
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "dt.json")), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = coco_ap(coco_from_dict(gt), dets, iou_type)
    for name, value in zip(METRICS, evaluator.stats):
        assert ours[name] == (None if value < 0 else pytest.approx(100 * value, abs=1e-9)), name
    assert 0 < ours["AP"] < 100
    assert "id" not in dets[0] and "area" not in dets[0]  # inputs untouched


def test_ap_guards():
    gt, dets = coco_case(np.random.default_rng(1))
    assert coco_ap(coco_from_dict(gt), [], "bbox")["AP"] == 0.0
    assert coco_ap(coco_from_dict({**gt, "annotations": []}), dets, "bbox")["AP"] is None
    with pytest.raises(ValueError, match="does not list"):
        coco_ap(coco_from_dict(gt), [{**dets[0], "image_id": 99}], "bbox")
