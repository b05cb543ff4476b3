"""Overlays: deterministic colours, masks drawn where they are, panoptic segments labelled."""

from __future__ import annotations

import numpy as np

from u2seg_core.viz import colorize, label_colour, overlay_instances, overlay_panoptic


def test_colorize_is_deterministic_and_black_for_void():
    labels = np.array([[0, 1, 2], [2, 1, 300]])
    out = colorize(labels)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 0).all()
    assert (out[0, 1] == out[1, 1]).all() and (out[0, 2] == out[1, 0]).all()
    assert tuple(out[1, 2]) == label_colour(300)
    assert len({label_colour(k) for k in range(1, 50)}) == 49


def test_overlay_instances_tints_only_the_masks():
    rgb = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 35:55, 40:70] = True
    out = overlay_instances(rgb, masks, labels=None)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[~masks.any(0)] == 100).all()
    assert (out[20, 20] != 100).any() and (out[45, 55] != 100).any()
    assert not np.array_equal(out[20, 20], out[45, 55])
    labelled = overlay_instances(rgb, masks, labels=["a", "b"])
    assert not np.array_equal(labelled, out)


def test_overlay_panoptic_draws_every_segment():
    rgb = np.zeros((40, 40, 3), np.uint8)
    ids = np.zeros((40, 40), np.int64)
    ids[:20] = 5000
    ids[20:, :20] = 1001
    segments = [{"id": 5000, "category_id": 5, "isthing": 0}, {"id": 1001, "category_id": 1, "isthing": 1}]
    out = overlay_panoptic(rgb, ids, segments, {1: "thing", 5: "stuff"})
    assert (out[30, 30] == 0).all()  # VOID stays as is
    assert out[15, 35].any() and out[37, 15].any()  # (labels are drawn at the top-left corners)
