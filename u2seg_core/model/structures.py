"""Small containers passed between the model's parts, and the box helpers detectron2's `Boxes` provides."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class ImageBatch:
    """Normalised images padded to a common size: `tensor` (N,3,Hp,Wp), `image_sizes` [(h, w)] before padding."""

    tensor: torch.Tensor
    image_sizes: list[tuple[int, int]]


@dataclass
class Proposals:
    """RPN output for one image: `boxes` (R,4) XYXY, `objectness_logits` (R,), sorted by logit."""

    boxes: torch.Tensor
    objectness_logits: torch.Tensor


@dataclass
class Detections:
    """Instances of one image (detectron2's `Instances` with pred_* fields).

    pred_boxes (N,4) XYXY float32, scores (N,), pred_classes (N,) int64 0-based cluster index,
    pred_masks: (N,1,M,M) mask probabilities before `detector_postprocess`, (N,H,W) bool after;
    image_size (h, w) the boxes refer to.
    """

    pred_boxes: torch.Tensor
    scores: torch.Tensor
    pred_classes: torch.Tensor
    image_size: tuple[int, int]
    pred_masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, index: torch.Tensor) -> "Detections":
        """The instances at `index` (bool mask or integer indices)."""
        masks = None if self.pred_masks is None else self.pred_masks[index]
        return replace(
            self, pred_boxes=self.pred_boxes[index], scores=self.scores[index],
            pred_classes=self.pred_classes[index], pred_masks=masks,
        )

    def to(self, device: torch.device | str) -> "Detections":
        masks = None if self.pred_masks is None else self.pred_masks.to(device)
        return replace(
            self, pred_boxes=self.pred_boxes.to(device), scores=self.scores.to(device),
            pred_classes=self.pred_classes.to(device), pred_masks=masks,
        )


def clip_boxes(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """XYXY boxes (R,4) with x clamped to [0, w] and y to [0, h]."""
    h, w = image_size
    return torch.stack(
        (boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h),
         boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)),
        dim=-1,
    )


def nonempty_boxes(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """(R,) bool: both sides longer than `threshold`."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(R,) areas of XYXY boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
