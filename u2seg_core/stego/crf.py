"""STEGO's multi-class dense CRF refinement, two implementations of the same mean field.

As in STEGO: the class scores are softmaxed into the unary (-log p, p clipped at 1e-5 like
`pydensecrf.utils.unary_from_softmax`), the bilateral kernel sees the image in BGR order, Potts
Gaussian (positions / gaussian_sxy, weight gaussian_compat) and bilateral (positions / bilateral_sxy,
colour / bilateral_srgb, weight bilateral_compat) terms, both symmetric-normalised; `iterations`
mean-field steps Q <- softmax(-U + sum_k w_k K_k Q). STEGO's constants: `StegoConfig.crf_params`.

* `dense_crf`: pydensecrf, one image on the CPU (the reference).
* `dense_crf_torch`: batched over images on any device, with the torch permutohedral lattice of
  `u2seg_core.maskcut` (the binary CutLER CRF uses the same filters).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import CRFConfig
from ..maskcut.crf import PROBABILITY_FLOOR, NormalisedKernel


def dense_crf(image: np.ndarray, log_probs: np.ndarray, params: CRFConfig) -> np.ndarray:
    """pydensecrf marginals (K, H, W) float32 for an (H, W, 3) uint8 RGB image and (K, H, W) class scores."""
    import pydensecrf.densecrf as dcrf  # imported here: the torch CRF (GPU) runs where pydensecrf is absent
    from pydensecrf.utils import unary_from_softmax

    n_classes, height, width = log_probs.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"CRF image must be uint8 ({height}, {width}, 3), got {image.dtype} {image.shape}")
    probs = torch.softmax(torch.from_numpy(log_probs).float(), dim=0).numpy()
    crf = dcrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image[:, :, ::-1]),
        compat=params.bilateral_compat,
    )
    marginals = crf.inference(params.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(n_classes, height, width)


@torch.no_grad()
def dense_crf_torch(images: Tensor, log_probs: Tensor, params: CRFConfig) -> Tensor:
    """Batched marginals (B, K, H, W): images (B, 3, H, W) uint8 RGB, log_probs (B, K, H, W) class scores."""
    batch, n_classes, height, width = log_probs.shape
    if images.shape != (batch, 3, height, width):
        raise ValueError(f"CRF images must be ({batch}, 3, {height}, {width}), got {tuple(images.shape)}")
    device = log_probs.device
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    xy = torch.stack([cols.flatten(), rows.flatten()], dim=1).repeat(batch, 1)  # (B*H*W, 2)
    bgr = images.to(device).flip(1).permute(0, 2, 3, 1).reshape(-1, 3).float()
    groups = torch.arange(batch, device=device).repeat_interleave(height * width)
    kernels = (
        (NormalisedKernel(xy / params.gaussian_sxy, groups), params.gaussian_compat),
        (NormalisedKernel(torch.cat([xy / params.bilateral_sxy, bgr / params.bilateral_srgb], 1), groups),
         params.bilateral_compat),
    )
    probs = torch.softmax(log_probs.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, n_classes)
    neg_unary = probs.clamp_min(PROBABILITY_FLOOR).log()
    q = torch.softmax(neg_unary, dim=1)
    for _ in range(params.iterations):
        logits = neg_unary.clone()
        for kernel, weight in kernels:
            logits += weight * kernel.apply(q)
        q = torch.softmax(logits, dim=1)
    return q.reshape(batch, height, width, n_classes).permute(0, 3, 1, 2)
