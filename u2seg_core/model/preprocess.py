"""Input preparation as detectron2's DefaultPredictor / ResizeShortestEdge (engine/defaults.py,
data/transforms/augmentation_impl.py, data/transforms/transform.py).

Output size: scale = short / min(h, w); if the long side then exceeds max_size, scale it down to max_size;
sides rounded with int(x + 0.5). The uint8 image is resized with PIL's bilinear filter (a torch resize of
the same image differs by grey levels and changes masks). Normalisation `(x - mean) / std` and zero padding
to a multiple of 32 happen inside the model (`PanopticCascadeRCNN.preprocess_image`).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .config import InputConfig


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) of ResizeShortestEdge.get_output_shape."""
    size = short_edge * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_shortest_edge(
    image: np.ndarray, short_edge: int, max_size: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize a (H,W,C) uint8 image with PIL bilinear -> (resized (h,w,C) uint8, (h / H, w / W)).

    `short_edge` 0 leaves the image unchanged. The per-axis scales are what annotations (boxes, polygons)
    are multiplied by, as detectron2's ResizeTransform.apply_coords does.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if short_edge == 0:
        return image, (1.0, 1.0)
    new_h, new_w = resized_shape(height, width, short_edge, max_size)
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR))
    return resized, (new_h / height, new_w / width)


def sample_train_short_edge(cfg: InputConfig, rng: np.random.Generator) -> int:
    """Training short side: one of `min_size_train` ("choice") or uniform in [min, max] ("range")."""
    sizes = cfg.min_size_train
    if cfg.min_size_train_sampling == "range":
        return int(rng.integers(sizes[0], sizes[1] + 1))
    return int(sizes[int(rng.integers(len(sizes)))])


def prepare_input(image_rgb: np.ndarray, cfg: InputConfig) -> dict[str, torch.Tensor | int]:
    """Model input dict of DefaultPredictor from an (H,W,3) uint8 RGB image.

    Returns {"image": (3,h,w) float32 in `cfg.format` channel order at the test size, "height": H, "width": W}.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image_rgb.shape}")
    image = image_rgb if cfg.format == "RGB" else image_rgb[:, :, ::-1]
    height, width = image.shape[:2]
    resized, _ = resize_shortest_edge(image, cfg.min_size_test, cfg.max_size_test)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return {"image": tensor, "height": height, "width": width}
