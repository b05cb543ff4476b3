"""Region Proposal Network (detectron2 modeling/proposal_generator/{rpn,proposal_utils}.py).

Head (shared over p2..p6): 3x3 conv + ReLU (`rpn_head.conv`), 1x1 `objectness_logits` (A outputs) and
1x1 `anchor_deltas` (4A outputs). Inference, per image, as `find_top_rpn_proposals`: on each level keep the
`pre_nms_topk` highest logits, decode (box2box weights 1,1,1,1), drop non-finite boxes, clip to the image,
drop empty boxes (side <= min_box_size), NMS per level (`batched_nms` with the level as the class), then the
`post_nms_topk` best over all levels.

Training (u2seg_core.train) uses `RPN.head_outputs(features)` -> (anchors per level (Hi*Wi*A, 4),
objectness logits per level (N, Hi*Wi*A), deltas per level (N, Hi*Wi*A, 4)), `RPN.box2box_transform` and
`RPN.proposals(anchors, logits, deltas, image_sizes)`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms

from .anchors import AnchorGenerator
from .box_coder import Box2BoxTransform
from .config import AnchorConfig, RPNConfig
from .layers import Conv2dNorm
from .structures import Proposals, clip_boxes, nonempty_boxes

RPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")


class StandardRPNHead(nn.Module):
    """`forward(features) -> (logits [(N,A,Hi,Wi)], deltas [(N,4A,Hi,Wi)])`."""

    def __init__(self, in_channels: int, num_anchors: int, conv_dims: tuple[int, ...]) -> None:
        super().__init__()
        channels = in_channels
        convs = []
        for dim in conv_dims:
            out = channels if dim == -1 else dim
            convs.append(Conv2dNorm(channels, out, 3, padding=1, activation=nn.ReLU()))
            channels = out
        if len(convs) == 1:
            self.conv: nn.Module = convs[0]
        else:
            self.conv = nn.Sequential()
            for k, conv in enumerate(convs):
                self.conv.add_module(f"conv{k}", conv)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    """`forward(features, image_sizes) -> list[Proposals]` (one per image)."""

    def __init__(self, cfg: RPNConfig, anchors: AnchorConfig, in_channels: int, strides: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(anchors.sizes, anchors.aspect_ratios, strides, anchors.offset)
        self.rpn_head = StandardRPNHead(in_channels, self.anchor_generator.num_anchors, cfg.conv_dims)
        self.box2box_transform = Box2BoxTransform(cfg.bbox_reg_weights)

    def head_outputs(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Anchors [(Hi*Wi*A, 4)], logits [(N, Hi*Wi*A)], deltas [(N, Hi*Wi*A, 4)] per level."""
        level_features = [features[f] for f in RPN_LEVELS]
        anchors = self.anchor_generator(level_features)
        logits, deltas = self.rpn_head(level_features)
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
        deltas = [
            x.view(x.shape[0], -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
            for x in deltas
        ]
        return anchors, logits, deltas

    def decode(self, anchors: list[torch.Tensor], deltas: list[torch.Tensor]) -> list[torch.Tensor]:
        """Proposal boxes [(N, Hi*Wi*A, 4)] from anchors and deltas."""
        boxes = []
        for anchors_i, deltas_i in zip(anchors, deltas):
            n = deltas_i.shape[0]
            expanded = anchors_i.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4)
            boxes.append(self.box2box_transform.apply_deltas(deltas_i.reshape(-1, 4), expanded).view(n, -1, 4))
        return boxes

    def proposals(
        self, anchors: list[torch.Tensor], logits: list[torch.Tensor], deltas: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Proposals]:
        """Proposals per image from `head_outputs` (no gradient; train or test top-k by `self.training`)."""
        with torch.no_grad():
            boxes = self.decode(anchors, deltas)
            pre, post = (
                (self.cfg.pre_nms_topk_train, self.cfg.post_nms_topk_train)
                if self.training
                else (self.cfg.pre_nms_topk_test, self.cfg.post_nms_topk_test)
            )
            return find_top_proposals(
                boxes, logits, image_sizes, self.cfg.nms_thresh, pre, post, self.cfg.min_box_size, self.training
            )

    def forward(self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[Proposals]:
        return self.proposals(*self.head_outputs(features), image_sizes)


def find_top_proposals(
    boxes: list[torch.Tensor],
    logits: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Proposals]:
    """Per-level top-k, clip, drop empty, per-level NMS, per-image top-k (see the module docstring)."""
    device = boxes[0].device
    batch_idx = torch.arange(len(image_sizes), device=device)
    top_boxes, top_logits, level_ids = [], [], []
    for level, (boxes_i, logits_i) in enumerate(zip(boxes, logits)):
        k = min(logits_i.shape[1], pre_nms_topk)
        logits_k, idx = logits_i.topk(k, dim=1)
        top_boxes.append(boxes_i[batch_idx[:, None], idx])
        top_logits.append(logits_k)
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=device))
    all_boxes = torch.cat(top_boxes, dim=1)
    all_logits = torch.cat(top_logits, dim=1)
    all_levels = torch.cat(level_ids, dim=0)

    results = []
    for n, image_size in enumerate(image_sizes):
        image_boxes, scores, levels = all_boxes[n], all_logits[n], all_levels
        valid = torch.isfinite(image_boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(valid.all()):
            if training:
                raise FloatingPointError("RPN predicted Inf/NaN boxes or scores: training has diverged")
            image_boxes, scores, levels = image_boxes[valid], scores[valid], levels[valid]
        image_boxes = clip_boxes(image_boxes, image_size)
        keep = nonempty_boxes(image_boxes, min_box_size)
        image_boxes, scores, levels = image_boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(image_boxes.float(), scores, levels, nms_thresh)[:post_nms_topk]
        results.append(Proposals(image_boxes[keep], scores[keep]))
    return results
