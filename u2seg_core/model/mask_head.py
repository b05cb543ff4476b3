"""Mask head (detectron2 modeling/roi_heads/mask_head.py, MaskRCNNConvUpsampleHead).

`mask_fcn{1..n}` 3x3 convs + ReLU, `deconv` 2x2/2 transposed conv + ReLU, 1x1 `predictor` with K outputs
(1 when class-agnostic). Inference takes the logit map of each instance's predicted class and applies a sigmoid.
Training (u2seg_core.train) uses `MaskRCNNConvUpsampleHead.forward` -> logits (R, K, 2S, 2S).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MaskHeadConfig
from .layers import Conv2dNorm, make_norm, msra_fill


class MaskRCNNConvUpsampleHead(nn.Module):
    """`forward(x (R,C,S,S)) -> mask logits (R, K or 1, 2S, 2S)`."""

    def __init__(self, in_channels: int, num_classes: int, cfg: MaskHeadConfig) -> None:
        super().__init__()
        channels = in_channels
        self.conv_names = []
        for k in range(cfg.num_conv):
            conv = Conv2dNorm(
                channels, cfg.conv_dim, 3, padding=1, bias=not cfg.norm,
                norm=make_norm(cfg.norm, cfg.conv_dim), activation=nn.ReLU(),
            )
            msra_fill(conv)
            self.add_module(f"mask_fcn{k + 1}", conv)
            self.conv_names.append(f"mask_fcn{k + 1}")
            channels = cfg.conv_dim
        self.deconv = nn.ConvTranspose2d(channels, cfg.conv_dim, kernel_size=2, stride=2, padding=0)
        self.deconv_relu = nn.ReLU()
        msra_fill(self.deconv)
        self.predictor = nn.Conv2d(cfg.conv_dim, 1 if cfg.cls_agnostic_mask else num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.conv_names:
            x = getattr(self, name)(x)
        return self.predictor(self.deconv_relu(self.deconv(x)))


def mask_probs_for_classes(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Sigmoid of each instance's own class map: logits (R, K|1, M, M), classes (R,) -> (R, 1, M, M)."""
    if logits.shape[1] == 1:
        return logits.sigmoid()
    rows = torch.arange(len(logits), device=classes.device)
    return logits[rows, classes][:, None].sigmoid()
