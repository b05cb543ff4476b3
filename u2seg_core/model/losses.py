"""Training losses of the Panoptic Cascade Mask R-CNN, normalised as detectron2 normalises them.

* RPN: objectness BCE over the sampled anchors and box regression over the positive ones, both summed and divided
  by `batch_size_per_image * num_images` (not by the number actually sampled).
* Cascade stage: cross-entropy averaged over the sampled proposals; class-agnostic box regression summed over the
  foreground proposals and divided by the number of all proposals of the stage.
* Mask: per-pixel BCE averaged over the foreground proposals' M x M targets, on the logits of the proposal's class.
* Semantic: logits upsampled bilinearly by the head's common stride, cross-entropy with ignore 255, times its weight.

Box regression is smooth L1 (beta 0 = L1), the loss U2Seg's config uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align


def smooth_l1_sum(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1; beta < 1e-5 is plain L1 (as detectron2's `smooth_l1_loss`)."""
    if beta < 1e-5:
        return (pred - target).abs().sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def rpn_losses(
    objectness_logits: Tensor,
    anchor_deltas: Tensor,
    labels: Tensor,
    target_deltas: Tensor,
    batch_size_per_image: int,
    smooth_l1_beta: float = 0.0,
) -> dict[str, Tensor]:
    """objectness_logits (N, R), anchor_deltas (N, R, 4): predictions over the R anchors of all levels;
    labels (N, R) int (1 sampled positive, 0 sampled negative, -1 not sampled); target_deltas (N, R, 4)."""
    positive = labels == 1
    valid = labels >= 0
    normalizer = batch_size_per_image * labels.shape[0]
    objectness = F.binary_cross_entropy_with_logits(
        objectness_logits[valid], labels[valid].to(objectness_logits.dtype), reduction="sum"
    )
    localization = smooth_l1_sum(anchor_deltas[positive], target_deltas[positive], smooth_l1_beta)
    return {"loss_rpn_cls": objectness / normalizer, "loss_rpn_loc": localization / normalizer}


def fast_rcnn_losses(
    class_logits: Tensor, box_deltas: Tensor, gt_classes: Tensor, target_deltas: Tensor, smooth_l1_beta: float = 0.0
) -> dict[str, Tensor]:
    """One cascade stage. class_logits (R, K+1) (index K = background); box_deltas (R, 4) class-agnostic or
    (R, 4K) per class; gt_classes (R,) in 0..K; target_deltas (R, 4) towards each proposal's matched box."""
    num_classes = class_logits.shape[1] - 1
    if gt_classes.numel() == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_cls": zero, "loss_box_reg": zero}
    loss_cls = F.cross_entropy(class_logits, gt_classes, reduction="mean")
    foreground = torch.nonzero((gt_classes >= 0) & (gt_classes < num_classes)).squeeze(1)
    if box_deltas.shape[1] == 4:
        fg_deltas = box_deltas[foreground]
    else:
        fg_deltas = box_deltas.view(-1, num_classes, 4)[foreground, gt_classes[foreground]]
    loss_box = smooth_l1_sum(fg_deltas, target_deltas[foreground], smooth_l1_beta) / max(gt_classes.numel(), 1)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


def mask_targets(gt_masks: Tensor, boxes: Tensor, side: int) -> Tensor:
    """(P, side, side) bool targets: each (H, W) mask of `gt_masks` (P, H, W) cropped to its XYXY box (P, 4) with
    aligned ROIAlign (sampling ratio 0) and thresholded at 0.5, as detectron2's `BitMasks.crop_and_resize`."""
    if gt_masks.shape[0] == 0:
        return torch.zeros((0, side, side), dtype=torch.bool, device=gt_masks.device)
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    crops = roi_align(gt_masks[:, None].float(), rois.float(), (side, side), 1.0, 0, aligned=True)
    return crops.squeeze(1) >= 0.5


def mask_loss(mask_logits: Tensor, gt_classes: Tensor, targets: Tensor) -> Tensor:
    """mask_logits (P, C, M, M) with C = 1 (class-agnostic) or K; gt_classes (P,); targets (P, M, M) bool."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    if mask_logits.shape[1] == 1:
        logits = mask_logits[:, 0]
    else:
        logits = mask_logits[torch.arange(len(gt_classes), device=gt_classes.device), gt_classes]
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="mean")


def semantic_loss(logits: Tensor, targets: Tensor, common_stride: int, ignore_value: int = 255) -> Tensor:
    """logits (N, C, H/stride, W/stride); targets (N, H, W) int64 padded with `ignore_value` (the padded batch
    size). A batch where every pixel is ignored gives 0, not NaN."""
    up = F.interpolate(logits.float(), scale_factor=common_stride, mode="bilinear", align_corners=False)
    if not (targets != ignore_value).any():
        return up.sum() * 0.0
    return F.cross_entropy(up, targets, reduction="mean", ignore_index=ignore_value)
