"""The training forward pass of `PanopticCascadeRCNN`: detectron2's PanopticFPN + CascadeROIHeads training semantics
composed from the model's submodules (the model itself is inference only).

Per batch (each input: {"image": (3,h,w) uint8, "instances": GroundTruth, "sem_seg": (h,w) int64, "seed": int}):
1. normalise + pad (the model's own `preprocess_image`), backbone + FPN;
2. semantic head logits at stride 4 vs the semantic targets padded with 255;
3. RPN: anchors matched at IoU 0.3 / 0.7 with low-quality matches, 256 sampled per image (half positive),
   objectness + box losses; proposals at the training top-k, without gradient;
4. ROI heads: ground-truth boxes appended to the proposals, matched at the stage-0 IoU, 512 sampled per image at
   0.25 positives; each cascade stage pools its boxes with the gradient scaled by 1/num_stages, classifies and
   regresses them; stage k > 0 takes the previous stage's decoded boxes (detached, clipped, empty ones dropped)
   matched at its own IoU, without sampling;
5. masks on the stage-0 foreground proposals, targets cropped from the ground-truth masks.

Randomness (anchor and proposal sampling) uses one generator per image seeded with its "seed", so the result
does not depend on how a global batch is split over processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model.cascade import ROI_LEVELS
from ..model.losses import fast_rcnn_losses, mask_loss, mask_targets, rpn_losses, semantic_loss
from ..model.matcher import Matcher, pairwise_iou
from ..model.meta_arch import PanopticCascadeRCNN
from ..model.sampling import sampled_labels, subsample_labels


@dataclass
class GroundTruth:
    """Things of one training image: boxes (G,4) float32 XYXY, classes (G,) int64 in 0..K-1, masks (G,h,w) bool."""

    boxes: Tensor
    classes: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> "GroundTruth":
        return GroundTruth(self.boxes.to(device), self.classes.to(device), self.masks.to(device))


@dataclass
class StageTargets:
    """Boxes of one image at one cascade stage with their targets: classes (R,) in 0..K (K background) and the
    matched ground-truth box (R,4) (the box itself for background, where it is unused)."""

    boxes: Tensor
    classes: Tensor
    target_boxes: Tensor
    matched: Tensor


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient times `scale` backward (detectron2's `_ScaleGradient`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def match_boxes(boxes: Tensor, gt: GroundTruth, matcher: Matcher, num_classes: int) -> StageTargets:
    """Label each box (R,4) with its best ground truth (background K below the matcher's threshold)."""
    if len(gt) == 0:
        background = torch.full((len(boxes),), num_classes, dtype=torch.int64, device=boxes.device)
        return StageTargets(boxes, background, boxes, torch.zeros_like(background))
    matched, labels = matcher(pairwise_iou(gt.boxes, boxes))
    classes = gt.classes[matched].clone()
    classes[labels == 0] = num_classes
    classes[labels == -1] = -1
    target = torch.where((classes < num_classes)[:, None] & (classes >= 0)[:, None], gt.boxes[matched], boxes)
    return StageTargets(boxes, classes, target, matched)


def _rpn_targets(
    anchors: Tensor, gts: list[GroundTruth], matcher: Matcher, batch: int, fraction: float,
    generators: list[torch.Generator],
) -> tuple[Tensor, Tensor]:
    """(N, R) sampled labels and (N, R, 4) matched boxes (the anchor itself where unmatched)."""
    labels, boxes = [], []
    for gt, gen in zip(gts, generators):
        if len(gt) == 0:
            label = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
            matched_boxes = anchors
        else:
            matched, label = matcher(pairwise_iou(gt.boxes, anchors))
            label = label.to(torch.int64)
            matched_boxes = torch.where((label == 1)[:, None], gt.boxes[matched], anchors)
        labels.append(sampled_labels(label, batch, fraction, gen))
        boxes.append(matched_boxes)
    return torch.stack(labels), torch.stack(boxes)


def training_losses(model: PanopticCascadeRCNN, batched_inputs: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Every loss of one batch (module docstring): loss_sem_seg, loss_rpn_cls, loss_rpn_loc,
    loss_cls_stage{k}, loss_box_reg_stage{k} for each cascade stage, loss_mask. Scalars, already weighted."""
    cfg = model.cfg
    device = model.device
    gts = [x["instances"].to(device) for x in batched_inputs]
    generators = [torch.Generator().manual_seed(int(x["seed"])) for x in batched_inputs]
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    losses: dict[str, Tensor] = {}

    sem_cfg = cfg.sem_seg_head
    padded = images.tensor.shape[-2:]
    sem_targets = torch.full((len(batched_inputs), *padded), sem_cfg.ignore_value, dtype=torch.int64, device=device)
    for i, x in enumerate(batched_inputs):
        h, w = x["sem_seg"].shape
        sem_targets[i, :h, :w] = x["sem_seg"].to(device)
    sem_logits = model.sem_seg_head.layers(features)
    losses["loss_sem_seg"] = (
        semantic_loss(sem_logits, sem_targets, sem_cfg.common_stride, sem_cfg.ignore_value) * sem_cfg.loss_weight
    )

    rpn, rpn_cfg = model.proposal_generator, cfg.rpn
    anchors, logits, deltas = rpn.head_outputs(features)
    all_anchors = torch.cat(anchors)
    rpn_matcher = Matcher(rpn_cfg.iou_thresholds, rpn_cfg.iou_labels, allow_low_quality_matches=True)
    labels, matched_boxes = _rpn_targets(
        all_anchors, gts, rpn_matcher, rpn_cfg.batch_size_per_image, rpn_cfg.positive_fraction, generators
    )
    n = len(gts)
    target_deltas = rpn.box2box_transform.get_deltas(
        all_anchors.expand(n, -1, -1).reshape(-1, 4), matched_boxes.reshape(-1, 4)
    ).view(n, -1, 4)
    rpn_out = rpn_losses(
        torch.cat(logits, dim=1), torch.cat(deltas, dim=1), labels, target_deltas,
        rpn_cfg.batch_size_per_image, rpn_cfg.smooth_l1_beta,
    )
    losses["loss_rpn_cls"] = rpn_out["loss_rpn_cls"] * rpn_cfg.loss_weight
    losses["loss_rpn_loc"] = rpn_out["loss_rpn_loc"] * rpn_cfg.loss_weight * rpn_cfg.bbox_reg_loss_weight
    proposals = rpn.proposals(anchors, logits, deltas, images.image_sizes)

    heads, heads_cfg = model.roi_heads, cfg.roi_heads
    num_classes = heads_cfg.num_classes
    level_features = [features[f] for f in ROI_LEVELS]
    stage0_matcher = Matcher((cfg.cascade.ious[0],), (0, 1))
    sampled: list[StageTargets] = []
    for proposal, gt, gen in zip(proposals, gts, generators):
        boxes = torch.cat([proposal.boxes, gt.boxes]) if heads_cfg.proposal_append_gt else proposal.boxes
        targets = match_boxes(boxes, gt, stage0_matcher, num_classes)
        pos, neg = subsample_labels(
            targets.classes, heads_cfg.batch_size_per_image, heads_cfg.positive_fraction, num_classes, gen
        )
        keep = torch.cat([pos, neg])
        sampled.append(
            StageTargets(boxes[keep], targets.classes[keep], targets.target_boxes[keep], targets.matched[keep])
        )

    stage_targets = sampled
    for stage in range(heads.num_stages):
        if stage > 0:
            boxes = heads.clip_stage_boxes(decoded, images.image_sizes)
            matcher = Matcher((cfg.cascade.ious[stage],), (0, 1))
            stage_targets = [match_boxes(b, gt, matcher, num_classes) for b, gt in zip(boxes, gts)]
        boxes = [t.boxes for t in stage_targets]
        pooled = _ScaleGradient.apply(heads.box_pooler(level_features, boxes), 1.0 / heads.num_stages)
        predictor = heads.box_predictor[stage]
        class_logits, box_deltas = predictor(heads.box_head[stage](pooled))
        decoded = predictor.predict_boxes(box_deltas, boxes)
        all_boxes = torch.cat(boxes)
        target_deltas = predictor.box2box_transform.get_deltas(
            all_boxes, torch.cat([t.target_boxes for t in stage_targets])
        )
        stage_out = fast_rcnn_losses(
            class_logits, box_deltas, torch.cat([t.classes for t in stage_targets]), target_deltas,
            cfg.box_head.smooth_l1_beta,
        )
        losses[f"loss_cls_stage{stage}"] = stage_out["loss_cls"]
        losses[f"loss_box_reg_stage{stage}"] = stage_out["loss_box_reg"] * cfg.box_head.bbox_reg_loss_weight

    foreground = [(t.classes >= 0) & (t.classes < num_classes) for t in sampled]
    mask_boxes = [t.boxes[fg] for t, fg in zip(sampled, foreground)]
    mask_logits = heads.mask_head(heads.mask_pooler(level_features, mask_boxes))
    side = mask_logits.shape[-1]
    targets = torch.cat(
        [mask_targets(gt.masks[t.matched[fg]], t.boxes[fg], side) for t, fg, gt in zip(sampled, foreground, gts)]
    )
    classes = torch.cat([t.classes[fg] for t, fg in zip(sampled, foreground)])
    losses["loss_mask"] = mask_loss(mask_logits, classes, targets)
    return losses
