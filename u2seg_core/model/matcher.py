"""Assigning ground truth to anchors and proposals by IoU (detectron2's `Matcher` semantics).

Every prediction (anchor or proposal) takes the ground-truth box it overlaps most; its label comes from which
IoU interval that best overlap falls in. With `allow_low_quality_matches` (the RPN) every ground-truth box also
marks as positive the predictions that reach its own highest IoU, even below the positive threshold, so that no
object is left without a positive anchor. Those predictions keep their argmax ground truth (as detectron2 does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -1


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(M, N) IoU of XYXY boxes (M, 4) and (N, 4); 0 where boxes do not intersect (so empty boxes give 0,
    never NaN), as detectron2's `pairwise_iou`."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return torch.where(inter > 0, inter / (area1[:, None] + area2[None, :] - inter), torch.zeros_like(inter))


@dataclass(frozen=True)
class Matcher:
    """thresholds: increasing IoU cut points; labels: one label per interval (len(thresholds) + 1 of them),
    e.g. RPN ([0.3, 0.7], [0, -1, 1]): < 0.3 background, [0.3, 0.7) ignored, >= 0.7 foreground."""

    thresholds: tuple[float, ...]
    labels: tuple[int, ...]
    allow_low_quality_matches: bool = False

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.thresholds) + 1:
            raise ValueError(f"{len(self.thresholds)} thresholds need {len(self.thresholds) + 1} labels")
        if list(self.thresholds) != sorted(self.thresholds):
            raise ValueError(f"thresholds must increase: {self.thresholds}")

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """iou: (M gt, N predictions). Returns matched gt index (N,) int64 and label (N,) int8."""
        n = iou.shape[1]
        if iou.numel() == 0:
            return (
                torch.zeros(n, dtype=torch.int64, device=iou.device),
                torch.full((n,), self.labels[0], dtype=torch.int8, device=iou.device),
            )
        best, matches = iou.max(dim=0)
        # The interval index of each best IoU: how many thresholds it reaches.
        cuts = torch.tensor(self.thresholds, dtype=best.dtype, device=best.device)
        interval = (best[:, None] >= cuts[None, :]).sum(dim=1)
        labels = torch.tensor(self.labels, dtype=torch.int8, device=iou.device)[interval]
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1).values
            reaches_best = (iou == best_per_gt[:, None]).any(dim=0)
            labels = torch.where(reaches_best, torch.ones_like(labels), labels)
        return matches, labels
