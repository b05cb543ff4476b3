"""U2Seg's Panoptic-FPN Cascade Mask R-CNN on torch + torchvision.ops, computing what detectron2 computes.

`build_model(cfg)` -> `PanopticCascadeRCNN`; `checkpoint.load_checkpoint(path)` -> (state dict, ModelConfig
with K and S read from the tensor shapes); `preprocess.prepare_input(image_rgb, cfg.input)` -> model input.
See docs/model.md for every detectron2 detail followed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ModelConfig
    from .meta_arch import PanopticCascadeRCNN, build_model
    from .structures import Detections

__all__ = ["Detections", "ModelConfig", "PanopticCascadeRCNN", "build_model"]

# Resolved on first use, so that `u2seg_core.config` can import `model.config` (TrainConfig holds a ModelConfig)
# without importing torch.
_LAZY = {"ModelConfig": "config", "PanopticCascadeRCNN": "meta_arch", "build_model": "meta_arch", "Detections": "structures"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
