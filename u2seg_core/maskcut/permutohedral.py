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
        scale = inv_std / torch.sqrt(torch.arange(1, d + 1, device=device, dtype=torch.float32) * torch.arange(2, d + 2, device=device, dtype=torch.float32))
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

        # vertex r of the simplex: key_i = rem0_i + canonical[r][rank_i], canonical[r][k] = r - (d+1)[k > d-r]
        r = torch.arange(d + 1, device=device).view(1, -1, 1)
        canonical = r - (d + 1) * (rank[:, :d].unsqueeze(1) > d - r).long()  # (P, d+1, d)
        keys = rem0[:, :d].unsqueeze(1) + canonical  # (P, d+1, d)

        margin = d + 1
        low_key = keys.amin(dim=(0, 1)) - margin
        extent = keys.amax(dim=(0, 1)) + margin - low_key + 1
        n_groups = int(groups.max()) + 1 if points else 1
        radix = torch.cat([extent, torch.tensor([n_groups], device=device)])
        if float(torch.log2(radix.double()).sum()) > 62:
            raise ValueError("permutohedral lattice keys do not fit in 64 bits; use fewer or smaller images")
        strides = torch.ones(d + 1, dtype=torch.int64, device=device)
        for k in range(d - 1, -1, -1):
            strides[k] = strides[k + 1] * radix[k + 1]
        self._low, self._strides = low_key, strides[:d]
        group_code = groups.long() * strides[d]

        codes = self._encode(keys) + group_code.view(-1, 1)
        self.table, inverse = torch.unique(codes.flatten(), sorted=True, return_inverse=True)
        self.offsets = inverse.view(points, d + 1) + 1  # slot 0 is the empty "missing" vertex
        n_vertices = len(self.table)

        vertex_keys = torch.empty(n_vertices, d, dtype=torch.int64, device=device)
        vertex_keys[inverse] = keys.reshape(-1, d)
        vertex_groups = torch.empty(n_vertices, dtype=torch.int64, device=device)
        vertex_groups[inverse] = group_code.repeat_interleave(d + 1)
        self.neighbors = []  # per lattice direction j: (n1, n2) slot indices, 0 when absent
        for j in range(d + 1):
            step = -torch.ones(d, dtype=torch.int64, device=device)
            if j < d:
                step[j] = d
            self.neighbors.append(
                (self._lookup(vertex_keys + step, vertex_groups), self._lookup(vertex_keys - step, vertex_groups))
            )
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    def _encode(self, keys: Tensor) -> Tensor:
        return ((keys - self._low) * self._strides).sum(-1)

    def _lookup(self, keys: Tensor, group_code: Tensor) -> Tensor:
        codes = self._encode(keys) + group_code
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
