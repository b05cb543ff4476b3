"""Matcher, sampler and loss functions against simple reference computations on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from u2seg_core.model.losses import fast_rcnn_losses, mask_loss, mask_targets, rpn_losses, semantic_loss
from u2seg_core.model.matcher import Matcher, pairwise_iou
from u2seg_core.model.sampling import sampled_labels, subsample_labels


def test_rpn_matcher_intervals_and_low_quality_matches():
    iou = torch.tensor([[0.1, 0.5, 0.8, 0.2], [0.25, 0.0, 0.0, 0.29]])
    matches, labels = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)(iou)
    assert matches.tolist() == [1, 0, 0, 1]
    # anchor 0: 0.25 < 0.3 background; anchor 1: ignored; anchor 2: >= 0.7; anchor 3: gt 1's best (0.29) -> positive
    assert labels.tolist() == [0, -1, 1, 1]
    _, strict = Matcher((0.3, 0.7), (0, -1, 1))(iou)
    assert strict.tolist() == [0, -1, 1, 0]


def test_matcher_threshold_is_inclusive_and_empty_gt_is_background():
    iou = torch.tensor([[0.5, 0.4999]])
    assert Matcher((0.5,), (0, 1))(iou)[1].tolist() == [1, 0]
    matches, labels = Matcher((0.5,), (0, 1))(torch.zeros(0, 3))
    assert matches.tolist() == [0, 0, 0] and labels.tolist() == [0, 0, 0]


def test_subsample_caps_positives_and_fills_with_negatives():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    gen = torch.Generator().manual_seed(0)
    pos, neg = subsample_labels(labels, 16, 0.25, 0, gen)
    assert len(pos) == 4 and len(neg) == 12
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 4 and len(set(neg.tolist())) == 12
    few = torch.tensor([1, 1, 0, -1])
    pos, neg = subsample_labels(few, 16, 0.25, 0, gen)
    assert sorted(pos.tolist()) == [0, 1] and neg.tolist() == [2]
    # ROI form: background label = num_classes, any other non-negative class is foreground
    roi = torch.tensor([3, 0, 2, 3, 3, -1])
    pos, neg = subsample_labels(roi, 4, 0.5, 3, gen)
    assert sorted(pos.tolist()) == [1, 2] and set(neg.tolist()) <= {0, 3, 4} and len(neg) == 2


def test_sampling_is_reproducible_from_the_generator():
    labels = torch.tensor([1] * 50 + [0] * 500)
    a = sampled_labels(labels, 256, 0.5, torch.Generator().manual_seed(7))
    b = sampled_labels(labels, 256, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and (a == 1).sum() == 50 and (a == 0).sum() == 206 and (a == -1).sum() == 294


def test_rpn_losses_normalised_by_batch_size_per_image():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    deltas = torch.tensor([[[0.1, 0.2, 0.3, 0.4]] * 4])
    target = torch.zeros(1, 4, 4)
    labels = torch.tensor([[1, 0, -1, 1]])
    out = rpn_losses(logits, deltas, labels, target, batch_size_per_image=8)
    bce = -math.log(1 / (1 + math.exp(-2.0))) - math.log(1 - 1 / (1 + math.exp(1.0))) - math.log(1 / (1 + math.exp(-3.0)))
    assert out["loss_rpn_cls"].item() == pytest.approx(bce / 8, rel=1e-6)
    assert out["loss_rpn_loc"].item() == pytest.approx(2 * 1.0 / 8, rel=1e-6)


def test_fast_rcnn_losses_against_reference():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)  # K = 3 classes + background
    deltas = torch.randn(5, 4)
    target = torch.randn(5, 4)
    gt = torch.tensor([0, 3, 2, 3, 1])
    out = fast_rcnn_losses(logits, deltas, gt, target)
    ref_cls = sum(-F.log_softmax(logits[i], 0)[gt[i]] for i in range(5)) / 5
    ref_box = sum((deltas[i] - target[i]).abs().sum() for i in (0, 2, 4)) / 5
    assert out["loss_cls"].item() == pytest.approx(ref_cls.item(), rel=1e-5)
    assert out["loss_box_reg"].item() == pytest.approx(ref_box.item(), rel=1e-5)
    per_class = torch.randn(5, 12)
    out = fast_rcnn_losses(logits, per_class, gt, target, smooth_l1_beta=0.5)
    pick = torch.stack([per_class[i].view(3, 4)[gt[i]] for i in (0, 2, 4)])
    ref = F.smooth_l1_loss(pick, target[[0, 2, 4]], beta=0.5, reduction="sum") / 5
    assert out["loss_box_reg"].item() == pytest.approx(ref.item(), rel=1e-5)
    empty = fast_rcnn_losses(logits[:0].requires_grad_(), deltas[:0], gt[:0], target[:0])
    assert empty["loss_cls"].item() == 0.0


def test_mask_targets_crop_and_resize():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 5:15, 5:15] = True
    masks[1, :, :10] = True
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 20.0, 20.0]])
    out = mask_targets(masks, boxes, 4)
    assert out[0].all()  # the box is exactly the square
    assert out[1][:, :2].all() and not out[1][:, 2:].any()  # left half


def test_mask_loss_picks_the_class_channel():
    logits = torch.randn(3, 4, 2, 2)
    gt = torch.tensor([1, 0, 3])
    targets = torch.rand(3, 2, 2) > 0.5
    ref = F.binary_cross_entropy_with_logits(torch.stack([logits[i, gt[i]] for i in range(3)]), targets.float())
    assert mask_loss(logits, gt, targets).item() == pytest.approx(ref.item(), rel=1e-6)
    assert mask_loss(logits[:, :1], gt, targets).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits[:, 0], targets.float()).item(), rel=1e-6
    )
    assert mask_loss(torch.zeros(0, 4, 2, 2), gt[:0], targets[:0]).item() == 0.0


def test_semantic_loss_ignores_255():
    logits = torch.randn(1, 3, 2, 2)
    targets = torch.full((1, 8, 8), 255, dtype=torch.int64)
    targets[0, :4, :4] = 1
    up = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
    ref = -F.log_softmax(up[0, :, :4, :4], dim=0)[1].mean()
    assert semantic_loss(logits, targets, 4).item() == pytest.approx(ref.item(), rel=1e-5)
    assert semantic_loss(logits, torch.full_like(targets, 255), 4).item() == 0.0


def _matcher_reference(iou, thresholds, labels, low_quality):
    """detectron2's Matcher, one prediction at a time."""
    n_gt, n = iou.shape
    matches, out = [], []
    for j in range(n):
        column = iou[:, j].tolist()
        best = max(column)
        matches.append(column.index(best))
        bounds = [-float("inf"), *thresholds, float("inf")]
        out.append(next(l for l, lo, hi in zip(labels, bounds[:-1], bounds[1:]) if lo <= best < hi))
    if low_quality:
        for g in range(n_gt):
            row_best = max(iou[g].tolist())
            for j in range(n):
                if iou[g, j].item() == row_best:
                    out[j] = 1
    return matches, out


@pytest.mark.parametrize("seed", range(3))
def test_matcher_equals_the_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(7, 2, generator=gen) * 50
    gt = torch.cat([corners, corners + 5 + torch.rand(7, 2, generator=gen) * 30], dim=1)
    corners = torch.rand(60, 2, generator=gen) * 50
    preds = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=gen) * 30], dim=1)
    iou = pairwise_iou(gt, preds)
    x1 = torch.max(gt[:, None, 0], preds[None, :, 0])
    y1 = torch.max(gt[:, None, 1], preds[None, :, 1])
    x2 = torch.min(gt[:, None, 2], preds[None, :, 2])
    y2 = torch.min(gt[:, None, 3], preds[None, :, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    torch.testing.assert_close(iou, inter / (area(gt)[:, None] + area(preds)[None] - inter))
    for thresholds, labels, low in (((0.3, 0.7), (0, -1, 1), True), ((0.5,), (0, 1), False)):
        matches, got = Matcher(thresholds, labels, low)(iou)
        ref_matches, ref_labels = _matcher_reference(iou, thresholds, labels, low)
        assert matches.tolist() == ref_matches and got.tolist() == ref_labels
