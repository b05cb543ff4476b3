"""PQ against torchmetrics' PanopticQuality and a mask-by-mask panopticapi reference."""

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality

from u2seg_core.evaluate.pq import panoptic_overlap, pq_compute

THINGS = (1, 2, 3)
STUFF = (4, 5, 6)
CATEGORIES = [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS)} for c in THINGS + STUFF]


def random_panoptic(rng, h=16, w=16, void_frac=0.0, crowd_prob=0.0):
    """(ids (H, W), segments_info): blocky stuff with one segment per class, rectangles of things."""
    coarse = rng.choice(STUFF, size=(h // 4, w // 4))
    categories = np.kron(coarse, np.ones((4, 4), dtype=np.int64))
    instance = np.zeros((h, w), dtype=np.int64)
    for i in range(int(rng.integers(1, 6))):
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        y1, x1 = y0 + rng.integers(2, 8), x0 + rng.integers(2, 8)
        categories[y0:y1, x0:x1] = rng.choice(THINGS)
        instance[y0:y1, x0:x1] = i + 1
    categories[rng.random((h, w)) < void_frac] = 0
    return to_segments(rng, categories, instance, crowd_prob)


def to_segments(rng, categories, instance, crowd_prob=0.0):
    key = categories * 100 + np.where(np.isin(categories, THINGS), instance, 0)
    ids = np.zeros(categories.shape, dtype=np.int64)
    segments = []
    for n, value in enumerate(np.unique(key[categories > 0]), start=1):
        ids[key == value] = n * 7  # arbitrary, non-consecutive ids
        category = int(value // 100)
        crowd = int(category in THINGS and rng.random() < crowd_prob)
        segments.append({"id": n * 7, "category_id": category, "iscrowd": crowd})
    return ids, segments, categories, instance


def perturb(rng, categories, instance):
    """A prediction near the ground truth: shifted, some blocks relabelled, no VOID."""
    cats = np.roll(categories, shift=int(rng.integers(-1, 2)), axis=int(rng.integers(0, 2))).copy()
    inst = np.roll(instance, shift=0, axis=0).copy()
    h, w = cats.shape
    for _ in range(3):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        cats[y : y + 4, x : x + 4] = rng.choice(THINGS + STUFF)
        inst[y : y + 4, x : x + 4] = 9
    cats[cats == 0] = rng.choice(STUFF)
    if rng.random() < 0.3:
        cats[cats == 1] = 2  # a whole class confused
    return to_segments(rng, cats, inst)


def test_pq_equals_torchmetrics_on_random_pairs():
    rng = np.random.default_rng(0)
    metric = PanopticQuality(things=set(THINGS), stuffs=set(STUFF), return_sq_and_rq=True)
    per_class = PanopticQuality(things=set(THINGS), stuffs=set(STUFF), return_per_class=True)
    overlaps = []
    for image_id in range(12):
        gt_ids, gt_segments, gt_cat, gt_inst = random_panoptic(rng, void_frac=0.1)
        pred_ids, pred_segments, pred_cat, pred_inst = perturb(rng, gt_cat, gt_inst)
        overlaps.append(panoptic_overlap(image_id, gt_ids, gt_segments, pred_ids, pred_segments))
        preds = torch.from_numpy(np.stack([pred_cat, pred_inst], -1))[None]
        target = torch.from_numpy(np.stack([gt_cat, gt_inst], -1))[None]
        metric.update(preds, target)
        per_class.update(preds, target)
    ours = pq_compute(overlaps, CATEGORIES)
    expected = metric.compute().double().numpy()
    got = np.array([ours["all"]["pq"], ours["all"]["sq"], ours["all"]["rq"]]) / 100
    assert np.abs(got - expected).max() <= 1e-6
    tm_per_class = per_class.compute().double().numpy().ravel()
    for index, category in enumerate(sorted(THINGS) + sorted(STUFF)):  # torchmetrics: things, then stuff
        row = ours["per_class"].get(category)
        assert abs((row["pq"] / 100 if row else 0.0) - tm_per_class[index]) <= 1e-6
    assert 0 < ours["all"]["pq"] < 100  # the pairs are neither perfect nor hopeless


def panopticapi_reference(pairs):
    """panopticapi's per-image rules written over boolean masks (slow, obvious)."""
    stats = {c["id"]: [0, 0, 0, 0.0] for c in CATEGORIES}
    for gt_ids, gt_segments, pred_ids, pred_segments in pairs:
        gt_void = gt_ids == 0
        matched_gt, matched_pred = set(), set()
        for g in gt_segments:
            for p in pred_segments:
                if g["iscrowd"] or g["category_id"] != p["category_id"]:
                    continue
                gm, pm = gt_ids == g["id"], pred_ids == p["id"]
                inter = (gm & pm).sum()
                union = (gm | pm).sum() - (pm & gt_void).sum()
                if inter and inter / union > 0.5:
                    matched_gt.add(g["id"])
                    matched_pred.add(p["id"])
                    stats[g["category_id"]][0] += 1
                    stats[g["category_id"]][3] += inter / union
        crowd = {g["category_id"]: g["id"] for g in gt_segments if g["iscrowd"]}
        for g in gt_segments:
            if g["id"] not in matched_gt and not g["iscrowd"] and (gt_ids == g["id"]).any():
                stats[g["category_id"]][2] += 1
        for p in pred_segments:
            pm = pred_ids == p["id"]
            if p["id"] in matched_pred or not pm.any():
                continue
            ignored = (pm & gt_void).sum()
            if p["category_id"] in crowd:
                ignored += (pm & (gt_ids == crowd[p["category_id"]])).sum()
            if ignored / pm.sum() <= 0.5:
                stats[p["category_id"]][1] += 1
    rows = []
    for tp, fp, fn, iou in stats.values():
        if tp + fp + fn:
            sq = iou / tp if tp else 0.0
            rows.append(sq * tp / (tp + 0.5 * fp + 0.5 * fn))
    return 100 * float(np.mean(rows))


def test_pq_with_crowd_and_predicted_void_matches_mask_reference():
    rng = np.random.default_rng(1)
    pairs, overlaps = [], []
    for image_id in range(10):
        gt_ids, gt_segments, gt_cat, gt_inst = random_panoptic(rng, void_frac=0.2, crowd_prob=0.4)
        pred_ids, pred_segments, pred_cat, _ = perturb(rng, gt_cat, gt_inst)
        pred_ids[rng.random(pred_ids.shape) < 0.15] = 0  # predicted VOID too
        pairs.append((gt_ids, gt_segments, pred_ids, pred_segments))
        overlaps.append(panoptic_overlap(image_id, gt_ids, gt_segments, pred_ids, pred_segments))
    assert pq_compute(overlaps, CATEGORIES)["all"]["pq"] == pytest.approx(panopticapi_reference(pairs), abs=1e-9)


def test_hand_built_void_crowd_and_perfect_cases():
    gt = np.array([[7, 7, 7, 0], [7, 7, 7, 0], [9, 9, 0, 0]])
    gt_segments = [{"id": 7, "category_id": 4, "iscrowd": 0}, {"id": 9, "category_id": 1, "iscrowd": 1}]
    perfect = pq_compute([panoptic_overlap(1, gt, gt_segments, gt, gt_segments)], CATEGORIES)
    assert perfect["all"]["pq"] == pytest.approx(100.0) and perfect["all"]["n"] == 1  # crowd not counted
    # A thing prediction lying on the crowd region + VOID is ignored (not FP); the stuff one matches
    # with IoU 6/6 because its pixels on VOID leave the union.
    pred = np.array([[3, 3, 3, 3], [3, 3, 3, 3], [5, 5, 5, 5]])
    pred_segments = [{"id": 3, "category_id": 4}, {"id": 5, "category_id": 1}]
    result = pq_compute([panoptic_overlap(1, gt, gt_segments, pred, pred_segments)], CATEGORIES)
    assert result["per_class"] == {4: pytest.approx({**result["per_class"][4], "pq": 100.0, "tp": 1, "fp": 0, "fn": 0})}
    with pytest.raises(ValueError, match="missing from segments_info"):
        panoptic_overlap(1, gt, gt_segments[:1], gt, gt_segments)
