"""Probes that turn codes into classes: STEGO's cluster probe (unsupervised) and its linear probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClusterProbe(nn.Module):
    """Learnable centroids (n_classes, dim) compared to codes by cosine similarity (STEGO `ClusterLookup`).

    Training is mini-batch spherical k-means by gradient descent on detached codes: each code is
    hard-assigned to its nearest centroid and the loss is minus the mean assigned similarity.
    """

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.clusters = nn.Parameter(torch.randn(n_classes, dim))

    def similarity(self, codes: Tensor) -> Tensor:
        """codes (B, dim, H, W) -> cosine similarities (B, n_classes, H, W)."""
        return torch.einsum("bchw,nc->bnhw", F.normalize(codes, dim=1), F.normalize(self.clusters, dim=1))

    def loss(self, codes: Tensor) -> Tensor:
        """Hard-assignment loss on (B, dim, H, W) codes (detached here, so the head is not trained by it)."""
        inner = self.similarity(codes.detach())
        assignment = F.one_hot(inner.argmax(dim=1), inner.shape[1]).permute(0, 3, 1, 2).to(inner.dtype)
        return -(assignment * inner).sum(dim=1).mean()

    def log_probs(self, codes: Tensor, alpha: float = 2.0) -> Tensor:
        """(B, n_classes, H, W) soft assignment log_softmax(alpha * cos) (STEGO inference, alpha = 2)."""
        return torch.log_softmax(alpha * self.similarity(codes), dim=1)


class LinearProbe(nn.Module):
    """STEGO's supervised linear probe (1x1 conv, dim -> n_classes). Only loaded from released checkpoints."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, n_classes, 1)

    def log_probs(self, codes: Tensor) -> Tensor:
        """codes (B, dim, H, W) -> (B, n_classes, H, W) log-probabilities."""
        return torch.log_softmax(self.conv(codes), dim=1)
