"""STEGO's contrastive correspondence loss.

For an anchor image and a partner image, features f and codes s are read at S x S random points of
each (bilinear `grid_sample`, align_corners=True, border padding). With f^ and s^ L2-normalised along
channels, the feature correlation F[n,h,w,i,j] = <f^1[n,:,h,w], f^2[n,:,i,j]> (no gradient; with
`pointwise`, centred over the partner points per anchor point and shifted back to its global mean) and
the code correlation S likewise. The per-pair loss is -clamp(S, min=0) * (F - b): pairs whose features
agree more than the shift b are pulled together, the others pushed apart. Three partners, each with
its own shift and weight: the image itself (self, same points), a KNN neighbour (knn) and
`neg_samples` random other images of the batch (random).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import StegoLossConfig

NORM_EPS = 1e-10


@dataclass
class CorrespondenceLoss:
    """The weighted total and the unweighted mean of each term (scalars)."""

    total: Tensor
    self_term: Tensor
    knn_term: Tensor
    random_term: Tensor


@dataclass
class SamplingDraw:
    """The random choices of one loss evaluation (pass them explicitly to make it deterministic).

    coords_anchor, coords_partner: (B, S, S, 2) grid_sample coordinates (x, y) in [-1, 1].
    negative_perms: (neg_samples, B) batch indices of the random partners (no image is its own partner).
    """

    coords_anchor: Tensor
    coords_partner: Tensor
    negative_perms: Tensor


def super_perm(size: int, generator: torch.Generator | None = None) -> Tensor:
    """A random index map of `size` with every fixed point moved to the next index (duplicates possible)."""
    perm = torch.randperm(size, generator=generator)
    perm[perm == torch.arange(size)] += 1
    return perm % size


def draw_sampling(batch: int, cfg: StegoLossConfig, generator: torch.Generator | None = None) -> SamplingDraw:
    """Uniform sample points for anchor and partner, and `neg_samples` super-permutations (on the CPU)."""
    shape = (batch, cfg.feature_samples, cfg.feature_samples, 2)
    return SamplingDraw(
        coords_anchor=torch.rand(shape, generator=generator) * 2 - 1,
        coords_partner=torch.rand(shape, generator=generator) * 2 - 1,
        negative_perms=torch.stack([super_perm(batch, generator) for _ in range(cfg.neg_samples)]),
    )


def sample_points(maps: Tensor, coords: Tensor) -> Tensor:
    """maps (B, C, h, w) read at coords (B, S, S, 2) -> (B, C, S, S)."""
    return F.grid_sample(maps, coords.to(maps.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Cosine correlation of every point pair: (B, C, S, S) x (B, C, S, S) -> (B, S, S, S, S)."""
    return torch.einsum(
        "nchw,ncij->nhwij", F.normalize(a, dim=1, eps=NORM_EPS), F.normalize(b, dim=1, eps=NORM_EPS)
    )


def pair_loss(
    feats: Tensor, feats_partner: Tensor, codes: Tensor, codes_partner: Tensor, shift: float, cfg: StegoLossConfig
) -> Tensor:
    """Per-pair loss (B, S, S, S, S) between sampled anchor and partner points."""
    with torch.no_grad():
        feature_corr = correlation(feats, feats_partner)
        if cfg.pointwise:
            global_mean = feature_corr.mean()
            feature_corr = feature_corr - feature_corr.mean(dim=(3, 4), keepdim=True)
            feature_corr = feature_corr - feature_corr.mean() + global_mean
    code_corr = correlation(codes, codes_partner)
    min_value = 0.0 if cfg.zero_clamp else None
    max_value = 0.8 if cfg.stabilize else None
    if min_value is not None or max_value is not None:
        code_corr = code_corr.clamp(min=min_value, max=max_value)
    return -code_corr * (feature_corr - shift)


def correspondence_loss(
    feats: Tensor,
    feats_pos: Tensor,
    codes: Tensor,
    codes_pos: Tensor,
    cfg: StegoLossConfig,
    draw: SamplingDraw,
) -> CorrespondenceLoss:
    """STEGO loss of a batch: feats / feats_pos (B, C, h, w) frozen features of the anchors and their KNN
    positives, codes / codes_pos (B, dim, h, w) the head's codes of the same images."""
    device = feats.device
    coords1 = draw.coords_anchor.to(device)
    coords2 = draw.coords_partner.to(device)
    f1 = sample_points(feats, coords1)
    c1 = sample_points(codes, coords1)
    self_term = pair_loss(f1, f1, c1, c1, cfg.pos_intra_shift, cfg).mean()
    knn_term = pair_loss(
        f1, sample_points(feats_pos, coords2), c1, sample_points(codes_pos, coords2), cfg.pos_inter_shift, cfg
    ).mean()
    random_terms = []
    for perm in draw.negative_perms.to(device):
        f_neg = sample_points(feats[perm], coords2)
        c_neg = sample_points(codes[perm], coords2)
        random_terms.append(pair_loss(f1, f_neg, c1, c_neg, cfg.neg_inter_shift, cfg))
    random_term = torch.cat(random_terms, dim=0).mean()
    total = (
        cfg.pos_inter_weight * knn_term + cfg.pos_intra_weight * self_term + cfg.neg_inter_weight * random_term
    )
    return CorrespondenceLoss(total=total, self_term=self_term, knn_term=knn_term, random_term=random_term)
