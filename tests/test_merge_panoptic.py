"""The per-image merge rule against a plain per-pixel reference, and its hand-checkable cases."""

import numpy as np
import pytest

from u2seg_core.merge.panoptic import merge_image, semantic_from_segments


def reference_merge(masks, cluster_ids, boxes, semantic, k, n_stuff, overlap_max, min_area=1):
    """U2Seg's rule spelled out pixel by pixel (with per-image ids and measured areas/boxes)."""
    m, h, w = masks.shape
    order = sorted(range(m), key=lambda i: -(boxes[i][2] * boxes[i][3]))
    owner = [[-1] * w for _ in range(h)]
    for rank, i in enumerate(order):
        for y in range(h):
            for x in range(w):
                if masks[i, y, x]:
                    owner[y][x] = rank
    area = [0] * m
    for y in range(h):
        for x in range(w):
            if owner[y][x] >= 0:
                area[owner[y][x]] += 1
    seg_of_rank, categories, next_id = {}, {}, 1
    for rank in range(m):
        if area[rank] >= min_area:
            seg_of_rank[rank] = next_id
            categories[next_id] = (int(cluster_ids[order[rank]]), order[rank])
            next_id += 1
    out = [[seg_of_rank.get(owner[y][x], 0) if owner[y][x] >= 0 else 0 for x in range(w)] for y in range(h)]
    for c in range(n_stuff):
        total = covered = 0
        for y in range(h):
            for x in range(w):
                if semantic[y, x] == c:
                    total += 1
                    covered += out[y][x] > 0
        if total - covered < min_area or covered / total > overlap_max:
            continue
        for y in range(h):
            for x in range(w):
                if semantic[y, x] == c and out[y][x] == 0:
                    out[y][x] = next_id
        categories[next_id] = (k + 1 + c, None)
        next_id += 1
    out = np.array(out, dtype=np.int32)
    segments = []
    for sid, (category, instance) in categories.items():
        ys, xs = [], []
        for y in range(h):
            for x in range(w):
                if out[y, x] == sid:
                    ys.append(y)
                    xs.append(x)
        info = {
            "id": sid,
            "category_id": category,
            "iscrowd": 0,
            "bbox": [float(min(xs)), float(min(ys)), float(max(xs) - min(xs) + 1), float(max(ys) - min(ys) + 1)],
            "area": len(xs),
        }
        if instance is not None:
            info["instance_index"] = instance
        segments.append(info)
    return out, segments


def random_case(rng, h=11, w=13, n_stuff=4, k=7):
    m = int(rng.integers(0, 6))
    masks = np.zeros((m, h, w), dtype=bool)
    boxes = np.zeros((m, 4))
    for i in range(m):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.8
        boxes[i] = (x0, y0, x1 - x0, y1 - y0)
    boxes[rng.random(m) < 0.3] = [0, 0, 3, 3]  # equal box areas: ties keep input order
    semantic = rng.integers(0, n_stuff, size=(h, w)).astype(np.uint8)
    semantic[rng.random((h, w)) < 0.1] = 255
    return masks, rng.integers(1, k + 1, size=m), boxes, semantic, k, n_stuff


@pytest.mark.parametrize("min_area", [1, 4])
def test_vectorised_merge_equals_pixel_loop(min_area):
    rng = np.random.default_rng(0)
    for _ in range(25):
        masks, ids, boxes, semantic, k, n_stuff = random_case(rng)
        overlap_max = float(rng.choice([0.3, 0.7, 1.0]))
        got_ids, got_segments = merge_image(masks, ids, boxes, semantic, k, n_stuff, overlap_max, min_area)
        ref_ids, ref_segments = reference_merge(masks, ids, boxes, semantic, k, n_stuff, overlap_max, min_area)
        np.testing.assert_array_equal(got_ids, ref_ids)
        assert got_segments == ref_segments


def test_largest_box_painted_first_and_occluded_instance_dropped():
    h, w = 8, 8
    masks = np.zeros((3, h, w), dtype=bool)
    masks[0, 2:4, 2:4] = True  # small, listed first
    masks[1, 0:8, 0:8] = True  # large background instance
    masks[2, 2:4, 2:4] = True  # same pixels as 0 but a bigger box: painted earlier, then covered by 0
    boxes = np.array([[2, 2, 2, 2], [0, 0, 8, 8], [0, 0, 5, 5]], dtype=float)
    segment_ids, segments = merge_image(masks, [1, 2, 3], boxes, np.full((h, w), 255, np.uint8), 3, 2)
    by_category = {s["category_id"]: s for s in segments}
    assert set(by_category) == {1, 2}  # instance 2 (cluster 3) left without pixels: dropped
    assert np.all(segment_ids[2:4, 2:4] == by_category[1]["id"])  # the smallest box wins
    assert by_category[2]["area"] == 64 - 4 and by_category[2]["bbox"] == [0.0, 0.0, 8.0, 8.0]
    assert [s["id"] for s in segments] == [1, 2]


def test_area_and_box_recomputed_after_occlusion():
    masks = np.zeros((2, 6, 10), dtype=bool)
    masks[0, :, 0:10] = True
    masks[1, :, 5:10] = True  # covers the right half of instance 0
    boxes = np.array([[0, 0, 10, 6], [5, 0, 5, 6]], dtype=float)
    _, segments = merge_image(masks, [4, 5], boxes, np.zeros((6, 10), np.uint8), 5, 1)
    big = next(s for s in segments if s["category_id"] == 4)
    assert big["area"] == 30 and big["bbox"] == [0.0, 0.0, 5.0, 6.0]


@pytest.mark.parametrize("covered_cols, kept", [(8, False), (7, True), (6, True)])
def test_stuff_class_skipped_when_more_than_70_percent_covered(covered_cols, kept):
    semantic = np.zeros((1, 10), np.uint8)  # one stuff class over 10 pixels
    masks = np.zeros((1, 1, 10), dtype=bool)
    masks[0, 0, :covered_cols] = True
    segment_ids, segments = merge_image(masks, [1], [[0, 0, covered_cols, 1]], semantic, 1, 1, 0.7)
    stuff = [s for s in segments if s["category_id"] == 2]
    assert bool(stuff) == kept
    if kept:
        assert stuff[0]["area"] == 10 - covered_cols
    else:
        assert np.all(segment_ids[0, covered_cols:] == 0)  # free pixels of a skipped class stay VOID


def test_ids_unique_stuff_only_and_semantic_png():
    semantic = np.array([[0, 0, 1], [2, 255, 1]], np.uint8)
    segment_ids, segments = merge_image(np.zeros((0, 2, 3), bool), [], np.zeros((0, 4)), semantic, 5, 3)
    assert [s["category_id"] for s in segments] == [6, 7, 8]
    assert len({s["id"] for s in segments}) == 3 and segment_ids[1, 1] == 0
    labels = semantic_from_segments(segment_ids, segments, 5, 3)
    np.testing.assert_array_equal(labels, [[1, 1, 2], [3, 255, 2]])


def test_bad_inputs_raise():
    masks = np.ones((1, 2, 2), bool)
    with pytest.raises(ValueError, match="cluster ids"):
        merge_image(masks, [4], [[0, 0, 2, 2]], np.zeros((2, 2), np.uint8), 3, 2)
    with pytest.raises(ValueError, match="outside"):
        merge_image(masks, [1], [[0, 0, 2, 2]], np.full((2, 2), 9, np.uint8), 3, 2)
