"""From an NCut eigenvector to one object mask (CutLER `maskcut_forward`, TokenCut `detect_box`).

0. orient y so that at least as many grid corners lie above its mean as below (see below);
1. bipartition = y > mean(y);
2. reverse it (and y) if at least 3 of the 4 grid corners are in it, else if the patch with the
   largest |y| is not in it;
3. seed = argmax of the (possibly negated) y (ties: see below);
4. the mask is the 4-connected component of the bipartition that contains the seed.

Step 0 is our addition. An eigenvector's sign is arbitrary, and CutLER's rule is not sign-invariant:
when one side holds 3 or 4 corners and also the patch with the largest |y|, the side chosen depends on
the sign LAPACK happened to return (one sign triggers the corner rule, the other the peak rule). This
is one cause of the solver-dependent masks of CutLER issue #71. Orienting y first makes the corner rule
win whenever a side holds >= 3 corners (it is checked first in the reference), for every solver; in all
other cases steps 1-4 give the reference's mask for either sign.

Ties: patches with identical neighbourhoods have identical eigenvector entries, so the peak and the
seed are often tied; LAPACK then picks whichever rounding noise favours, and the chosen component
can change. Both argmaxes here treat entries within `TIE_TOL` (relative to max |y|) of the maximum
as equal and take the first in row-major order (numpy's rule for exact ties), for every solver.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .components import geodesic_fill

TIE_TOL = 1e-6


def first_argmax(values: Tensor, scale: Tensor) -> Tensor:
    """(B, N) -> (B,) index of the first entry within TIE_TOL * scale (B, 1) of each row's maximum."""
    top = values.amax(dim=1, keepdim=True)
    return (values >= top - TIE_TOL * scale).to(torch.uint8).argmax(dim=1)


def choose_foreground(vectors: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """vectors (B, N) eigenvectors on an h x w grid -> (foreground (B, N) bool, seed (B,) int64)."""
    h, w = grid
    corners = torch.tensor([0, w - 1, (h - 1) * w, h * w - 1], device=vectors.device)
    mean = vectors.mean(dim=1, keepdim=True)
    vectors = torch.where((vectors[:, corners] > mean).sum(dim=1, keepdim=True) <= 1, -vectors, vectors)
    foreground = vectors > vectors.mean(dim=1, keepdim=True)
    scale = vectors.abs().amax(dim=1, keepdim=True)
    peak = first_argmax(vectors.abs(), scale).unsqueeze(1)
    n_corners = foreground[:, corners].sum(dim=1)
    reverse = (n_corners >= 3) | ~foreground.gather(1, peak).squeeze(1)
    foreground = torch.where(reverse.unsqueeze(1), ~foreground, foreground)
    seed = first_argmax(torch.where(reverse.unsqueeze(1), -vectors, vectors), scale)
    return foreground, seed


def seed_component(foreground: Tensor, seed: Tensor) -> Tensor:
    """foreground (B, h, w) bool, seed (B,) flat index -> (B, h, w) bool: the seed's 4-connected component.

    Like `detect_box`, a seed outside the foreground (label 0) selects the whole background.
    """
    batch = foreground.shape[0]
    seeds = torch.zeros_like(foreground).reshape(batch, -1)
    seeds[torch.arange(batch, device=seed.device), seed] = True
    seeds = seeds.reshape(foreground.shape)
    component = geodesic_fill(seeds, foreground)
    inside = (seeds & foreground).flatten(1).any(dim=1)
    return torch.where(inside.view(-1, 1, 1), component, ~foreground)
