"""Per-image prediction files: panoptic PNG, semantic PNG, overlay PNG and the raw `.npz`.

Layout (CONTRACTS C1, so `evaluate` reads a predict output like merge's): `<stage>/<folder>/<shard>/<image_id>`
with folders `panoptic` (COCO panoptic PNG, id2rgb), `semantic` (uint8: 0 things, 1..S stuff: the semantic head's
argmax, as detectron2 evaluates it), `overlays` (masks, boxes, labels) and `raw` (`.npz` of RAW_KEYS plus
`<image_id>.segments.json`, detectron2's own segments_info). The overlay is drawn by `overlay.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import storage
from ..coco import id2rgb
from ..model.prediction import PanopticPrediction
from ..rundir import RunDir
from .overlay import overlay_png


def panoptic_png(pred: PanopticPrediction) -> np.ndarray:
    """(H, W, 3) uint8 COCO panoptic PNG of the segment ids."""
    return id2rgb(pred.panoptic_seg)


def semantic_png(pred: PanopticPrediction) -> np.ndarray:
    """(H, W) uint8 semantic PNG: the semantic head's argmax (0 things, 1..S stuff)."""
    return pred.sem_seg


@dataclass(frozen=True)
class ImageOutputs:
    """Which per-image files to write besides the panoptic and semantic PNGs."""

    overlay: bool = True
    raw: bool = False
    class_names: dict[int, str] | None = None


def write_image(
    run: RunDir, stage: str, shard: str, image_id: int, pred: PanopticPrediction, rgb: np.ndarray | None,
    outputs: ImageOutputs,
) -> dict[str, Any]:
    """Write one image's files (module docstring); returns its COCO panoptic annotation (file_name relative to
    `<stage>/panoptic/`)."""
    storage.write_png(run.image_output_url(stage, "panoptic", shard, image_id), panoptic_png(pred))
    storage.write_png(run.image_output_url(stage, "semantic", shard, image_id), semantic_png(pred))
    if outputs.overlay and rgb is not None:
        overlay = overlay_png(pred, rgb, outputs.class_names)
        storage.write_png(run.image_output_url(stage, "overlays", shard, image_id), overlay)
    if outputs.raw:
        storage.atomic_write_bytes(run.image_output_url(stage, "raw", shard, image_id, ".npz"), pred.npz_bytes())
        storage.write_json(run.image_output_url(stage, "raw", shard, image_id, ".segments.json"), pred.segments_info)
    return pred.panoptic_annotation(image_id, f"{shard}/{image_id}.png")
