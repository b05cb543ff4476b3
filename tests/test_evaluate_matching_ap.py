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
from u2seg_core.evaluate.matching import (
    CategoryLayout,
    apply_mapping,
    box_vote_evidence,
    category_mapping,
    evidence_mapping,
    map_detections,
    segment_match_evidence,
    semantic_vote_evidence,
)
from u2seg_core.evaluate.pq import panoptic_overlap, pq_compute

PRED = CategoryLayout(thing_ids=(1, 2, 3, 4), stuff_ids=(5, 6))
GT = CategoryLayout(thing_ids=(10, 20), stuff_ids=(30,))


def test_hungarian_is_one_to_one_and_needs_evidence():
    evidence = np.array([[5, 1], [4, 0], [0, 3], [0, 0]])
    mapping = evidence_mapping(evidence, "hungarian")
    np.testing.assert_array_equal(mapping, [0, -1, 1, -1])  # cluster 1 loses class 0 to cluster 0
    evidence = np.array([[0, 0], [0, 2]])  # Hungarian pairs row 0 with column 0 at zero gain: unmapped
    np.testing.assert_array_equal(evidence_mapping(evidence, "hungarian"), [-1, 1])


def test_majority_is_many_to_one():
    evidence = np.array([[5, 1], [4, 0], [0, 3], [0, 0]])
    np.testing.assert_array_equal(evidence_mapping(evidence, "majority"), [0, 0, 1, -1])
    assert category_mapping(np.array([0, 0, 1, -1]), PRED.thing_ids, GT.thing_ids) == {1: 10, 2: 10, 3: 20}


def test_box_votes_follow_u2seg_thresholds():
    gt = [
        {"image_id": 1, "category_id": 10, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"image_id": 1, "category_id": 20, "bbox": [50, 50, 10, 10], "iscrowd": 0},
        {"image_id": 1, "category_id": 20, "bbox": [100, 100, 10, 10], "iscrowd": 1},  # crowd: never votes
    ]
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.9},  # IoU 0.9: vote 1 -> 10
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 7], "score": 0.9},  # IoU 0.7: not > 0.7
        {"image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10], "score": 0.5},  # score < 0.6
        {"image_id": 1, "category_id": 3, "bbox": [51, 50, 10, 10], "score": 0.6},  # vote 3 -> 20
        {"image_id": 1, "category_id": 4, "bbox": [100, 100, 10, 10], "score": 1.0},  # only the crowd box
        {"image_id": 2, "category_id": 4, "bbox": [0, 0, 10, 10], "score": 1.0},  # image without GT
    ]
    evidence = box_vote_evidence(dets, gt, PRED, GT, score_min=0.6, box_iou_min=0.7)
    np.testing.assert_array_equal(evidence, [[1, 0], [0, 0], [0, 1], [0, 0]])


def test_semantic_votes_count_images_above_iou():
    image_a = np.array([[10, 0], [0, 10]])  # pred 0 ~ gt 0 and pred 1 ~ gt 1, IoU 1
    image_b = np.array([[1, 9], [0, 0]])  # pred 0 vs gt 0: IoU 1/10 = 0.1; vs gt 1: 9/10
    votes = semantic_vote_evidence([image_a, image_b], iou_min=0.15)
    np.testing.assert_array_equal(votes, [[1, 1], [0, 1]])


def test_segment_match_evidence_and_apply_mapping():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3]])
    gt_segments = [
        {"id": 1, "category_id": 10},
        {"id": 2, "category_id": 20},
        {"id": 3, "category_id": 30},
    ]
    pred = np.array([[4, 4, 5, 5], [4, 4, 5, 0], [6, 6, 7, 7]])
    pred_segments = [
        {"id": 4, "category_id": 2},
        {"id": 5, "category_id": 3},
        {"id": 6, "category_id": 5},
        {"id": 7, "category_id": 6},
    ]
    overlap = panoptic_overlap(1, gt, gt_segments, pred, pred_segments)
    np.testing.assert_array_equal(segment_match_evidence([overlap], PRED, GT), [[0, 0], [1, 0], [0, 1], [0, 0]])
    # both STEGO classes map to the one GT stuff class: they merge into one matching segment
    mapped = apply_mapping(overlap, {2: 10, 3: 20, 5: 30, 6: 30}, merge={30})
    assert sorted(mapped.pred_segments.values()) == [10, 20, 30]
    categories = [{"id": c, "isthing": int(c < 30)} for c in (10, 20, 30)]
    assert pq_compute([mapped], categories)["all"]["pq"] > 90
    unmapped = apply_mapping(overlap, {2: 10}, merge={30})  # the rest becomes VOID
    assert list(unmapped.pred_segments) == [4] and set(unmapped.pred.tolist()) == {0, 4}
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
