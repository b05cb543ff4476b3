"""Unsupervised semantic metrics on hand-built cases."""

import math

import numpy as np
import pytest

from u2seg_core.evaluate.semantic import confusion_matrix, hungarian_mapping, majority_mapping, semantic_scores


def test_confusion_matrix_counts_and_ignores():
    pred = np.array([[0, 0, 1], [1, 2, 2]])
    gt = np.array([[0, 255, 1], [0, 1, 7]])
    conf = confusion_matrix(pred, gt, n_pred=3, n_gt=2)
    expected = np.zeros((3, 2), dtype=np.int64)
    expected[0, 0] = 1  # (0,0)
    expected[1, 1] = 1  # (1,1)
    expected[1, 0] = 1  # (1,0)
    expected[2, 1] = 1  # (2,1); (2,7) out of range, (0,255) ignored
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)
    # accumulative: two images add up
    np.testing.assert_array_equal(conf + conf, confusion_matrix(np.tile(pred, 2), np.tile(gt, 2), 3, 2))


def test_confusion_matrix_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2, 2)


def test_hungarian_permuted_labels_are_perfect():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(20, 20))
    relabel = np.array([2, 0, 3, 1])
    pred = relabel[gt]
    conf = confusion_matrix(pred, gt, 4, 4)
    mapping = hungarian_mapping(conf)
    np.testing.assert_array_equal(mapping[relabel], np.arange(4))
    scores = semantic_scores(conf, mapping)
    assert scores["miou"] == pytest.approx(100.0)
    assert scores["pixel_accuracy"] == pytest.approx(100.0)
    assert scores["n_pixels"] == 400


def test_hungarian_one_to_one_vs_majority_many_to_one():
    # cluster 0 and 1 both mostly class 0; class 1 only in cluster 2
    conf = np.array([[50, 5], [40, 10], [2, 30]])
    hung = hungarian_mapping(conf)
    np.testing.assert_array_equal(hung, [0, -1, 1])
    maj = majority_mapping(conf)
    np.testing.assert_array_equal(maj, [0, 0, 1])
    s_h = semantic_scores(conf, hung)
    # hungarian: class 0 tp 50, gt 92, pred 55 -> 50/97; class 1 tp 30, gt 45, pred 32 -> 30/47
    assert s_h["per_class_iou"][0] == pytest.approx(50 / 97 * 100)
    assert s_h["per_class_iou"][1] == pytest.approx(30 / 47 * 100)
    assert s_h["miou"] == pytest.approx((50 / 97 + 30 / 47) / 2 * 100)
    assert s_h["pixel_accuracy"] == pytest.approx(80 / 137 * 100)
    s_m = semantic_scores(conf, maj)
    # majority: class 0 tp 90, gt 92, pred 105 -> 90/107; class 1 tp 30, gt 45, pred 32 -> 30/47
    assert s_m["miou"] == pytest.approx((90 / 107 + 30 / 47) / 2 * 100)
    assert s_m["pixel_accuracy"] == pytest.approx(120 / 137 * 100)


def test_more_classes_than_clusters_and_absent_class():
    # 2 clusters, 4 classes; class 3 absent from gt and from predictions -> excluded from the mean
    conf = np.array([[10, 0, 5, 0], [0, 8, 0, 0]])
    mapping = hungarian_mapping(conf)
    np.testing.assert_array_equal(mapping, [0, 1])
    scores = semantic_scores(conf, mapping)
    iou = scores["per_class_iou"]
    assert iou[0] == pytest.approx(10 / 15 * 100)
    assert iou[1] == pytest.approx(100.0)
    assert iou[2] == pytest.approx(0.0)
    assert iou[3] is None
    assert scores["miou"] == pytest.approx((10 / 15 * 100 + 100 + 0) / 3)


def test_majority_mapping_empty_row_and_empty_confusion():
    conf = np.array([[0, 0], [3, 1]])
    np.testing.assert_array_equal(majority_mapping(conf), [-1, 0])
    empty = semantic_scores(np.zeros((2, 2), dtype=np.int64), np.array([0, 1]))
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_accuracy"])
