"""Frozen featurizers: DINO ViTs (timm) and the training-free `pixel` featurizer.

`build_backbone(cfg)` returns a `Backbone`; calling it on (B, 3, H, W) uint8 RGB pixels gives a
`BackboneOutput` with attention keys (MaskCut), normed patch tokens (STEGO) and the CLS token.
"""

from .factory import build_backbone, clear_backbone_cache
from .output import ALL_OUTPUTS, Backbone, BackboneOutput
from .pixel import PixelFeaturizer
from .vit import DinoViT, interpolate_pos_embed
from .weights import WeightsNotFoundError, resolve_weights

__all__ = [
    "ALL_OUTPUTS",
    "Backbone",
    "BackboneOutput",
    "DinoViT",
    "PixelFeaturizer",
    "WeightsNotFoundError",
    "build_backbone",
    "clear_backbone_cache",
    "interpolate_pos_embed",
    "resolve_weights",
]
