"""MaskCut's patch graph (CutLER `get_affinity_matrix` / `get_masked_affinity_matrix`).

A_ij = 1 where the cosine similarity of the patch keys exceeds tau, eps everywhere else (negative
similarities included). Patches covered by an earlier mask have their keys zeroed, so their cosine
with every patch (themselves included) is 0: their whole row and column become eps (or 1 if tau < 0).

The float affinity is never materialised per round: `PatchGraph` keeps the round-0 edge matrix once
per image and applies the round's zeroing as a mask on the vectors it multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_edges(keys: Tensor, tau: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """keys (B, C, h, w) -> (B, N, N) edges in `dtype` (1 where cos(k_i, k_j) > tau else 0), N = h*w.

    The cosine is computed in float32 like the reference (normalize, then a Gram matrix); a zero key
    has cosine 0 with everything.
    """
    feats = F.normalize(keys.flatten(2).float(), p=2, dim=1)
    gram = feats.transpose(1, 2) @ feats
    return (gram > tau).to(dtype)


@dataclass
class PatchGraph:
    """The affinity of one MaskCut round for a batch of B images with N patches each.

    edges:   (B, N, N) 0/1 float, the round-0 edges (`cosine_edges`).
    active:  (B, N) bool, patches not covered by an earlier mask (their keys are not zeroed).
    eps:     weight of a non-edge.
    zero_is_edge: whether cosine 0 (a zeroed patch) counts as an edge, i.e. 0 > tau.
    """

    edges: Tensor
    active: Tensor
    eps: float
    zero_is_edge: bool

    @property
    def n(self) -> int:
        return self.edges.shape[-1]

    @property
    def batch(self) -> int:
        return self.edges.shape[0]

    def select(self, rows: Tensor) -> "PatchGraph":
        """The graphs of the images `rows` ((B,) bool or int64 indices); no copy when all are kept."""
        if rows.dtype == torch.bool and bool(rows.all()):
            return self
        return PatchGraph(self.edges[rows], self.active[rows], self.eps, self.zero_is_edge)

    def edge_matmul(self, x: Tensor) -> Tensor:
        """E @ x for the round's 0/1 edge matrix E: x (B, N, k) -> (B, N, k) (in the edges' dtype)."""
        a = self.active.to(x.dtype).unsqueeze(-1)
        out = a * torch.bmm(self.edges.to(x.dtype), a * x)
        if self.zero_is_edge:
            out = out + x.sum(1, keepdim=True) - a * (a * x).sum(1, keepdim=True)
        return out

    def matmul(self, x: Tensor) -> Tensor:
        """A @ x with A = eps + (1 - eps) E: x (B, N, k) -> (B, N, k)."""
        return self.eps * x.sum(1, keepdim=True) + (1.0 - self.eps) * self.edge_matmul(x)

    def degrees(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """(B, N) row sums of A, in `dtype` (exact: edge counts are integers)."""
        return self.eps * self.n + (1.0 - self.eps) * self.edge_counts().to(dtype)

    def edge_counts(self) -> Tensor:
        """(B, N) number of edges of each patch in this round (exact integers in the edges' dtype)."""
        ones = torch.ones(self.batch, self.n, 1, dtype=self.edges.dtype, device=self.edges.device)
        return self.edge_matmul(ones).squeeze(-1)

    def is_constant(self) -> Tensor:
        """(B,) bool: every entry of A is the same (no cut is preferred over another: degenerate)."""
        total = self.edge_counts().double().sum(1)
        return (total == 0) | (total == float(self.n) ** 2)

    def dense(self, index: int) -> np.ndarray:
        """The round's (N, N) float64 affinity of image `index`, built literally (reference solvers)."""
        edges = self.edges[index].cpu().numpy() > 0.5
        active = self.active[index].cpu().numpy()
        both = active[:, None] & active[None, :]
        edges = np.where(both, edges, self.zero_is_edge)
        return np.where(edges, 1.0, self.eps)
