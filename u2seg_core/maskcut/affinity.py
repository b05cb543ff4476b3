"""MaskCut's patch graph (CutLER `get_affinity_matrix` / `get_masked_affinity_matrix`).

A_ij = 1 where the cosine similarity of the patch keys exceeds tau, eps everywhere else (negative
similarities included). Patches covered by an earlier mask have their keys zeroed, so their cosine
with every patch (themselves included) is 0: their whole row and column become eps (or 1 if tau < 0).

The float affinity is never materialised per round: `PatchGraph` keeps the round-0 0/1 edge matrix
once per image (float32: half the memory traffic of float64) and applies the round's zeroing as a mask
on the vectors it multiplies. Products with float64 vectors are exact to ~1e-13 (`exact_edge_product`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


GRAM_TILES = 4


def cosine_edges(keys: Tensor, tau: float) -> Tensor:
    """keys (B, C, h, w) -> (B, N, N) float32 edges (1 where cos(k_i, k_j) > tau else 0), N = h*w.

    The cosine is computed in float32 like the reference (normalize, then a Gram matrix); a zero key
    has cosine 0 with everything. Only the tiles on and above the diagonal are multiplied (the Gram
    matrix is symmetric), which saves 3/8 of the work.
    """
    feats = F.normalize(keys.flatten(2).float(), p=2, dim=1)  # (B, C, N)
    n = feats.shape[-1]
    rows = feats.transpose(1, 2)
    edges = torch.empty(feats.shape[0], n, n, device=feats.device)
    bounds = [(i * n) // GRAM_TILES for i in range(GRAM_TILES + 1)]
    for i in range(GRAM_TILES):
        lo, hi = bounds[i], bounds[i + 1]
        block = torch.bmm(rows[:, lo:hi], feats[:, :, lo:])
        block.sub_(tau).sign_().clamp_(min=0.0)  # 1 where cos > tau, else 0
        edges[:, lo:hi, lo:] = block
        edges[:, hi:, lo:hi] = block[:, :, hi - lo :].transpose(1, 2)
    return edges


PRODUCT_BITS = 36
GEMM_MANTISSA_BITS = {"highest": 24, "high": 11, "medium": 8}  # float32, TF32, bf16 inputs


def exact_edge_product(edges: Tensor, x: Tensor) -> Tensor:
    """edges (B, N, N) float32 0/1, x (B, N, k) float64 -> edges @ x in float64, relative error < 2^-36.

    x is split, per column, into integer limbs small enough that every partial sum of N of them is an
    integer below 2^24, which float32 GEMM computes exactly whatever its summation order; the limb
    products are recombined in float64. One float32 GEMM with (limbs x k) columns replaces a float64
    one: half the memory traffic over the N x N matrix, and GPU-friendly. When torch's float32 matmul
    precision lets the GEMM round its inputs to TF32 ("high") or bf16 ("medium"), the limbs are made
    small enough to stay exact.
    """
    n = edges.shape[-1]
    mantissa = GEMM_MANTISSA_BITS[torch.get_float32_matmul_precision()]
    bits = min(mantissa, 25 - math.ceil(math.log2(n + 1)))
    n_limbs = math.ceil(PRODUCT_BITS / bits)
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    rest = x / scale * 2.0 ** (bits - 1)
    limbs = []
    for _ in range(n_limbs):
        limb = torch.round(rest)
        limbs.append(limb)
        rest = (rest - limb) * 2.0**bits
    sums = torch.bmm(edges, torch.cat(limbs, dim=-1).float()).double()
    weights = 2.0 ** (-(bits - 1) - bits * torch.arange(n_limbs, dtype=torch.float64, device=x.device))
    k = x.shape[-1]
    return (sums.view(*sums.shape[:2], n_limbs, k) * weights.view(1, 1, -1, 1)).sum(2) * scale


@dataclass
class PatchGraph:
    """The affinity of one MaskCut round for a batch of B images with N patches each.

    edges:   (B, N, N) float32 0/1, the round-0 edges (`cosine_edges`).
    active:  (B, N) bool, patches not covered by an earlier mask (their keys are not zeroed).
    eps:     weight of a non-edge.
    zero_is_edge: whether cosine 0 (a zeroed patch) counts as an edge, i.e. 0 > tau.
    counts:  (B, N) edges per patch in this round, computed on first use (`edge_counts`).
    """

    edges: Tensor
    active: Tensor
    eps: float
    zero_is_edge: bool
    counts: Tensor | None = field(default=None, repr=False)

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
        counts = None if self.counts is None else self.counts[rows]
        return PatchGraph(self.edges[rows], self.active[rows], self.eps, self.zero_is_edge, counts)

    def edge_matmul(self, x: Tensor) -> Tensor:
        """E @ x for the round's 0/1 edge matrix E: x (B, N, k) float64 -> (B, N, k) float64."""
        a = self.active.to(x.dtype).unsqueeze(-1)
        out = a * exact_edge_product(self.edges, a * x)
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
        """(B, N) float64 number of edges of each patch in this round (exact integers)."""
        if self.counts is None:
            ones = torch.ones(self.batch, self.n, 1, dtype=torch.float64, device=self.edges.device)
            self.counts = self.edge_matmul(ones).squeeze(-1)
        return self.counts

    def is_constant(self) -> Tensor:
        """(B,) bool: every entry of A is the same (no cut is preferred over another: degenerate)."""
        total = self.edge_counts().sum(1)
        return (total == 0) | (total == float(self.n) ** 2)

    def dense(self, index: int) -> np.ndarray:
        """The round's (N, N) float64 affinity of image `index`, built literally (reference solvers)."""
        edges = self.edges[index].cpu().numpy() > 0.5
        active = self.active[index].cpu().numpy()
        both = active[:, None] & active[None, :]
        edges = np.where(both, edges, self.zero_is_edge)
        return np.where(edges, 1.0, self.eps)
