"""Outputs at the requested (original image) resolution (detectron2 modeling/postprocessing.py, layers/mask_ops.py).

`detector_postprocess`: scale boxes by (W / w, H / h), clip to (H, W), drop empty boxes, paste masks.
`paste_masks_in_image`: each M x M probability map is bilinearly sampled (`grid_sample`, align_corners False,
zero padding) at the centres of the image pixels, in box-normalised coordinates, and thresholded (>= 0.5).
As detectron2 on CPU (where it pastes one box at a time, `skip_empty=True`), only pixels inside
[floor(x0) - 1, ceil(x1) + 1) x [floor(y0) - 1, ceil(y1) + 1) of each box can be set; we compute the same
samples (same float32 arithmetic per pixel) batched over boxes, chunked to a memory budget, on every device.
`sem_seg_postprocess`: crop the padding, bilinear resize to (H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .structures import Detections, clip_boxes, nonempty_boxes

PASTE_BYTES_BUDGET = 256 * 1024**2
BYTES_PER_SAMPLE = 16  # grid (8) + sampled value (4) + threshold mask and slack


def paste_region(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N,4) int64 [x0, y0, x1, y1) pixel region each box may paste into (detectron2's CPU `skip_empty`)."""
    x0 = torch.clamp(boxes[:, 0].floor() - 1, min=0)
    y0 = torch.clamp(boxes[:, 1].floor() - 1, min=0)
    x1 = torch.clamp(boxes[:, 2].ceil() + 1, max=width)
    y1 = torch.clamp(boxes[:, 3].ceil() + 1, max=height)
    return torch.stack((x0, y0, x1, y1), dim=1).to(torch.int32).to(torch.int64)


def paste_masks_in_image(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Masks (N,M,M) in [0,1] pasted into boxes (N,4) of an (H,W) image -> (N,H,W) bool.

    Boxes are processed in chunks of similar region size; each box samples a (Hc, Wc) window starting at its
    own region corner (Hc, Wc = the chunk's largest region); the part inside its region is copied out.
    """
    height, width = image_size
    device = masks.device
    out = torch.zeros((len(masks), height, width), dtype=torch.bool, device=device)
    if len(masks) == 0:
        return out
    boxes = boxes.to(device).float()
    region = paste_region(boxes, height, width)
    sizes = (region[:, 2:] - region[:, :2]).clamp(min=0)
    order = torch.argsort(sizes[:, 0] * sizes[:, 1], descending=True)
    region_host, order_host = region.tolist(), order.tolist()  # one host sync: chunk layout and copy targets
    start = 0
    while start < len(order_host):
        n, win_h, win_w = 0, 1, 1
        for i in order_host[start:]:  # grow the chunk while its (n, win_h, win_w) window fits the budget
            rx0, ry0, rx1, ry1 = region_host[i]
            h, w = max(win_h, ry1 - ry0), max(win_w, rx1 - rx0)
            if n and (n + 1) * h * w * BYTES_PER_SAMPLE > PASTE_BYTES_BUDGET:
                break
            n, win_h, win_w = n + 1, h, w
        chunk = order_host[start : start + n]
        idx = order[start : start + n]
        start += n
        x0, y0, x1, y1 = boxes[idx].split(1, dim=1)
        gx = ((region[idx, 0:1] + torch.arange(win_w, device=device)).to(torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = ((region[idx, 1:2] + torch.arange(win_h, device=device)).to(torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        k = len(chunk)
        grid = torch.stack([gx[:, None, :].expand(k, win_h, win_w), gy[:, :, None].expand(k, win_h, win_w)], dim=3)
        sampled = F.grid_sample(masks[idx, None].float(), grid, align_corners=False)[:, 0] >= threshold
        for j, i in enumerate(chunk):  # copies only: each box's region of its own plane
            bx0, by0, bx1, by1 = region_host[i]
            if bx1 > bx0 and by1 > by0:
                out[i, by0:by1, bx0:bx1] = sampled[j, : by1 - by0, : bx1 - bx0]
    return out


def detector_postprocess(
    detections: Detections, height: int, width: int, mask_threshold: float = 0.5
) -> Detections:
    """Detections of the resized input rescaled to (height, width); masks become (N,H,W) bool."""
    scale_x = width / detections.image_size[1]
    scale_y = height / detections.image_size[0]
    boxes = detections.pred_boxes.clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = clip_boxes(boxes, (height, width))
    keep = nonempty_boxes(boxes)
    result = Detections(
        pred_boxes=boxes, scores=detections.scores, pred_classes=detections.pred_classes,
        image_size=(height, width), pred_masks=detections.pred_masks,
    ).select(keep)
    if result.pred_masks is not None:
        result.pred_masks = paste_masks_in_image(result.pred_masks[:, 0], result.pred_boxes, (height, width), mask_threshold)
    return result


def sem_seg_postprocess(logits: torch.Tensor, image_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """(C,Hp,Wp) logits of a padded input of true size `image_size` -> (C,height,width)."""
    cropped = logits[:, : image_size[0], : image_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False)[0]
