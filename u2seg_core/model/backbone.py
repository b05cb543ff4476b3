"""ResNet bottom-up network, as detectron2's `build_resnet_backbone` (modeling/backbone/resnet.py).

Stem: 7x7/2 conv (no bias) + norm + ReLU + 3x3/2 max-pool with padding 1. Stages res2..res5 of
BottleneckBlocks (depth >= 50; stride in the 3x3 conv when `stride_in_1x1` is False, optional res5
dilation) or BasicBlocks (depth 18/34). A block has a projection `shortcut` only when its input and
output channels differ. Outputs: {"res2": (N,C2,H/4,W/4), ..., "res5": (N,C5,H/32,W/32)}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NormName, ResNetConfig
from .layers import Conv2dNorm, FrozenBatchNorm2d, make_norm, msra_fill

BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def conv_norm(cin: int, cout: int, kernel: int, norm: NormName, **kwargs: int) -> Conv2dNorm:
    conv = Conv2dNorm(cin, cout, kernel, bias=False, norm=make_norm(norm, cout), **kwargs)
    msra_fill(conv)
    return conv


def freeze(module: nn.Module) -> None:
    """No gradients for the module's parameters; its BatchNorms become FrozenBatchNorm2d (as detectron2)."""
    for param in module.parameters():
        param.requires_grad_(False)
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.load_state_dict(child.state_dict())
            setattr(module, name, frozen)
        else:
            freeze(child)


class BasicStem(nn.Module):
    def __init__(self, out_channels: int, norm: NormName) -> None:
        super().__init__()
        self.conv1 = conv_norm(3, out_channels, 7, norm, stride=2, padding=3)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    def __init__(self, cin: int, cout: int, *, stride: int, norm: NormName) -> None:
        super().__init__()
        self.shortcut = conv_norm(cin, cout, 1, norm, stride=stride) if cin != cout else None
        self.conv1 = conv_norm(cin, cout, 3, norm, stride=stride, padding=1)
        self.conv2 = conv_norm(cout, cout, 3, norm, padding=1)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (grouped, dilated) -> 1x1 (ResNet-50/101/152)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        bottleneck: int,
        stride: int,
        norm: NormName,
        stride_in_1x1: bool,
        dilation: int,
        groups: int,
    ) -> None:
        super().__init__()
        self.shortcut = conv_norm(cin, cout, 1, norm, stride=stride) if cin != cout else None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv_norm(cin, bottleneck, 1, norm, stride=stride_1x1)
        self.conv2 = conv_norm(
            bottleneck, bottleneck, 3, norm, stride=stride_3x3, padding=dilation, dilation=dilation, groups=groups
        )
        self.conv3 = conv_norm(bottleneck, cout, 1, norm)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class ResNet(nn.Module):
    """Stem + res2..res5; `forward(x (N,3,H,W)) -> {"res2".."res5": features}`."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.stem = BasicStem(cfg.stem_out_channels, cfg.norm)
        cin, cout = cfg.stem_out_channels, cfg.res2_out_channels
        bottleneck = cfg.num_groups * cfg.width_per_group
        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        stride_so_far = 4
        for idx, (name, n_blocks) in enumerate(zip(STAGE_NAMES, BLOCKS_PER_STAGE[cfg.depth])):
            dilation = cfg.res5_dilation if name == "res5" else 1
            first_stride = 1 if idx == 0 or dilation == 2 else 2
            blocks: list[nn.Module] = []
            for i in range(n_blocks):
                stride = first_stride if i == 0 else 1
                if cfg.depth < 50:
                    blocks.append(BasicBlock(cin, cout, stride=stride, norm=cfg.norm))
                else:
                    blocks.append(
                        BottleneckBlock(
                            cin, cout, bottleneck=bottleneck, stride=stride, norm=cfg.norm,
                            stride_in_1x1=cfg.stride_in_1x1, dilation=dilation, groups=cfg.num_groups,
                        )
                    )
                cin = cout
            self.add_module(name, nn.Sequential(*blocks))
            stride_so_far *= first_stride
            self.out_channels[name], self.out_strides[name] = cout, stride_so_far
            cout *= 2
            bottleneck *= 2
        self.apply_freeze(cfg.freeze_at)

    def apply_freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and the first `freeze_at - 1` stages."""
        if freeze_at >= 1:
            freeze(self.stem)
        for idx, name in enumerate(STAGE_NAMES, start=2):
            if freeze_at >= idx:
                freeze(getattr(self, name))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        x = self.stem(x)
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs
