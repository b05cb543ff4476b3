"""One embedding per MaskCut mask, for the global K-means of U2Seg's instance clustering.

`cls_crop` (default, U2Seg): each instance becomes its own image, encoded by the backbone's final
CLS token. U2Seg does not release how it cuts instances out, so the recipe is fixed here:

1. take the mask's tight bounding box in the ORIGINAL image (full resolution, after the CRF);
2. set every pixel of that box outside the mask to the ImageNet mean colour (0.485, 0.456, 0.406),
   i.e. to 0 after the backbone's normalisation, so the background does not vote;
3. torchvision's Resize(R) + CenterCrop(R) with R = `embedding_resolution` (480): the short side
   becomes R (bilinear, antialiased; long side int(R * long / short)), then the centre R x R crop
   (offsets rounded like torchvision). Features are not L2-normalised (as in U2Seg).

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
