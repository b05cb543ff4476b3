"""Test helper: random-weight U2Seg checkpoints written in detectron2's layout ({"model": state_dict, ...})."""

from __future__ import annotations

from pathlib import Path

import torch

from u2seg_core.model import ModelConfig, build_model


def write_detectron2_checkpoint(path: Path, cfg: ModelConfig, seed: int = 0) -> Path:
    """A `.pth` like U2Seg's released files (no config inside: K, S and layer sizes come from tensor shapes)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path
