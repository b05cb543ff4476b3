"""`build_backbone`: one built model per (arch, weights file, device, amp) and process."""

from __future__ import annotations

import threading
from pathlib import Path

from ..config import BackboneConfig
from ..device import resolve_device
from .output import Backbone
from .pixel import PixelFeaturizer
from .vit import DinoViT
from .weights import resolve_weights

_CACHE: dict[tuple[str, str, str, bool, str], Backbone] = {}
_LOCK = threading.Lock()


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """The frozen backbone described by `cfg`, built once per process and shared by later calls.

    The cache key uses the resolved weights file (not the config's `weights` field), so the same
    checkpoint found through $U2SEG_WEIGHTS or the hub cache is loaded only once.
    """
    device = resolve_device(cfg.device)
    if cfg.arch == "pixel":
        source = "none"
    elif cfg.random_init:
        source = "random"
    else:
        source = str(resolve_weights(cfg.arch, cfg.weights).resolve())
    key = (cfg.arch, source, str(device), cfg.amp, cfg.keys_precision)
    with _LOCK:
        if key not in _CACHE:
            if cfg.arch == "pixel":
                _CACHE[key] = PixelFeaturizer(device)
            else:
                path = None if source == "random" else Path(source)
                _CACHE[key] = DinoViT.from_checkpoint(cfg.arch, path, device, cfg.amp, cfg.keys_precision)
        return _CACHE[key]


def clear_backbone_cache() -> None:
    """Drop every cached model (frees GPU memory between unrelated runs)."""
    with _LOCK:
        _CACHE.clear()
