"""MaskCut post-processing (CutLER `maskcut.py` main loop): CRF, hole filling, drop rule, original size.

For each patch-grid mask: nearest upsampling to the S x S network input, dense CRF on the S x S RGB
image, `binary_fill_holes`, drop when IoU(before CRF, after CRF) < `min_crf_iou`, then resize to the
original image size the way the reference does (PIL's default bicubic on the 0/255 mask, then
threshold at half the resized maximum). Empty masks stay empty (the reference drops them as area < 1).

`encode_async` computes a mask's COCO fields (RLE, area, bbox) on a small thread pool, so that the
CPU encoding of one batch overlaps the GPU work (embeddings, the next batch) that follows it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..coco import encode_rle, mask_bbox
from ..config import MaskCutConfig
from .components import fill_holes
from .crf import crf_reference, crf_torch
from .maskcut import mask_iou


def upsample_masks(masks: Tensor, size: int) -> Tensor:
    """(B, R, h, w) bool patch masks -> (B, R, size, size) bool (nearest, like the reference)."""
    return F.interpolate(masks.float(), size=(size, size), mode="nearest") > 0.5


def run_crf(pixels: Tensor, masks: Tensor, cfg: MaskCutConfig) -> Tensor:
    """Refine (B, R, S, S) bool masks on their (B, 3, S, S) uint8 images with `cfg.crf`.

    "auto" is the torch mean-field on CUDA and pydensecrf on the CPU, where its C++ lattice is faster
    than torch's scatter/gather.
    """
    method = cfg.crf
    if method == "auto":
        method = "torch" if masks.device.type == "cuda" else "pydensecrf"
    if method == "none":
        return masks
    if method == "torch":
        return crf_torch(pixels.to(masks.device), masks, cfg.crf_params)
    if method == "pydensecrf":
        rgb = pixels.permute(0, 2, 3, 1).cpu().numpy()
        host = masks.cpu().numpy()
        refined = np.zeros_like(host)
        for b, r in zip(*np.nonzero(host.any(axis=(2, 3)))):
            refined[b, r] = crf_reference(rgb[b], host[b, r], cfg.crf_params)
        return torch.from_numpy(refined).to(masks.device)
    raise ValueError(f"unknown crf {cfg.crf!r}; use 'auto', 'torch', 'pydensecrf' or 'none'")


def refine_masks(pixels: Tensor, masks: Tensor, cfg: MaskCutConfig) -> tuple[Tensor, Tensor]:
    """pixels (B, 3, S, S) uint8, masks (B, R, h, w) bool -> (refined (B, R, S, S) bool, crf_dropped (B, R) bool).

    crf_dropped marks non-empty masks removed by the IoU(before, after CRF) rule.
    """
    batch, n_masks = masks.shape[:2]
    size = pixels.shape[-1]
    before = upsample_masks(masks, size)
    after = run_crf(pixels, before, cfg)
    if cfg.crf != "none":
        after = fill_holes(after.reshape(-1, size, size)).reshape(batch, n_masks, size, size)
    present = before.flatten(2).any(2)
    iou = mask_iou(before.reshape(batch * n_masks, -1), after.reshape(batch * n_masks, -1)).view(batch, n_masks)
    keep = present & (iou >= cfg.min_crf_iou)
    return after & keep.view(batch, n_masks, 1, 1), present & ~keep


def resize_to_original(masks: Tensor, height: int, width: int) -> Tensor:
    """(R, S, S) bool -> (R, height, width) bool: bicubic (PIL's default filter, antialiased like PIL)
    of the 0/1 mask, thresholded at half of each mask's resized maximum."""
    if masks.shape[-2:] == (height, width):
        return masks.clone()
    if len(masks) == 0:
        return masks.new_zeros((0, height, width))
    values = F.interpolate(masks.float().unsqueeze(0), size=(height, width), mode="bicubic", antialias=True)[0]
    values = values.clamp(0.0, 1.0)
    peak = values.flatten(1).amax(1).view(-1, 1, 1)
    return (values > 0.5 * peak) & (peak > 0)


ENCODE_THREADS = 2
_ENCODER = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="maskcut-rle")


def annotation_fields(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool mask -> its COCO `segmentation` (compressed RLE), `area` and `bbox` (XYWH)."""
    return {"segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": mask_bbox(mask)}


def encode_async(mask: np.ndarray) -> Future[dict[str, Any]]:
    """`annotation_fields(mask)` on the encoder threads (the GIL is released while the GPU is awaited)."""
    return _ENCODER.submit(annotation_fields, mask)
