"""Box head, box predictor and Fast R-CNN inference (detectron2 modeling/roi_heads/{box_head,fast_rcnn}.py).

FastRCNNConvFCHead: `conv{k}` 3x3 (+norm) + ReLU, flatten, `fc{k}` + ReLU (U2Seg: two 1024-d fcs).
FastRCNNOutputLayers: `cls_score` (K+1 logits, background last) and `bbox_pred` (4 class-agnostic deltas).
`fast_rcnn_inference_single_image`: drop non-finite rows, drop the background column, clip boxes, keep
(box, class) pairs with score > threshold (row-major order), per-class NMS, the top `topk` by score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from .box_coder import Box2BoxTransform
from .config import BoxHeadConfig
from .layers import Conv2dNorm, make_norm, msra_fill, xavier_fill
from .structures import Detections, clip_boxes


class FastRCNNConvFCHead(nn.Sequential):
    """`forward(x (R,C,S,S)) -> (R, fc_dim)` (or conv features when num_fc is 0)."""

    def __init__(self, in_channels: int, resolution: int, cfg: BoxHeadConfig) -> None:
        super().__init__()
        shape: tuple[int, ...] = (in_channels, resolution, resolution)
        for k in range(cfg.num_conv):
            conv = Conv2dNorm(
                shape[0], cfg.conv_dim, 3, padding=1, bias=not cfg.norm,
                norm=make_norm(cfg.norm, cfg.conv_dim), activation=nn.ReLU(),
            )
            msra_fill(conv)
            self.add_module(f"conv{k + 1}", conv)
            shape = (cfg.conv_dim, resolution, resolution)
        for k in range(cfg.num_fc):
            if k == 0:
                self.add_module("flatten", nn.Flatten())
            fc = nn.Linear(int(np.prod(shape)), cfg.fc_dim)
            xavier_fill(fc)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            shape = (cfg.fc_dim,)
        self.output_size = int(np.prod(shape))


class FastRCNNOutputLayers(nn.Module):
    """`forward(x (R,D)) -> (class logits (R,K+1), deltas (R,4))`, with this stage's box transform."""

    def __init__(self, input_size: int, num_classes: int, box2box_transform: Box2BoxTransform) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        self.bbox_pred = nn.Linear(input_size, 4)
        self.box2box_transform = box2box_transform
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def predict_boxes(self, deltas: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoded boxes [(Ri,4)] per image from deltas (sum Ri, 4) on proposal boxes [(Ri,4)]."""
        decoded = self.box2box_transform.apply_deltas(deltas, torch.cat(boxes, dim=0))
        return list(decoded.split([len(b) for b in boxes]))

    @staticmethod
    def predict_probs(logits: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        """Softmax class probabilities [(Ri,K+1)] per image."""
        return list(torch.softmax(logits, dim=-1).split(counts, dim=0))


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk: int,
) -> Detections:
    """Detections from class-agnostic boxes (R,4) and probabilities (R,K+1) of one image."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(valid.all()):
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    boxes = clip_boxes(boxes.reshape(-1, 4), image_size)
    keep_mask = scores > score_thresh
    inds = keep_mask.nonzero()
    boxes = boxes[inds[:, 0]]
    scores = scores[keep_mask]
    keep = batched_nms(boxes.float(), scores, inds[:, 1], nms_thresh)
    if topk >= 0:
        keep = keep[:topk]
    return Detections(pred_boxes=boxes[keep], scores=scores[keep], pred_classes=inds[keep, 1], image_size=image_size)
