"""Convolution + normalisation building blocks with detectron2's parameter names.

`Conv2dNorm` owns its norm as the child `norm`, so a conv's tensors are `<name>.weight` and
`<name>.norm.{weight,bias,running_mean,running_var}` exactly as in detectron2 checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import NormName


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers; eps 1e-5).

    At inference it is `F.batch_norm(training=False)`, bit-identical to an `nn.BatchNorm2d` in eval mode;
    when gradients flow through it (training later layers) it is the equivalent `x * scale + shift`.
    A checkpoint's `num_batches_tracked` (written by BN/SyncBN) is accepted and ignored.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(norm: NormName, channels: int) -> nn.Module | None:
    """detectron2's `get_norm`: '' = none, BN, SyncBN, FrozenBN, GN (32 groups)."""
    if norm == "":
        return None
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm '{norm}'")


class Conv2dNorm(nn.Conv2d):
    """`nn.Conv2d` followed by an optional norm (child `norm`) and an optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def msra_fill(conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """Kaiming-normal (fan_out, relu) weights and zero bias (detectron2's c2_msra_fill)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def xavier_fill(layer: nn.Conv2d | nn.Linear) -> None:
    """Kaiming-uniform with a=1 weights and zero bias (detectron2's c2_xavier_fill)."""
    nn.init.kaiming_uniform_(layer.weight, a=1)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
