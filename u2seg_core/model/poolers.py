"""Multi-level ROIAlignV2 pooling (detectron2 modeling/poolers.py + layers/roi_align.py).

A box of side sqrt(area) goes to level floor(4 + log2(sqrt(area) / 224 + 1e-8)), clamped to the pooled
levels (p2..p5); each level is pooled with torchvision's `roi_align(aligned=True)` (the half-pixel shift of
ROIAlignV2) at scale 1/stride with the configured sampling ratio (0 = adaptive).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import roi_align

from .structures import box_area

CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4


def assign_boxes_to_levels(
    boxes: torch.Tensor, min_level: int, max_level: int,
    canonical_box_size: int = CANONICAL_BOX_SIZE, canonical_level: int = CANONICAL_LEVEL,
) -> torch.Tensor:
    """(R,) int64 level index of each XYXY box (R,4), as an offset from `min_level`."""
    sizes = torch.sqrt(box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """`forward(features [(N,C,Hl,Wl)], boxes [(Ri,4)] per image) -> (sum Ri, C, S, S)`."""

    def __init__(self, output_size: int, strides: list[int], sampling_ratio: int) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.min_level = int(math.log2(strides[0]))
        self.max_level = int(math.log2(strides[-1]))
        if len(strides) != self.max_level - self.min_level + 1:
            raise ValueError(f"pooler strides {strides} do not form a pyramid")

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        all_boxes = torch.cat(boxes, dim=0)
        counts = torch.tensor([len(b) for b in boxes], device=all_boxes.device)
        batch_index = torch.repeat_interleave(
            torch.arange(len(boxes), dtype=all_boxes.dtype, device=all_boxes.device), counts
        )
        rois = torch.cat([batch_index[:, None], all_boxes], dim=1)
        channels = features[0].shape[1]
        if len(features) == 1:
            return self._pool(features[0], rois, 0)
        levels = assign_boxes_to_levels(all_boxes, self.min_level, self.max_level)
        output = torch.zeros(
            (len(rois), channels, *self.output_size), dtype=features[0].dtype, device=features[0].device
        )
        for level, feature in enumerate(features):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            output.index_put_((inds,), self._pool(feature, rois[inds], level))
        return output

    def _pool(self, feature: torch.Tensor, rois: torch.Tensor, level: int) -> torch.Tensor:
        return roi_align(
            feature, rois.to(feature.dtype), self.output_size, self.scales[level], self.sampling_ratio, aligned=True
        )
