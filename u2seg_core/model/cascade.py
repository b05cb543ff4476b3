"""Cascade ROI heads with a mask branch (detectron2 modeling/roi_heads/{cascade_rcnn,roi_heads}.py).

Inference: stage 0 pools the RPN proposals; stage k > 0 pools the previous stage's decoded boxes, clipped
to the image (not filtered). Each stage k has its own `box_head[k]` and `box_predictor[k]` with its
box-regression weights. Scores = mean over stages of the softmax probabilities (summed in stage order,
times 1/num_stages); boxes = the last stage's decoded boxes; then Fast R-CNN inference (score threshold,
per-class NMS, detections per image). Masks: ROIAlignV2 14x14 on the detected boxes -> mask head ->
sigmoid of the predicted class's map.

Training hooks (u2seg_core.train): `box_pooler`, `run_stage(features, boxes, k) -> (logits, deltas)`,
`box_predictor[k].box2box_transform`, `clip_stage_boxes`, `mask_pooler`, `mask_head`.
"""

from __future__ import annotations

import torch
from torch import nn

from .box_coder import Box2BoxTransform
from .box_head import FastRCNNConvFCHead, FastRCNNOutputLayers, fast_rcnn_inference_single_image
from .config import ModelConfig
from .mask_head import MaskRCNNConvUpsampleHead, mask_probs_for_classes
from .poolers import ROIPooler
from .structures import Detections, Proposals, clip_boxes, nonempty_boxes

ROI_LEVELS = ("p2", "p3", "p4", "p5")


class CascadeROIHeads(nn.Module):
    """`forward(features, proposals, image_sizes) -> list[Detections]` (masks as (N,1,28,28) probabilities)."""

    def __init__(self, cfg: ModelConfig, in_channels: int, strides: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        box = cfg.box_head
        self.box_pooler = ROIPooler(box.pooler_resolution, strides, box.pooler_sampling_ratio)
        heads = [FastRCNNConvFCHead(in_channels, box.pooler_resolution, box) for _ in cfg.cascade.ious]
        self.box_head = nn.ModuleList(heads)
        self.box_predictor = nn.ModuleList(
            FastRCNNOutputLayers(head.output_size, cfg.roi_heads.num_classes, Box2BoxTransform(weights))
            for head, weights in zip(heads, cfg.cascade.bbox_reg_weights)
        )
        mask = cfg.mask_head
        self.mask_pooler = ROIPooler(mask.pooler_resolution, strides, mask.pooler_sampling_ratio)
        self.mask_head = MaskRCNNConvUpsampleHead(in_channels, cfg.roi_heads.num_classes, mask)

    @property
    def num_stages(self) -> int:
        return len(self.box_head)

    def run_stage(
        self, features: list[torch.Tensor], boxes: list[torch.Tensor], stage: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (sum Ri, K+1) and deltas (sum Ri, 4) of cascade stage `stage` on boxes [(Ri,4)]."""
        pooled = self.box_pooler(features, boxes)
        return self.box_predictor[stage](self.box_head[stage](pooled))

    def clip_stage_boxes(
        self, boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Next stage's proposals: detached, clipped; empty ones dropped only in training."""
        out = []
        for b, size in zip(boxes, image_sizes):
            b = clip_boxes(b.detach(), size)
            out.append(b[nonempty_boxes(b)] if self.training else b)
        return out

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[Proposals], image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        level_features = [features[f] for f in ROI_LEVELS]
        boxes = [p.boxes for p in proposals]
        counts = [len(b) for b in boxes]
        stage_probs = []
        decoded: list[torch.Tensor] = []
        for stage in range(self.num_stages):
            if stage > 0:
                boxes = self.clip_stage_boxes(decoded, image_sizes)
            logits, deltas = self.run_stage(level_features, boxes, stage)
            predictor = self.box_predictor[stage]
            decoded = predictor.predict_boxes(deltas, boxes)
            stage_probs.append(predictor.predict_probs(logits, counts))
        heads = self.cfg.roi_heads
        detections = []
        for i, size in enumerate(image_sizes):
            probs = sum(stage[i] for stage in stage_probs) * (1.0 / self.num_stages)
            detections.append(
                fast_rcnn_inference_single_image(
                    decoded[i], probs, size, heads.score_thresh_test, heads.nms_thresh_test, heads.detections_per_image
                )
            )
        return self.predict_masks(level_features, detections)

    def predict_masks(self, features: list[torch.Tensor], detections: list[Detections]) -> list[Detections]:
        """Attach (N,1,M,M) mask probabilities of each detection's class."""
        pooled = self.mask_pooler(features, [d.pred_boxes for d in detections])
        logits = self.mask_head(pooled)
        classes = torch.cat([d.pred_classes for d in detections])
        probs = mask_probs_for_classes(logits, classes).split([len(d) for d in detections])
        for det, p in zip(detections, probs):
            det.pred_masks = p
        return detections
