"""Feature Pyramid Network on res2..res5 with a max-pooled P6 (detectron2 modeling/backbone/fpn.py).

Per level a 1x1 lateral conv and a 3x3 output conv (`fpn_lateral{2..5}`, `fpn_output{2..5}`; bias only
without norm). Top-down: nearest 2x upsampling added to the lateral ("sum") or averaged ("avg");
P6 = max_pool2d(P5, kernel 1, stride 2). Inputs must be padded to a multiple of `size_divisibility` (32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import STAGE_NAMES, ResNet
from .config import FPNConfig
from .layers import Conv2dNorm, make_norm, xavier_fill

LEVELS = ("p2", "p3", "p4", "p5", "p6")


class LastLevelMaxPool(nn.Module):
    """P6 from P5 by a stride-2 subsampling max-pool."""

    def forward(self, p5: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)


class FPN(nn.Module):
    """`forward(x (N,3,H,W)) -> {"p2": (N,C,H/4,W/4), ..., "p6": (N,C,H/64,W/64)}`."""

    size_divisibility = 32

    def __init__(self, bottom_up: ResNet, cfg: FPNConfig) -> None:
        super().__init__()
        use_bias = cfg.norm == ""
        c = cfg.out_channels
        self.lateral_names, self.output_names = [], []
        for stage in STAGE_NAMES:
            level = stage.removeprefix("res")
            lateral = Conv2dNorm(bottom_up.out_channels[stage], c, 1, bias=use_bias, norm=make_norm(cfg.norm, c))
            output = Conv2dNorm(c, c, 3, padding=1, bias=use_bias, norm=make_norm(cfg.norm, c))
            xavier_fill(lateral)
            xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            self.lateral_names.append(f"fpn_lateral{level}")
            self.output_names.append(f"fpn_output{level}")
        self.top_block = LastLevelMaxPool()
        self.bottom_up = bottom_up
        self.fuse_type = cfg.fuse_type
        self.out_channels = c
        self.out_strides = {level: 2 ** int(level[1:]) for level in LEVELS}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        laterals = [getattr(self, n) for n in self.lateral_names]
        outputs = [getattr(self, n) for n in self.output_names]
        prev = laterals[-1](bottom_up[STAGE_NAMES[-1]])
        results = [outputs[-1](prev)]
        for idx in range(len(STAGE_NAMES) - 2, -1, -1):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = laterals[idx](bottom_up[STAGE_NAMES[idx]]) + top_down
            if self.fuse_type == "avg":
                prev /= 2
            results.insert(0, outputs[idx](prev))
        results.append(self.top_block(results[-1]))
        return dict(zip(LEVELS, results))
