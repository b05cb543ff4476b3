"""One embedding per MaskCut mask, for the global K-means of U2Seg's instance clustering.

`cls_crop` (default, U2Seg): each instance becomes its own image, encoded by the backbone's final
CLS token. U2Seg does not release how it cuts instances out, so the recipe is fixed here:

1. take the mask's tight bounding box in the ORIGINAL image (full resolution, after the CRF);
2. set every pixel of that box outside the mask to the ImageNet mean colour (0.485, 0.456, 0.406),
   i.e. to 0 after the backbone's normalisation, so the background does not vote;
3. torchvision's Resize(R) + CenterCrop(R) with R = `embedding_resolution` (480): the short side
   becomes R (bilinear, antialiased; long side int(R * long / short)), then the centre R x R crop
   (offsets rounded like torchvision). Features are not L2-normalised (as in U2Seg).

Two implementations of the crops: `instance_crop` (one mask at a time, torch's antialiased
`interpolate`, the reference) and `batched_instance_crops` (all instances of a chunk at once on the
device: the bounding boxes are gathered into one padded tensor and the antialiased bilinear resize +
centre crop is applied as two batched matmuls with the resize's weight matrices, restricted to the
rows and columns the crop keeps). Both give the same uint8 crops up to a difference of 1 where float
rounding lands on .5 (tested); `MaskCutConfig.embedding_crops` picks one.

`pooled` (cheap): the mean of the backbone's patch tokens of the same forward pass over the mask's
patches (its patch-grid mask before the CRF).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbone import Backbone
from ..coco import mask_bbox

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)


def instance_crop(image: np.ndarray, mask: np.ndarray, resolution: int, device: torch.device) -> Tensor:
    """image (H, W, 3) uint8, mask (H, W) bool (non-empty) -> (3, resolution, resolution) uint8 crop."""
    x, y, w, h = (int(v) for v in mask_bbox(mask))
    box = torch.from_numpy(np.ascontiguousarray(image[y : y + h, x : x + w])).to(device).permute(2, 0, 1).float()
    inside = torch.from_numpy(np.ascontiguousarray(mask[y : y + h, x : x + w])).to(device)
    mean = torch.tensor(IMAGENET_MEAN_RGB, device=device).view(3, 1, 1) * 255.0
    box = torch.where(inside, box, mean)
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(resolution * long / short)
    size = (resolution, new_long) if h <= w else (new_long, resolution)
    resized = F.interpolate(box.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top = int(round((size[0] - resolution) / 2.0))
    left = int(round((size[1] - resolution) / 2.0))
    crop = resized[:, top : top + resolution, left : left + resolution]
    return crop.round().clamp(0, 255).to(torch.uint8)


def cls_crop_embeddings(
    backbone: Backbone,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    resolution: int,
    batch_size: int,
) -> Tensor:
    """CLS embeddings (M, cls_dim) float32 of M instances: images[i] (H, W, 3) uint8 with masks[i] (H, W) bool."""
    if not masks:
        return torch.zeros(0, backbone.cls_dim)
    out = []
    for start in range(0, len(masks), batch_size):
        crops = torch.stack(
            [
                instance_crop(image, mask, resolution, backbone.device)
                for image, mask in zip(images[start : start + batch_size], masks[start : start + batch_size])
            ]
        )
        out.append(backbone(crops, frozenset({"cls"})).cls.float().cpu())
    return torch.cat(out)


def pooled_embeddings(tokens: Tensor, masks: Tensor) -> Tensor:
    """tokens (B, C, h, w), masks (B, R, h, w) bool -> (B, R, C): mean token over each mask (0 if empty)."""
    weights = masks.flatten(2).to(tokens.dtype)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.einsum("brn,bcn->brc", weights, tokens.flatten(2))


def resize_weights(length: Tensor, new_size: Tensor, offset: Tensor, resolution: int, span: int) -> Tensor:
    """Rows `offset .. offset + resolution` of torch's antialiased bilinear resize matrix, per instance.

    length, new_size, offset: (M,) int64 source length, resized length, first output index kept.
    Returns (M, resolution, span) float32: out[o] = sum_j w[o, j] * in[j] for source indices j < span
    (weights 0 for j >= length). Same formula as aten's `_upsample_bilinear2d_aa` (align_corners False):
    scale = length / new_size, support = max(scale, 1), triangle filter of width support around
    centre = scale * (o + 0.5), normalised to sum 1 per output index.
    """
    scale = length.double() / new_size.double()  # (M,)
    inv_scale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    out_index = offset.view(-1, 1).double() + torch.arange(resolution, device=length.device, dtype=torch.float64)
    centre = scale.view(-1, 1) * (out_index + 0.5)  # (M, resolution)
    source = torch.arange(span, device=length.device, dtype=torch.float64).view(1, 1, -1)
    weights = (1.0 - ((source + 0.5 - centre.unsqueeze(-1)) * inv_scale.view(-1, 1, 1)).abs()).clamp_min(0.0)
    weights = weights * (source < length.view(-1, 1, 1))
    return (weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)).float()


def _crop_geometry(length_a: Tensor, length_b: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Resize(resolution) of sides (a, b): (new a, first kept index along a) of the centre crop, (M,) int64 each.

    Python's int(resolution * long / short) and round((size - resolution) / 2.0), both exact in float64
    (round half to even like Python's round).
    """
    short = torch.minimum(length_a, length_b).double()
    long = torch.maximum(length_a, length_b).double()
    new_long = torch.trunc(resolution * long / short).long()
    new_a = torch.where(length_a <= length_b, torch.full_like(length_a, resolution), new_long)
    offset = torch.round((new_a - resolution).double() / 2.0).long()
    return new_a, offset


def batched_instance_crops(images: Tensor, masks: Tensor, owner: Tensor, resolution: int) -> Tensor:
    """All instance crops of a chunk at once (the same recipe as `instance_crop`).

    images: (B, Hmax, Wmax, 3) uint8 originals (zero-padded to a common size);
    masks: (M, Hmax, Wmax) bool, non-empty, inside their image; owner: (M,) int64 image of each mask.
    Returns (M, 3, resolution, resolution) uint8.
    """
    device = masks.device
    rows_hit, cols_hit = masks.any(2), masks.any(1)  # (M, Hmax), (M, Wmax)
    y0 = rows_hit.to(torch.uint8).argmax(1)
    x0 = cols_hit.to(torch.uint8).argmax(1)
    h = rows_hit.shape[1] - rows_hit.flip(1).to(torch.uint8).argmax(1) - y0
    w = cols_hit.shape[1] - cols_hit.flip(1).to(torch.uint8).argmax(1) - x0
    span_h, span_w = int(h.max()), int(w.max())  # the chunk's one device sync
    rows = (y0.view(-1, 1) + torch.arange(span_h, device=device)).clamp_max(masks.shape[1] - 1)  # (M, span_h)
    cols = (x0.view(-1, 1) + torch.arange(span_w, device=device)).clamp_max(masks.shape[2] - 1)  # (M, span_w)
    pixels = images[owner.view(-1, 1, 1), rows.unsqueeze(2), cols.unsqueeze(1)].float()  # (M, span_h, span_w, 3)
    inside = masks[torch.arange(len(owner), device=device).view(-1, 1, 1), rows.unsqueeze(2), cols.unsqueeze(1)]
    mean = torch.tensor(IMAGENET_MEAN_RGB, device=device) * 255.0
    pixels = torch.where(inside.unsqueeze(-1), pixels, mean)
    new_h, top = _crop_geometry(h, w, resolution)
    new_w, left = _crop_geometry(w, h, resolution)
    weights_y = resize_weights(h, new_h, top, resolution, span_h)  # (M, R, span_h)
    weights_x = resize_weights(w, new_w, left, resolution, span_w)  # (M, R, span_w)
    crops = torch.einsum("mrh,mhwc,msw->mcrs", weights_y, pixels, weights_x)
    return crops.round().clamp(0, 255).to(torch.uint8)


def cls_crop_embeddings_batched(
    backbone: Backbone,
    images: list[Tensor],
    masks: list[Tensor],
    resolution: int,
    batch_size: int,
) -> Tensor:
    """CLS embeddings (M, cls_dim) float32 of all masks of a batch, crops built on the backbone's device.

    images[i]: (H_i, W_i, 3) uint8; masks[i]: (R_i, H_i, W_i) bool, non-empty masks of image i
    (R_i may be 0). Rows follow the masks in order (image by image). Crops are cut `batch_size`
    at a time and encoded by one backbone pass each.
    """
    counts = [len(m) for m in masks]
    if sum(counts) == 0:
        return torch.zeros(0, backbone.cls_dim)
    device = backbone.device
    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    padded = torch.zeros(len(images), height, width, 3, dtype=torch.uint8, device=device)
    all_masks = torch.zeros(sum(counts), height, width, dtype=torch.bool, device=device)
    start = 0
    for i, (image, mask) in enumerate(zip(images, masks)):
        padded[i, : image.shape[0], : image.shape[1]] = image.to(device, non_blocking=True)
        all_masks[start : start + counts[i], : image.shape[0], : image.shape[1]] = mask.to(device, non_blocking=True)
        start += counts[i]
    owner = torch.repeat_interleave(torch.arange(len(images), device=device), torch.tensor(counts, device=device))
    out = []
    for first in range(0, len(owner), batch_size):
        chunk = slice(first, first + batch_size)
        crops = batched_instance_crops(padded, all_masks[chunk], owner[chunk], resolution)
        out.append(backbone(crops, frozenset({"cls"})).cls.float())
    return torch.cat(out).cpu()
