"""What every backbone returns, and the base class every backbone implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

ALL_OUTPUTS: frozenset[str] = frozenset({"keys", "tokens", "cls"})


@dataclass
class BackboneOutput:
    """Per-patch and per-image features of a batch (float32, on the backbone's device).

    keys:   (B, C, h, w) last block's attention keys, all heads concatenated, CLS dropped (MaskCut).
    tokens: (B, C, h, w) final LayerNorm-ed patch tokens, CLS dropped (STEGO).
    cls:    (B, C_cls) final normed CLS token (C_cls = C for ViTs; see `Backbone.cls_dim`).
    A field is None when it was not requested.
    """

    keys: Tensor | None = None
    tokens: Tensor | None = None
    cls: Tensor | None = None


class Backbone(torch.nn.Module, ABC):
    """A frozen featurizer: uint8 RGB pixels in, `BackboneOutput` out.

    Attributes: `arch`, `patch_size` (token grid stride), `embed_dim` (C of keys/tokens),
    `cls_dim` (C_cls of `cls`), `device`.
    """

    arch: str
    patch_size: int
    embed_dim: int
    cls_dim: int
    device: torch.device

    @abstractmethod
    def forward(self, pixels: Tensor, outputs: frozenset[str] = ALL_OUTPUTS) -> BackboneOutput:
        """pixels: (B, 3, H, W) uint8 RGB or float in [0, 1]; H, W multiples of `patch_size`."""

    def to_unit_float(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 or [0, 1] float -> float32 in [0, 1] on `self.device` (validated)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"{self.arch}: expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        height, width = pixels.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{self.arch}: input {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize to a multiple first"
            )
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            return pixels.float().div_(255.0)
        return pixels.float()

    @staticmethod
    def check_outputs(outputs: frozenset[str]) -> None:
        unknown = set(outputs) - ALL_OUTPUTS
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {sorted(ALL_OUTPUTS)}, got {sorted(outputs)}")
