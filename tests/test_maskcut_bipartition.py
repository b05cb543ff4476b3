"""MaskCut foreground choice, connected components, hole filling and degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from u2seg_core.maskcut import maskcut_batch
from u2seg_core.maskcut.bipartition import choose_foreground, seed_component
from u2seg_core.maskcut.components import fill_holes, geodesic_fill

pytestmark = pytest.mark.usefixtures("one_thread")


def _mask_from(y: np.ndarray) -> np.ndarray:
    """The final single-round mask for a hand-built (h, w) eigenvector."""
    h, w = y.shape
    fg, seed = choose_foreground(torch.from_numpy(y.reshape(1, -1)), (h, w))
    return seed_component(fg.view(1, h, w), seed)[0].numpy()


def test_seed_rule_keeps_the_side_with_the_peak():
    y = np.full((6, 6), -1.0)
    y[2:4, 2:4] = 5.0  # the object: peak and above the mean
    mask = _mask_from(y)
    assert mask[2:4, 2:4].all() and mask.sum() == 4
    np.testing.assert_array_equal(_mask_from(-y), mask)  # the sign of the eigenvector does not matter


def test_seed_rule_reverses_when_the_peak_is_below_the_mean():
    y = np.full((6, 6), 1.0)
    y[0, :] = 0.5  # corners split 2 / 2: the corner rule does not apply
    y[5, :] = 0.5
    y[2:4, 2:4] = -9.0  # largest |y|, below the mean
    mask = _mask_from(y)
    assert mask[2:4, 2:4].all() and mask.sum() == 4


def test_corner_rule_wins_over_the_peak():
    y = np.ones((6, 6))  # the background holds all four corners
    y[2, 2] = 3.0  # and the largest |y|
    y[3:5, 3:5] = -2.0  # the object is the other side
    mask = _mask_from(y)
    expected = np.zeros((6, 6), bool)
    expected[3:5, 3:5] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(_mask_from(-y), expected)  # sign-invariant (the reference is not)


def test_only_the_seed_component_is_kept_and_4_connectivity():
    y = np.zeros((7, 7))
    y[1:3, 1:3] = 3.0  # component with the seed
    y[3, 3] = 2.0  # touches it only diagonally: a separate component
    y[5:7, 5:7] = 2.0  # another component
    mask = _mask_from(y)
    expected = np.zeros((7, 7), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(mask, expected)


def test_tied_seeds_pick_the_first_patch():
    y = np.zeros((5, 5))
    y[0, 3] = 4.0
    y[3, 0] = 4.0 * (1 + 1e-9)  # a tie up to rounding noise: row-major first wins
    mask = _mask_from(y)
    assert mask[0, 3] and not mask[3, 0]


def test_geodesic_fill_and_fill_holes_match_scipy():
    rng = np.random.default_rng(0)
    domains = rng.random((6, 40, 50)) > 0.45
    domains[0] = True  # a full grid
    seeds = rng.random((6, 40, 50)) > 0.995
    reached = geodesic_fill(torch.from_numpy(seeds), torch.from_numpy(domains)).numpy()
    for domain, seed, got in zip(domains, seeds, reached):
        labels, _ = scipy.ndimage.label(domain)
        wanted = np.isin(labels, np.unique(labels[seed & domain])) & domain
        np.testing.assert_array_equal(got, wanted)
    spiral = np.zeros((1, 30, 30), bool)
    spiral[0, 1:29, 1] = spiral[0, 28, 1:29] = spiral[0, 3:29, 28] = spiral[0, 3, 3:29] = spiral[0, 3:26, 3] = True
    start = np.zeros_like(spiral)
    start[0, 1, 1] = True
    assert geodesic_fill(torch.from_numpy(start), torch.from_numpy(spiral)).numpy().sum() == spiral.sum()
    masks = rng.random((4, 60, 60)) > 0.4
    filled = fill_holes(torch.from_numpy(masks)).numpy()
    for mask, got in zip(masks, filled):
        np.testing.assert_array_equal(got, scipy.ndimage.binary_fill_holes(mask))


def _assert_no_masks(keys: torch.Tensor) -> None:
    for solver in ("dense", "fast"):
        result = maskcut_batch(keys, solver=solver)
        assert not result.masks.any()
        assert bool(result.degenerate.all())
        assert torch.isfinite(result.scores).all()


def test_degenerate_inputs_give_no_masks():
    _assert_no_masks(torch.ones(2, 8, 10, 10))  # a uniform image: identical keys, all-ones affinity
    _assert_no_masks(torch.zeros(1, 8, 10, 10))  # zero keys: all-eps affinity
    _assert_no_masks(torch.randn(1, 8, 1, 1))  # a grid of one patch
    _assert_no_masks(torch.randn(1, 8, 1, 2))
    keys = torch.full((1, 8, 10, 10), float("nan"))  # NaN keys compare False everywhere: all-eps
    _assert_no_masks(keys)
