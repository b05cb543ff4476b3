"""Training items cut from the stored token grids (STEGO's five-crop, done on features).

STEGO cuts every image offline into 4 corner crops and a centre crop of half its height and width
and trains on each crop resized to 224 px (a 28 x 28 token grid). Here the crops are cut from the
stored token grid of each image and resized (bilinear) to `train_grid`; with features stored at
448 px (56 x 56 for patch 8) a half crop is 28 x 28, i.e. STEGO's training grid without resampling.
Every (image, crop) pair is one training item, with its own KNN neighbours.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CROP_RATIO = 0.5

Box = tuple[int, int, int, int]  # top, left, height, width (token cells)


def crop_boxes(grid_h: int, grid_w: int, crop: Literal["five", "none"]) -> list[Box]:
    """Boxes on a (grid_h, grid_w) token grid: 'five' = top-left, top-right, bottom-left, bottom-right,
    centre at half size (torchvision `five_crop` order and rounding); 'none' = the whole grid."""
    if crop == "none":
        return [(0, 0, grid_h, grid_w)]
    ch, cw = max(1, int(grid_h * CROP_RATIO)), max(1, int(grid_w * CROP_RATIO))
    centre = (int(round((grid_h - ch) / 2.0)), int(round((grid_w - cw) / 2.0)))
    corners = [(0, 0), (0, grid_w - cw), (grid_h - ch, 0), (grid_h - ch, grid_w - cw), centre]
    return [(top, left, ch, cw) for top, left in corners]


class TrainingItems:
    """Crops of stored tokens as training items: item i = crop (i % n_crops) of image (i // n_crops)."""

    def __init__(
        self,
        tokens: np.ndarray | Tensor,
        crop: Literal["five", "none"],
        train_grid: int,
        device: torch.device,
    ):
        """tokens: (n, C, h, w) stored patch tokens (float16 or float32, numpy or torch, on the CPU)."""
        if tokens.ndim != 4 or tokens.shape[0] == 0:
            raise ValueError(f"expected stored tokens of shape (n, C, h, w) with n > 0, got {tuple(tokens.shape)}")
        self.tokens = torch.as_tensor(tokens)
        self.device = device
        if device.type == "cuda" and self.tokens.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
            self.tokens = self.tokens.to(device)
        self.boxes = crop_boxes(self.tokens.shape[2], self.tokens.shape[3], crop)
        self.train_grid = train_grid

    @property
    def n_images(self) -> int:
        return self.tokens.shape[0]

    @property
    def channels(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return self.n_images * len(self.boxes)

    def gather(self, items: np.ndarray) -> Tensor:
        """items (B,) item indices -> (B, C, train_grid, train_grid) float32 features on the device."""
        items = np.asarray(items, dtype=np.int64)
        images = torch.as_tensor(items // len(self.boxes))
        crops = items % len(self.boxes)
        out = torch.empty(
            (len(items), self.channels, self.train_grid, self.train_grid), dtype=torch.float32, device=self.device
        )
        for crop_index, (top, left, height, width) in enumerate(self.boxes):
            rows = np.flatnonzero(crops == crop_index)
            if len(rows) == 0:
                continue
            selected = images[rows].to(self.tokens.device)
            region = self.tokens[selected, :, top : top + height, left : left + width]
            region = region.to(self.device, non_blocking=True).float()
            if (height, width) != (self.train_grid, self.train_grid):
                size = (self.train_grid, self.train_grid)
                region = F.interpolate(region, size=size, mode="bilinear", align_corners=False)
            out[torch.as_tensor(rows, device=self.device)] = region
        return out

    def pooled(self, chunk: int = 256) -> np.ndarray:
        """(len(self), C) float32 spatial mean of every item's features (the KNN descriptors)."""
        parts = [
            self.gather(np.arange(start, min(start + chunk, len(self)))).mean(dim=(2, 3)).cpu().numpy()
            for start in range(0, len(self), chunk)
        ]
        return np.concatenate(parts)
