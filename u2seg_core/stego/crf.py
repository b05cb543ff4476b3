"""STEGO's multi-class dense CRF refinement (pydensecrf, one image at a time on the CPU)."""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from ..config import CRFConfig


def dense_crf(image: np.ndarray, log_probs: np.ndarray, params: CRFConfig) -> np.ndarray:
    """Mean-field marginals (K, H, W) float32 for an (H, W, 3) uint8 RGB image and (K, H, W) class scores.

    As in STEGO: the scores are softmaxed into the unary, the bilateral kernel sees the image in BGR
    order, `params.iterations` mean-field steps (STEGO: 10; gaussian sxy 1 compat 3; bilateral sxy 67,
    srgb 3, compat 4 — `StegoConfig.crf_params`).
    """
    n_classes, height, width = log_probs.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"CRF image must be uint8 ({height}, {width}, 3), got {image.dtype} {image.shape}")
    scores = log_probs.astype(np.float32)
    probs = np.exp(scores - scores.max(axis=0, keepdims=True))
    probs /= probs.sum(axis=0, keepdims=True)
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
