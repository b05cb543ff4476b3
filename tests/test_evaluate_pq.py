"""PQ (vectorised over stacked images) against torchmetrics' PanopticQuality and a mask-by-mask
reference of panopticapi's pq_compute_single_core."""

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality

from u2seg_core.evaluate.pq import SegmentTables, image_tables, pq_counts, pq_summary, segment_positions

THINGS = (1, 2, 3)
STUFF = (4, 5, 6)
CATEGORIES = [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS)} for c in THINGS + STUFF]
INDEX = {c["id"]: i for i, c in enumerate(CATEGORIES)}


def tables_of(image, gt_ids, gt_segments, pred_ids, pred_segments):
    gt = np.array([(s["id"], INDEX[s["category_id"]], s.get("iscrowd", 0)) for s in gt_segments]).reshape(-1, 3)
    pred = np.array([(s["id"], INDEX[s["category_id"]]) for s in pred_segments]).reshape(-1, 2)
    return image_tables(image, segment_positions(gt_ids, gt[:, 0]), gt, segment_positions(pred_ids, pred[:, 0]), pred)


def pq_compute(pairs):
    """Our PQ over (gt_ids, gt_segments, pred_ids, pred_segments) images, predictions in GT categories."""
    tables = SegmentTables.concat([tables_of(i, *pair) for i, pair in enumerate(pairs)])
    return pq_summary(pq_counts(tables, np.arange(len(CATEGORIES)), len(CATEGORIES)), CATEGORIES)


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
    pairs = []
    for _ in range(12):
        gt_ids, gt_segments, gt_cat, gt_inst = random_panoptic(rng, void_frac=0.1)
        pred_ids, pred_segments, pred_cat, pred_inst = perturb(rng, gt_cat, gt_inst)
        pairs.append((gt_ids, gt_segments, pred_ids, pred_segments))
        preds = torch.from_numpy(np.stack([pred_cat, pred_inst], -1))[None]
        target = torch.from_numpy(np.stack([gt_cat, gt_inst], -1))[None]
        metric.update(preds, target)
        per_class.update(preds, target)
    ours = pq_compute(pairs)
    expected = metric.compute().double().numpy()
    got = np.array([ours["all"]["pq"], ours["all"]["sq"], ours["all"]["rq"]]) / 100
    assert np.abs(got - expected).max() <= 1e-6
    tm_per_class = per_class.compute().double().numpy().ravel()
    for index, category in enumerate(sorted(THINGS) + sorted(STUFF)):  # torchmetrics: things, then stuff
        row = ours["per_class"].get(str(category))
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
            if g["id"] not in matched_gt and not g["iscrowd"]:  # listed segments count, pixels or not
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
    pairs = []
    for _ in range(10):
        gt_ids, gt_segments, gt_cat, gt_inst = random_panoptic(rng, void_frac=0.2, crowd_prob=0.4)
        pred_ids, pred_segments, pred_cat, _ = perturb(rng, gt_cat, gt_inst)
        pred_ids[rng.random(pred_ids.shape) < 0.15] = 0  # predicted VOID too
        if rng.random() < 0.5:  # a listed ground-truth segment without pixels
            gt_segments = gt_segments + [{"id": 9999, "category_id": int(rng.choice(THINGS)), "iscrowd": 0}]
        pairs.append((gt_ids, gt_segments, pred_ids, pred_segments))
    assert pq_compute(pairs)["all"]["pq"] == pytest.approx(panopticapi_reference(pairs), abs=1e-9)


def test_hand_built_void_crowd_and_perfect_cases():
    gt = np.array([[7, 7, 7, 0], [7, 7, 7, 0], [9, 9, 0, 0]])
    gt_segments = [{"id": 7, "category_id": 4, "iscrowd": 0}, {"id": 9, "category_id": 1, "iscrowd": 1}]
    perfect = pq_compute([(gt, gt_segments, gt, gt_segments)])
    assert perfect["all"]["pq"] == pytest.approx(100.0) and perfect["all"]["n"] == 1  # crowd not counted
    # A thing prediction lying on the crowd region + VOID is ignored (not FP); the stuff one matches
    # with IoU 6/6 because its pixels on VOID leave the union.
    pred = np.array([[3, 3, 3, 3], [3, 3, 3, 3], [5, 5, 5, 5]])
    pred_segments = [{"id": 3, "category_id": 4}, {"id": 5, "category_id": 1}]
    result = pq_compute([(gt, gt_segments, pred, pred_segments)])
    assert result["per_class"] == {"4": pytest.approx({**result["per_class"]["4"], "pq": 100.0, "tp": 1, "fp": 0, "fn": 0})}
    # panopticapi: a ground-truth segment listed in segments_info but absent from the PNG is a FN
    empty = [*gt_segments, {"id": 11, "category_id": 2, "iscrowd": 0}]
    result = pq_compute([(gt, empty, gt, gt_segments)])
    assert result["per_class"]["2"] == pytest.approx({"name": "c2", "isthing": True, "pq": 0.0, "sq": 0.0,
                                                      "rq": 0.0, "tp": 0, "fp": 0, "fn": 1})
    assert result["all"]["pq"] == pytest.approx(50.0)  # stuff 100, the empty thing 0
    # predicted segments of unmapped categories (-1) are VOID: the stuff one is gone, so a FN
    tables = tables_of(0, gt, gt_segments, pred, pred_segments)
    unmapped_stuff = np.arange(len(CATEGORIES)); unmapped_stuff[INDEX[4]] = -1
    counts = pq_counts(tables, unmapped_stuff, len(CATEGORIES))
    assert counts[INDEX[4]].tolist() == [0, 0, 1, 0] and counts[:, 1].sum() == 0


@pytest.mark.parametrize("largest", [3000, 1 << 23])  # lookup-table path and search path
def test_segment_positions_equal_a_per_pixel_reference(largest):
    rng = np.random.default_rng(largest)
    listed = rng.choice(np.arange(1, largest), size=20, replace=False)
    unlisted = [v for v in (largest - 1, 5) if v not in listed]
    ids = rng.choice(np.concatenate([listed, unlisted, [0]]), size=(30, 40))
    ours = segment_positions(ids, listed)
    reference = np.array([list(listed).index(v) if v in listed else -1 for v in ids.ravel()]).reshape(ids.shape)
    np.testing.assert_array_equal(ours, reference)
