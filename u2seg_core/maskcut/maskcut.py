"""MaskCut's N-round procedure (CutLER `maskcut_forward`), batched over images.

Round r (0-based) on the patch graph of the keys, with the patches of earlier masks zeroed:
solve NCut, bipartition, keep the seed's component. From round 1 on, the new mask is dropped when
its IoU with the previous round's mask is > 0.5 or it covers <= 1% of the patches; a dropped mask
does not grow the zeroed set. The masks returned are disjoint: each loses the patches of all earlier
masks. A round whose affinity is constant (every entry equal: no cut is better than another, e.g. a
uniform image or an all-zero feature map) gives no mask; the reference would return an arbitrary one.

After a dropped round the graph is unchanged, so the reference solves the same problem again and
gets the same component back; `maskcut_batch` re-uses that component instead of solving again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import torch
from torch import Tensor

from ..config import KrylovConfig, MaskCutConfig
from .affinity import PatchGraph, cosine_edges
from .bipartition import TIE_TOL, choose_foreground, seed_component
from .solvers import Method, dense_fiedler, solve

MIN_AREA_FRACTION: float = MaskCutConfig.model_fields["min_area_fraction"].default  # CutLER's values
MAX_PREVIOUS_IOU: float = MaskCutConfig.model_fields["max_previous_iou"].default


@dataclass
class MaskCutResult:
    """masks (B, R, h, w) bool disjoint masks of the R rounds (empty = no mask / dropped);
    scores (B, R) float64 mask scores (`ncut_score` of the round's component, 0 for empty masks);
    bipartition (B, h, w) bool the round-0 foreground side (before keeping the seed's component);
    degenerate (B,) bool images whose round-0 affinity was constant; dense_solves: fast-solver fallbacks."""

    masks: Tensor
    scores: Tensor
    bipartition: Tensor
    degenerate: Tensor
    dense_solves: int


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """(B, ...) bool masks -> (B,) IoU, 0 where both are empty (TokenCut's IoU gives NaN there, which
    compares as neither > 0.5 nor < 0.5)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


def ncut_score(graph: PatchGraph, masks: Tensor) -> Tensor:
    """(B,) score = 1 - NCut(S, rest) / 2 in [0, 1] of masks (B, N) bool on the round's graph.

    NCut(S, T) = cut(S, T) / vol(S) + cut(S, T) / vol(T), the objective the eigenvector relaxes;
    1 means S is (almost) disconnected from the rest. Empty or full masks score 0.
    """
    x = masks.double().unsqueeze(-1)
    cut = (x * graph.matmul(1.0 - x)).sum(dim=(1, 2))
    degrees = graph.degrees(torch.float64)
    vol_s = (degrees * masks).sum(1)
    vol_t = (degrees * ~masks).sum(1)
    valid = (vol_s > 0) & (vol_t > 0)
    ncut = cut / vol_s.clamp_min(1e-30) + cut / vol_t.clamp_min(1e-30)
    return torch.where(valid, (1.0 - 0.5 * ncut).clamp(0.0, 1.0), torch.zeros_like(ncut))


@torch.no_grad()
def maskcut_batch(
    keys: Tensor,
    tau: float = 0.15,
    eps: float = 1e-5,
    n_masks: int = 3,
    solver: Method = "fast",
    settings: KrylovConfig = KrylovConfig(),
    min_area_fraction: float = MIN_AREA_FRACTION,
    max_previous_iou: float = MAX_PREVIOUS_IOU,
) -> MaskCutResult:
    """keys (B, C, h, w) -> MaskCutResult with masks (B, n_masks, h, w) on the keys' device."""
    batch, _, h, w = keys.shape
    n, device = h * w, keys.device
    masks = torch.zeros(batch, n_masks, n, dtype=torch.bool, device=device)
    scores = torch.zeros(batch, n_masks, dtype=torch.float64, device=device)
    bipartition = torch.zeros(batch, n, dtype=torch.bool, device=device)
    if n < 3:
        degenerate = torch.ones(batch, dtype=torch.bool, device=device)
        return MaskCutResult(masks.view(batch, n_masks, h, w), scores, bipartition.view(batch, h, w), degenerate, 0)

    edges = cosine_edges(keys, tau)
    active = torch.ones(batch, n, dtype=torch.bool, device=device)
    previous = torch.zeros(batch, n, dtype=torch.bool, device=device)  # last round's kept mask
    component = torch.zeros(batch, n, dtype=torch.bool, device=device)  # last round's seed component
    repeat = torch.zeros(batch, dtype=torch.bool, device=device)  # last round dropped: same graph now
    degenerate = torch.zeros(batch, dtype=torch.bool, device=device)
    dense_solves = torch.zeros((), dtype=torch.int64, device=device)
    for round_index in range(n_masks):
        graph = PatchGraph(edges, active, eps, zero_is_edge=0.0 > tau)
        constant = graph.is_constant()
        if round_index == 0:
            degenerate = constant.clone()
        todo = ~constant & ~repeat
        if bool(todo.any()):
            fiedler = solve(graph.select(todo), solver, settings)
            if solver == "fast":
                dense_solves += fiedler.dense.sum()
            foreground, seed = choose_foreground(fiedler.vectors, (h, w))
            solved = seed_component(foreground.view(-1, h, w), seed).view(-1, n)
            if round_index == 0:
                bipartition[todo] = foreground
            component[todo] = solved
        component = component & ~constant.unsqueeze(1)
        if round_index >= 1:
            small = component.sum(1).double() / n <= min_area_fraction
            overlap = mask_iou(previous, component) > max_previous_iou
            dropped = small | overlap
        else:
            dropped = torch.zeros(batch, dtype=torch.bool, device=device)
        kept = component & ~dropped.unsqueeze(1)
        masks[:, round_index] = kept & active
        visible = masks[:, round_index].any(1)
        scores[:, round_index] = torch.where(visible, ncut_score(graph, kept), torch.zeros_like(scores[:, 0]))
        active = active & ~kept
        repeat = dropped & component.any(1)
        previous = kept
    masks = masks.view(batch, n_masks, h, w)
    return MaskCutResult(masks, scores, bipartition.view(batch, h, w), degenerate, int(dense_solves))


def maskcut_reference(keys: np.ndarray, tau: float = 0.15, eps: float = 1e-5, n_masks: int = 3) -> np.ndarray:
    """CutLER's procedure for one image, literally, with the dense solver: keys (C, h, w) -> (n_masks, h, w) bool.

    Follows `maskcut_forward` step by step (features zeroed and the affinity rebuilt every round, the
    same problem re-solved after a dropped round); the only additions are the eigenvector's sign
    orientation and the tie rule of the argmaxes (bipartition.py), and the constant-affinity rule.
    """
    c, h, w = keys.shape
    feats = keys.reshape(c, h * w).astype(np.float32)
    painting = np.zeros(h * w, dtype=bool)
    current = np.zeros(h * w, dtype=bool)
    finals: list[np.ndarray] = []
    for round_index in range(n_masks):
        painting = painting | current
        feats = feats * (~painting)[None, :]
        unit = feats / np.maximum(np.linalg.norm(feats, axis=0, keepdims=True), 1e-12)
        affinity = np.where(unit.T @ unit > tau, 1.0, eps)
        if np.all(affinity == affinity.flat[0]):
            mask = np.zeros(h * w, dtype=bool)
        else:
            y, _ = dense_fiedler(affinity)
            if np.sum(y[[0, w - 1, (h - 1) * w, h * w - 1]] > np.sum(y) / len(y)) <= 1:
                y = -y  # sign orientation (see bipartition.py)
            bipartition = y > np.sum(y) / len(y)
            scale = np.abs(y).max()
            seed = int(np.argmax(np.abs(y) >= scale - TIE_TOL * scale))
            corners = bipartition.reshape(h, w)[[0, 0, -1, -1], [0, -1, 0, -1]].sum()
            if corners >= 3 or not bipartition[seed]:
                y, bipartition = -y, ~bipartition
            seed = int(np.argmax(y >= y.max() - TIE_TOL * scale))
            labels, _ = scipy.ndimage.label(bipartition.reshape(h, w))
            mask = (labels == labels.flat[seed]).reshape(-1)
        if round_index >= 1:
            union = np.sum(current | mask)
            iou = np.sum(current & mask) / union if union else np.nan
            if iou > MAX_PREVIOUS_IOU or mask.mean() <= MIN_AREA_FRACTION:
                mask = np.zeros(h * w, dtype=bool)
        current = mask
        earlier = np.any(finals, axis=0) if finals else np.zeros(h * w, dtype=bool)
        finals.append(mask & ~earlier)
    return np.stack(finals).reshape(n_masks, h, w)
