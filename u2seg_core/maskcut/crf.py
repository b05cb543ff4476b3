"""CutLER's dense-CRF refinement of a mask (`maskcut/crf.py`), two implementations.

Both: the unary is -log softmax([1 - m, m]) (a hard mask becomes 0.27 / 0.73), then `iterations` of
mean-field with a Potts Gaussian term (positions / gaussian_sxy, weight gaussian_compat) and a Potts
bilateral term (positions / bilateral_sxy, RGB / bilateral_srgb, weight bilateral_compat), both
symmetric-normalised; the result is the argmax label (ties -> background).

* `crf_reference`: pydensecrf on the CPU, one mask at a time (the reference).
* `crf_torch`: the same mean-field, batched over images and masks on any device, with the
  permutohedral lattice rebuilt in torch (`permutohedral.py`). With two labels only the foreground
  channel is filtered: K(Q_bg) = K(1) - K(Q_fg).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import CRFConfig
from .permutohedral import PermutohedralLattice

PROBABILITY_FLOOR = 1e-5  # pydensecrf.utils.unary_from_softmax clip


def _unary(masks: np.ndarray) -> np.ndarray:
    """(..., ) bool masks -> (2, ...) float32 unary energies -log softmax([1 - m, m])."""
    logits = np.stack([1.0 - masks, masks.astype(np.float64)])
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    return -np.log(np.clip(probs, PROBABILITY_FLOOR, 1.0)).astype(np.float32)


def crf_reference(rgb: np.ndarray, mask: np.ndarray, params: CRFConfig = CRFConfig()) -> np.ndarray:
    """pydensecrf refinement: rgb (H, W, 3) uint8, mask (H, W) bool -> (H, W) bool."""
    import pydensecrf.densecrf as dcrf

    height, width = mask.shape
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(_unary(mask).reshape(2, -1)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(rgb, dtype=np.uint8),
        compat=params.bilateral_compat,
    )
    q = np.asarray(crf.inference(params.iterations)).reshape(2, height, width)
    return q[1] > q[0]


class NormalisedKernel:
    """A symmetric-normalised lattice filter: x -> n * K(n * x) with n = 1 / sqrt(K(1))."""

    def __init__(self, features: Tensor, groups: Tensor):
        self.lattice = PermutohedralLattice(features, groups)
        ones = torch.ones(features.shape[0], 1, device=features.device)
        self.norm = (self.lattice.filter(ones) + 1e-20).rsqrt()
        self.of_ones = self.apply(ones)

    def apply(self, values: Tensor) -> Tensor:
        return self.norm * self.lattice.filter(self.norm * values)


@torch.no_grad()
def crf_torch(rgb: Tensor, masks: Tensor, params: CRFConfig = CRFConfig()) -> Tensor:
    """Batched mean-field dense CRF: rgb (B, 3, H, W) uint8, masks (B, R, H, W) bool -> (B, R, H, W) bool.

    All masks of an image share its lattices; the images of the batch share one lattice per kernel.
    """
    batch, n_masks, height, width = masks.shape
    device = masks.device
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    xy = torch.stack([cols.flatten(), rows.flatten()], dim=1).repeat(batch, 1)  # (B*H*W, 2)
    colour = rgb.to(device).permute(0, 2, 3, 1).reshape(-1, 3).float()
    groups = torch.arange(batch, device=device).repeat_interleave(height * width)
    gaussian = NormalisedKernel(xy / params.gaussian_sxy, groups)
    bilateral = NormalisedKernel(
        torch.cat([xy / params.bilateral_sxy, colour / params.bilateral_srgb], dim=1), groups
    )

    energies = _unary(np.array([False, True]))  # (2 labels, mask value 0 / 1), as pydensecrf gets them
    gaps = torch.from_numpy(energies[0] - energies[1]).to(device)
    unary_gap = gaps[masks.permute(0, 2, 3, 1).reshape(-1, n_masks).long()]  # (P, R): fg logit - bg logit
    q_fg = torch.sigmoid(unary_gap)
    for _ in range(params.iterations):
        gap = unary_gap.clone()
        for kernel, weight in ((gaussian, params.gaussian_compat), (bilateral, params.bilateral_compat)):
            gap += weight * (2.0 * kernel.apply(q_fg) - kernel.of_ones)
        q_fg = torch.sigmoid(gap)
    return (gap > 0).reshape(batch, height, width, n_masks).permute(0, 3, 1, 2)
