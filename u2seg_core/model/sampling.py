"""Balanced sampling of foreground and background predictions (detectron2's `subsample_labels` semantics).

Randomness comes from an explicit `torch.Generator` per image (seeded from the image's place in the global batch),
so a sample does not depend on how the batch is split over processes: one-process and DDP runs draw the same.
"""

from __future__ import annotations

import torch
from torch import Tensor


def subsample_labels(
    labels: Tensor, batch_size: int, positive_fraction: float, bg_label: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """labels: (N,) int, -1 ignored, `bg_label` background, anything else foreground.

    Draws at most `int(batch_size * positive_fraction)` foreground indices uniformly, then fills the batch with
    background ones (fewer when there are not enough). Returns (positive indices, negative indices), int64.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label)).squeeze(1)
    negative = torch.nonzero(labels == bg_label).squeeze(1)
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    device = generator.device if generator is not None else torch.device("cpu")
    perm_pos = torch.randperm(positive.numel(), generator=generator, device=device)[:num_pos].to(labels.device)
    perm_neg = torch.randperm(negative.numel(), generator=generator, device=device)[:num_neg].to(labels.device)
    return positive[perm_pos], negative[perm_neg]


def sampled_labels(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """RPN form: (N,) labels 1 / 0 / -1 -> the same with every anchor not drawn set to -1 (ignored)."""
    pos, neg = subsample_labels(labels, batch_size, positive_fraction, 0, generator)
    out = torch.full_like(labels, -1)
    out[pos] = 1
    out[neg] = 0
    return out
