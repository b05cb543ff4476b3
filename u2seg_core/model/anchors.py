"""Anchors of detectron2's DefaultAnchorGenerator (modeling/anchor_generator.py).

Cell anchors per level: for each size s and aspect ratio a (= h / w), w = sqrt(s^2 / a), h = a * w,
centred on (0, 0), computed in float64 and stored as float32 (no rounding). Grid: shifts
`offset * stride + stride * i` along x and y (offset 0.0 in U2Seg's config). Anchors of a level are ordered
(y, x, cell anchor), matching the (N, A, H, W) -> (N, H*W*A) flattening of the RPN head outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """(len(sizes) * len(aspect_ratios), 4) XYXY anchors centred on the origin."""
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float64).float()


def broadcast_per_level(params: Sequence[Sequence[float]], num_levels: int) -> list[Sequence[float]]:
    """One entry for all levels, or one per level."""
    if len(params) == 1:
        return list(params) * num_levels
    if len(params) != num_levels:
        raise ValueError(f"anchor settings have {len(params)} entries for {num_levels} levels")
    return list(params)


class AnchorGenerator(nn.Module):
    """`forward(features: list[(N,C,Hi,Wi)]) -> list[(Hi*Wi*A, 4)]` anchors in input-image pixels."""

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float,
    ) -> None:
        super().__init__()
        self.strides = list(strides)
        self.offset = offset
        levels = len(self.strides)
        per_level = zip(broadcast_per_level(sizes, levels), broadcast_per_level(aspect_ratios, levels))
        self.num_cell_anchors = []
        for i, (level_sizes, level_ratios) in enumerate(per_level):
            cells = cell_anchors(level_sizes, level_ratios)
            self.register_buffer(f"cell_anchors_{i}", cells, persistent=False)
            self.num_cell_anchors.append(len(cells))

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map position (the same on every level)."""
        return self.num_cell_anchors[0]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        anchors = []
        for i, (feature, stride) in enumerate(zip(features, self.strides)):
            cells = getattr(self, f"cell_anchors_{i}")
            height, width = feature.shape[-2:]
            device = cells.device
            shifts_x = torch.arange(self.offset * stride, width * stride, step=stride, dtype=torch.float32, device=device)
            shifts_y = torch.arange(self.offset * stride, height * stride, step=stride, dtype=torch.float32, device=device)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4))
        return anchors
