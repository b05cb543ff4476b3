"""STEGO's segmentation head: a 1x1 linear branch plus a 1x1 conv-ReLU-conv branch, summed."""

from __future__ import annotations

from torch import Tensor, nn


class StegoHead(nn.Module):
    """Frozen features (B, C, h, w) -> codes (B, dim, h, w).

    Each branch sees its own channel dropout (`Dropout2d`) of the features during training. Module
    names mirror STEGO's `cluster1` (`linear.0`) and `cluster2` (`nonlinear.0`, `nonlinear.2`) so the
    released checkpoints map one to one.
    """

    def __init__(self, in_dim: int, dim: int = 70, dropout: float = 0.1):
        super().__init__()
        self.in_dim = in_dim
        self.dim = dim
        self.dropout = nn.Dropout2d(dropout)
        self.linear = nn.Sequential(nn.Conv2d(in_dim, dim, 1))
        self.nonlinear = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, dim, 1))

    def forward(self, feats: Tensor) -> Tensor:
        """feats (B, C, h, w) -> codes (B, dim, h, w)."""
        return self.linear(self.dropout(feats)) + self.nonlinear(self.dropout(feats))

    def loss_features(self, feats: Tensor) -> Tensor:
        """The features the correspondence loss compares: channel dropout applied too (STEGO `dropout: True`)."""
        return self.dropout(feats)

