"""U2Seg's COCO protocol vs Hungarian on a hand-built COCO 2017 case, numbers worked out by hand.

Ground truth (COCO layout, 16x16 images; stuff collapsed to supercategories: tree and grass -> plant):
  image 139: person rows 0-7 cols 0-7, car rows 0-7 cols 8-15, sky rows 8-11, tree rows 12-15 cols 0-7,
             grass rows 12-15 cols 8-15
  image 285: person rows 0-7 cols 0-7, person rows 0-7 cols 8-15, sky rows 8-15
Predictions: K = 3 clusters (ids 1-3), 2 STEGO classes (ids 4, 5):
  image 139: cluster 2 = the person (score 0.9), cluster 1 = the car (0.9), cluster 3 = 4 sky pixels
             (rows 8-9, cols 0-1; score 0.5 < 0.6: no vote), class 4 = the rest of the sky, class 5 = rows 12-15
  image 285: cluster 3 = the left person (0.95), cluster 2 = the right person (0.9), class 4 = the sky

u2seg votes: cluster 1 -> car, 2 -> person (2 votes), 3 -> person (image 285); class 4 -> sky, 5 -> plant.
Hungarian: cluster 2 has 2 person matches, cluster 3 one: 3 stays unmapped (its person becomes a FN).
PQ per category (u2seg): person 3 TP and 1 FP (cluster 3's 4 sky pixels of image 139 are now a person)
-> SQ 1, RQ 3 / 3.5 = 6/7; car 100; sky TP IoU 60/64 and 1 -> SQ 96.875, RQ 1; plant: the class-5 segment has
IoU 32/64 = 0.5 (not > 0.5) with tree and with grass: FP 1, FN 2 -> 0.
  PQ = (600/7 + 100 + 96.875 + 0) / 4; PQ_th = (600/7 + 100) / 2; PQ_st = 48.4375; RQ = (6/7 + 1 + 1 + 0) / 4.
Hungarian: cluster 3 unmapped (VOID): person TP 2, FN 1 -> RQ 0.8, PQ 80; sky unchanged (pixels predicted VOID
on ground-truth sky still count in the union) -> PQ = (80 + 100 + 96.875 + 0) / 4 = 69.21875.
Semantic (things-as-one + supercategories; cluster 3's pixels are "things"): things 256 TP / 260 predicted,
sky 188 / GT 192, plant 64 / 64: mIoU = (256/260 + 188/192 + 1) / 3, pixel accuracy 508 / 512.
"""

import numpy as np
import pytest

from evaluate_fixtures import write_coco, write_predictions
from u2seg_core.config import EvaluateConfig
from u2seg_core.evaluate.stage import evaluate_predictions

PRED_CATEGORIES = [{"id": c, "name": f"cluster_{c}", "isthing": 1} for c in (1, 2, 3)] + [
    {"id": 4, "name": "stuff_0", "isthing": 0}, {"id": 5, "name": "stuff_1", "isthing": 0}]


def hand_built_case(tmp_path):
    a = np.zeros((16, 16), np.int64)
    a[:8, :8], a[:8, 8:], a[8:12], a[12:, :8], a[12:, 8:] = 1001, 1002, 2001, 2002, 2003
    b = np.zeros((16, 16), np.int64)
    b[:8, :8], b[:8, 8:], b[8:] = 1001, 1002, 2001
    gt = write_coco(str(tmp_path / "coco"), {
        139: (a, [{"id": 1001, "category_id": 1}, {"id": 1002, "category_id": 3}, {"id": 2001, "category_id": 187},
                  {"id": 2002, "category_id": 184}, {"id": 2003, "category_id": 193}]),
        285: (b, [{"id": 1001, "category_id": 1}, {"id": 1002, "category_id": 1}, {"id": 2001, "category_id": 187}]),
    })
    pa = np.zeros((16, 16), np.int64)
    pa[:8, :8], pa[:8, 8:], pa[8:12], pa[12:] = 2, 1, 4, 5
    pa[8:10, :2] = 3
    pb = np.zeros((16, 16), np.int64)
    pb[:8, :8], pb[:8, 8:], pb[8:] = 3, 2, 4
    pred = write_predictions(str(tmp_path / "pred"), PRED_CATEGORIES, [
        ("000000000139.jpg", pa, [{"id": 2, "category_id": 2, "score": 0.9}, {"id": 1, "category_id": 1, "score": 0.9},
                                  {"id": 3, "category_id": 3, "score": 0.5}, {"id": 4, "category_id": 4},
                                  {"id": 5, "category_id": 5}]),
        ("val2017/000000000285.jpg", pb, [{"id": 3, "category_id": 3, "score": 0.95},
                                          {"id": 2, "category_id": 2, "score": 0.9}, {"id": 4, "category_id": 4}]),
    ])
    return gt, pred


@pytest.fixture
def report(tmp_path):
    gt, pred = hand_built_case(tmp_path)
    cfg = EvaluateConfig(ground_truth=gt, gt_format="coco", overlays=1)
    return evaluate_predictions({"pseudo-labels": pred}, cfg, str(tmp_path / "eval"))


def test_u2seg_mapping_and_scores_by_hand(report):
    rows = {r["protocol"]: r for r in report["rows"]}
    u2seg = rows["u2seg"]
    assert u2seg["mapping"]["pred_to_gt"] == {"1": "car", "2": "person", "3": "person", "4": "sky", "5": "plant"}
    s = u2seg["summary"]
    assert s["PQ"] == pytest.approx((600 / 7 + 100 + 96.875) / 4) and s["PQ_th"] == pytest.approx((600 / 7 + 100) / 2)
    assert s["PQ_st"] == pytest.approx(48.4375) and s["RQ"] == pytest.approx(100 * (6 / 7 + 2) / 4)
    plant = next(r for r in u2seg["panoptic"]["per_class"].values() if r["name"] == "plant")
    assert (plant["tp"], plant["fp"], plant["fn"]) == (0, 1, 2)
    assert s["mIoU"] == pytest.approx(100 * (256 / 260 + 188 / 192 + 1) / 3)
    assert s["pixel_accuracy"] == pytest.approx(100 * 508 / 512)
    assert s["AP_box"] == pytest.approx(100.0) and s["AP_mask"] > 90


def test_hungarian_is_one_to_one_on_the_same_case(report):
    hungarian = next(r for r in report["rows"] if r["protocol"] == "hungarian")
    assert hungarian["mapping"]["pred_to_gt"] == {"1": "car", "2": "person", "4": "sky", "5": "plant"}
    assert hungarian["summary"]["PQ"] == pytest.approx(69.21875)
    assert hungarian["summary"]["AP_box"] < 100  # the left person of image 285 is lost


def test_report_names_protocols_tables_and_transduction(report):
    from u2seg_core import storage

    md = storage.read_bytes(report["outputs"]["report_md"]).decode()
    assert "U2Seg's released COCO evaluation" in md and "one-to-one Hungarian" in md
    assert "transductive" in md and "15 COCO supercategories" in md
    assert report["sets"]["pseudo-labels"]["counts"]["n_scored"] == 2  # joined on file names, any folder prefix
    assert report["overlays"] == ["overlays/shard-00000/1.png"]
