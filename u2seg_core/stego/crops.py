"""Training items cut from the stored token grids (STEGO's five-crop, done on features).

STEGO cuts every image offline into 4 corner crops and a centre crop of half its height and width
and trains on each crop resized to 224 px (a 28 x 28 token grid). Here the crops are cut from the
stored token grid of each image and resized (bilinear) to `train_grid`; with features stored at
448 px (56 x 56 for patch 8) a half crop is 28 x 28, i.e. STEGO's training grid without resampling.
Every (image, crop) pair is one training item, with its own KNN neighbours. The grids come from memory
or, for a sample larger than `stego.preload_bytes`, straight from the store (stego/tokens.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import StegoConfig
from .tokens import StoredRows, TensorRows, TokenRows

CROP_RATIO: float = StegoConfig.model_fields["crop_ratio"].default

Box = tuple[int, int, int, int]  # top, left, height, width (token cells)


def crop_boxes(grid_h: int, grid_w: int, crop: Literal["five", "none"], ratio: float = CROP_RATIO) -> list[Box]:
    """Boxes on a (grid_h, grid_w) token grid: 'five' = top-left, top-right, bottom-left, bottom-right,
    centre at half size (torchvision `five_crop` order and rounding); 'none' = the whole grid."""
    if crop == "none":
        return [(0, 0, grid_h, grid_w)]
    ch, cw = max(1, int(grid_h * ratio)), max(1, int(grid_w * ratio))
    centre = (int(round((grid_h - ch) / 2.0)), int(round((grid_w - cw) / 2.0)))
    corners = [(0, 0), (0, grid_w - cw), (grid_h - ch, 0), (grid_h - ch, grid_w - cw), centre]
    return [(top, left, ch, cw) for top, left in corners]


class TrainingItems:
    """Crops of stored tokens as training items: item i = crop (i % n_crops) of image (i // n_crops)."""

    def __init__(
        self,
        tokens: np.ndarray | Tensor | StoredRows,
        crop: Literal["five", "none"],
        train_grid: int,
        device: torch.device,
        preload_bytes: int | None = None,
        crop_ratio: float = CROP_RATIO,
    ):
        """tokens: (n, C, h, w) patch tokens (float16 or float32, numpy or torch, on the CPU), or the stored
        sample, read into memory when it holds at most `preload_bytes` (None: always), else streamed.
        In memory on a CUDA device, the tokens move to the GPU when they take under half its free memory."""
        if isinstance(tokens, StoredRows) and (preload_bytes is None or tokens.nbytes <= preload_bytes):
            tokens = tokens.load().tokens
        if not isinstance(tokens, StoredRows):
            tokens = torch.as_tensor(tokens)
            if device.type == "cuda" and tokens.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
                tokens = tokens.to(device)
            tokens = TensorRows(tokens)
        shape = tokens.shape
        if len(shape) != 4 or shape[0] == 0:
            raise ValueError(f"expected stored tokens of shape (n, C, h, w) with n > 0, got {tuple(shape)}")
        self.source: TokenRows = tokens
        self.shape = tuple(shape)
        self.device = device
        self.boxes = crop_boxes(shape[2], shape[3], crop, crop_ratio)
        self.train_grid = train_grid

    @property
    def n_images(self) -> int:
        return self.shape[0]

    @property
    def channels(self) -> int:
        return self.shape[1]

    def __len__(self) -> int:
        return self.n_images * len(self.boxes)

    def gather(self, items: np.ndarray) -> Tensor:
        """items (B,) item indices -> (B, C, train_grid, train_grid) float32 features on the device.
        Each image's grid is read once, however many of its crops the batch holds."""
        items = np.asarray(items, dtype=np.int64)
        images, local = np.unique(items // len(self.boxes), return_inverse=True)
        grids = self.source.rows(images)
        local = torch.as_tensor(local, device=grids.device)
        crops = items % len(self.boxes)
        out = torch.empty(
            (len(items), self.channels, self.train_grid, self.train_grid), dtype=torch.float32, device=self.device
        )
        for crop_index, (top, left, height, width) in enumerate(self.boxes):
            rows = np.flatnonzero(crops == crop_index)
            if len(rows) == 0:
                continue
            selected = local[torch.as_tensor(rows, device=grids.device)]
            region = grids[selected, :, top : top + height, left : left + width]
            region = region.to(self.device, non_blocking=True).float()
            if (height, width) != (self.train_grid, self.train_grid):
                size = (self.train_grid, self.train_grid)
                region = F.interpolate(region, size=size, mode="bilinear", align_corners=False)
            out[torch.as_tensor(rows, device=self.device)] = region
        return out

    def pooled(self, chunk: int = 256) -> np.ndarray:
        """(len(self), C) float32 spatial mean of every item's features (the KNN descriptors)."""
        out = np.empty((len(self), self.channels), np.float32)  # filled in place: no heap growth per chunk
        for start in range(0, len(self), chunk):
            stop = min(start + chunk, len(self))
            out[start:stop] = self.gather(np.arange(start, stop)).mean(dim=(2, 3)).cpu().numpy()
        return out
