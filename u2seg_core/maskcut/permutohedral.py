"""Permutohedral-lattice Gaussian filtering in torch (Adams, Baek & Davis 2010), batched over images.

This is the approximate high-dimensional Gaussian filter that pydensecrf (Kraehenbuehl's densecrf)
uses for its pairwise terms, rebuilt with tensor ops so that the dense CRF runs on the GPU: every
point is lifted onto the d-dimensional permutohedral lattice, splatted onto the d+1 vertices of its
enclosing simplex with barycentric weights, blurred with a [1/2, 1, 1/2] kernel along each of the d+1
lattice directions, and sliced back. Lattice vertices live in a sorted table of integer keys (the
reference uses a hash table); the images of a batch get disjoint keys, so one lattice serves them all.
The constants (elevation scale, rounding, rank fix-up, alpha) follow the reference so the two filters
agree up to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round goes to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


class PermutohedralLattice:
    """A lattice built once for P points with d-dimensional features; `filter` applies the blur.

    features: (P, d) float32 positions, already divided by the kernel's standard deviations.
    groups:   (P,) int64 image index of each point (points of different groups never interact).
    """

    def __init__(self, features: Tensor, groups: Tensor):
        points, d = features.shape
        device = features.device
        self.d = d
        self.points = points

        inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
        i = torch.arange(1, d + 1, device=device, dtype=torch.float32)
        scale = inv_std / torch.sqrt(i * (i + 1))
        scaled = features.float() * scale  # cf_j for j = 0..d-1
        # elevated[j] = sum_{i >= j} cf_i - j * cf_{j-1} (elevated[0] = sum of all cf)
        suffix = torch.flip(torch.cumsum(torch.flip(scaled, [1]), 1), [1])  # suffix[j] = sum_{i >= j} cf_i
        elevated = torch.zeros(points, d + 1, device=device, dtype=torch.float32)
        elevated[:, 0] = suffix[:, 0]
        j = torch.arange(1, d + 1, device=device, dtype=torch.float32)
        tail = torch.cat([suffix[:, 1:], torch.zeros(points, 1, device=device)], dim=1)
        elevated[:, 1:] = tail - j * scaled

        down = _round_half_away(elevated / (d + 1))
        rem0 = down.long() * (d + 1)
        total = down.sum(dim=1).long()
        # rank of each coordinate when sorting elevated - rem0 in decreasing order, ties by index
        # (the reference's pairwise count)
        order = torch.sort(elevated - rem0, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(d + 1, device=device).expand(points, -1))
        rank = rank + total.unsqueeze(1)
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
        rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))

        v = (elevated - rem0) / (d + 1)
        bary = torch.zeros(points, d + 2, device=device, dtype=torch.float32)
        bary.scatter_add_(1, d - rank, v)
        bary.scatter_add_(1, d - rank + 1, -v)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.weights = bary[:, : d + 1].contiguous()  # (P, d+1)

        # Vertex r of the simplex has key_i = rem0_i + r - (d+1) [rank_i > d - r] (i < d). Keys are
        # stored as mixed-radix int64 codes (image index as the top digit), which are linear in the
        # key: the code of a vertex is the code of rem0 plus an offset, and so are its neighbours'.
        corner = rem0[:, :d]
        margin = 2 * (d + 1)
        low_key = corner.amin(dim=0) - margin
        extent = corner.amax(dim=0) + margin - low_key + 1
        n_groups = int(groups.max()) + 1 if points else 1
        radix = torch.cat([extent, torch.tensor([n_groups], device=device)])
        if float(torch.log2(radix.double()).sum()) > 62:
            raise ValueError("permutohedral lattice keys do not fit in 64 bits; use fewer or smaller images")
        strides = torch.ones(d + 1, dtype=torch.int64, device=device)
        for k in range(d - 1, -1, -1):
            strides[k] = strides[k + 1] * radix[k + 1]
        base = ((corner - low_key) * strides[:d]).sum(1) + groups.long() * strides[d]
        # by_rank[p, k] = sum of stride_i over coordinates i < d with rank_i >= k (k = 0..d+1)
        by_rank = torch.zeros(points, d + 2, dtype=torch.int64, device=device)
        by_rank.scatter_add_(1, rank[:, :d], strides[:d].expand(points, -1))
        by_rank = torch.flip(torch.cumsum(torch.flip(by_rank, [1]), 1), [1])
        r = torch.arange(d + 1, device=device)
        total_stride = int(strides[:d].sum())
        codes = base.unsqueeze(1) + r * total_stride - (d + 1) * by_rank[:, d - r + 1]
        self.table, inverse = torch.unique(codes.flatten(), sorted=True, return_inverse=True)
        self.offsets = inverse.view(points, d + 1) + 1  # slot 0 is the empty "missing" vertex

        # Neighbours along direction j: n1 = key - 1 (all) with key_j + d instead; n2 = key + 1 with key_j - d.
        self.neighbors = []  # per lattice direction j: (n1, n2) slot indices, 0 when absent
        for j in range(d + 1):
            delta = -total_stride + ((d + 1) * int(strides[j]) if j < d else 0)
            self.neighbors.append((self._lookup(self.table + delta), self._lookup(self.table - delta)))
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    def _lookup(self, codes: Tensor) -> Tensor:
        pos = torch.searchsorted(self.table, codes).clamp_max(len(self.table) - 1)
        return torch.where(self.table[pos] == codes, pos + 1, torch.zeros_like(pos))

    def filter(self, values: Tensor) -> Tensor:
        """values (P, C) -> (P, C): splat, blur along the d+1 directions, slice (times alpha)."""
        channels = values.shape[1]
        slots = torch.zeros(len(self.table) + 1, channels, device=values.device, dtype=values.dtype)
        weighted = self.weights.unsqueeze(-1) * values.unsqueeze(1)  # (P, d+1, C)
        slots.index_add_(0, self.offsets.flatten(), weighted.reshape(-1, channels))
        for n1, n2 in self.neighbors:
            blurred = slots[1:] + 0.5 * (slots[n1] + slots[n2])
            slots = torch.cat([slots[:1], blurred])
        gathered = slots[self.offsets]  # (P, d+1, C)
        return self.alpha * (self.weights.unsqueeze(-1) * gathered).sum(1)
