"""Overlays: labels inside their segment and never over each other; titled panels side by side."""

import numpy as np
from PIL import Image, ImageDraw

from u2seg_core.viz import label_anchor, label_font, overlay_panoptic, side_by_side, titled


def test_labels_sit_inside_their_segment_without_overlapping():
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(12):  # overlapping rectangles: bounding-box corners would collide
        y, x = int(rng.integers(0, 80)), int(rng.integers(0, 120))
        mask = np.zeros((120, 160), bool)
        mask[y:y + int(rng.integers(25, 40)), x:x + int(rng.integers(30, 40))] = True
        masks.append(mask)
    taken = []
    for mask in masks:
        anchor = label_anchor(mask, (18, 10), taken)
        if anchor is None:
            continue
        x, y = anchor
        box = (x, y, x + 18, y + 10)
        assert mask[y + 5, x + 9]  # the label's centre is in its segment
        assert all(box[2] <= o[0] or o[2] <= box[0] or box[3] <= o[1] or o[3] <= box[1] for o in taken)
        taken.append(box)
    assert len(taken) >= 8


def test_no_room_means_no_label():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    assert label_anchor(mask, (8, 8), [(0, 0, 40, 40)]) is None
    assert label_anchor(np.zeros((40, 40), bool), (8, 8), []) is None


def test_overlay_labels_are_drawn_inside_segments():
    rgb = np.zeros((60, 90, 3), np.uint8)
    ids = np.zeros((60, 90), np.int64)
    ids[:, :45], ids[:, 45:] = 1, 2
    segments = [{"id": 1, "category_id": 1, "isthing": 0}, {"id": 2, "category_id": 2, "isthing": 0}]
    out = overlay_panoptic(rgb, ids, segments, {1: "left", 2: "right"})
    width = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "right", font=label_font(60, 90))[2]
    assert width < 45  # each label fits in its half
    black = (out == 0).all(axis=2)  # label backgrounds are the only black pixels left
    assert black[:, :45].any() and black[:, 45:].any()  # one label in each segment
    assert not (black[:, 44] & black[:, 45]).any()  # and none straddles the border


def test_titled_panels_side_by_side():
    a, b = np.zeros((30, 40, 3), np.uint8), np.zeros((30, 50, 3), np.uint8)
    row = side_by_side([("ground truth", a), ("prediction", b)])
    bar = titled(a, "ground truth").shape[0] - 30
    assert bar > 0 and row.shape == (30 + bar, 40 + 8 + 50, 3)
    assert (row[:bar] < 255).any() and (row[:bar] == 255).mean() > 0.5  # dark title text on a white bar
