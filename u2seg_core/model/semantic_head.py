"""Panoptic-FPN semantic head (detectron2 modeling/meta_arch/semantic_seg.py, SemSegFPNHead).

For each of p2..p5 (stride s) a tower of max(1, log2(s / 4)) blocks `p{l}.{2j}` = 3x3 conv (no bias with a
norm; GroupNorm(32) in U2Seg) + ReLU, each followed by a bilinear 2x upsampling while s > 4; the towers are
summed and a 1x1 `predictor` gives S+1 logits (class 0 = all things) at stride 4; inference upsamples them
4x bilinearly (align_corners False) to the padded input size.
Training (u2seg_core.train) uses `layers(features)` -> (N, S+1, Hp/4, Wp/4) logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import SemSegHeadConfig
from .layers import Conv2dNorm, make_norm, msra_fill

SEM_LEVELS = ("p2", "p3", "p4", "p5")


class SemSegFPNHead(nn.Module):
    """`forward(features) -> (N, S+1, Hp, Wp)` logits at the padded input resolution."""

    def __init__(self, cfg: SemSegHeadConfig, in_channels: int, strides: dict[str, int]) -> None:
        super().__init__()
        self.common_stride = cfg.common_stride
        for level in SEM_LEVELS:
            stride = strides[level]
            ops: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(cfg.common_stride)))):
                conv = Conv2dNorm(
                    in_channels if k == 0 else cfg.convs_dim, cfg.convs_dim, 3, padding=1, bias=not cfg.norm,
                    norm=make_norm(cfg.norm, cfg.convs_dim), activation=F.relu,
                )
                msra_fill(conv)
                ops.append(conv)
                if stride != cfg.common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(level, nn.Sequential(*ops))
        self.predictor = nn.Conv2d(cfg.convs_dim, cfg.num_classes, kernel_size=1)
        msra_fill(self.predictor)

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the common stride: (N, S+1, Hp/4, Wp/4)."""
        x = getattr(self, SEM_LEVELS[0])(features[SEM_LEVELS[0]])
        for level in SEM_LEVELS[1:]:
            x = x + getattr(self, level)(features[level])
        return self.predictor(x)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.interpolate(self.layers(features), scale_factor=self.common_stride, mode="bilinear", align_corners=False)
