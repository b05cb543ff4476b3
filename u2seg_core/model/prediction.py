"""`PanopticPrediction`: one image's model outputs as numpy arrays, and their COCO forms with cluster ids.

Ids. The model (like detectron2's PanopticFPN) speaks in contiguous ids: `pred_classes` 0..K-1, semantic
labels 0 = "things" and 1..S = stuff classes, and its `segments_info` `category_id` is the thing class for
things and the semantic label 1..S for stuff (detectron2's `combine_semantic_and_instance_outputs`). Users and
every COCO file we write see cluster ids instead, the label space of the pseudo-labels the model was trained on
(`u2seg_core.merge.stage.categories`): things `pred_class + 1` (1..K), stuff `K + semantic label` (K+1..K+S),
VOID 0.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..coco import encode_rles
from ..merge.panoptic import segment_boxes

RAW_KEYS = ("pred_boxes", "scores", "pred_classes", "pred_masks", "sem_seg", "panoptic_seg")
MAX_SEMANTIC_LABELS = 255  # sem_seg is stored as uint8 (the semantic PNG's 255 is VOID)


@dataclass
class PanopticPrediction:
    """One image's prediction, at the original image size (H, W).

    pred_boxes (N, 4) float32 XYXY pixels; scores (N,) float32; pred_classes (N,) int64, 0-based thing classes;
    pred_masks (N, H, W) bool; sem_seg (H, W) uint8 argmax of the semantic head (0 things, 1..S stuff);
    panoptic_seg (H, W) int32 segment ids (0 VOID); segments_info: detectron2's list (id, isthing, category_id in
    contiguous ids, score + instance_id for things, area for stuff). n_things = K, n_stuff = S.
    """

    pred_boxes: np.ndarray
    scores: np.ndarray
    pred_classes: np.ndarray
    pred_masks: np.ndarray
    sem_seg: np.ndarray
    panoptic_seg: np.ndarray
    segments_info: list[dict[str, Any]]
    n_things: int
    n_stuff: int

    @classmethod
    def from_output(cls, output: dict[str, Any], n_things: int, n_stuff: int) -> "PanopticPrediction":
        """From one model output dict (C6 / detectron2: "instances", "sem_seg" (1+S, H, W), "panoptic_seg"; the
        (H, W) argmax "sem_seg_labels" when the model gives it, else computed here)."""
        if 1 + n_stuff > MAX_SEMANTIC_LABELS:
            raise ValueError(
                f"{n_stuff} stuff classes do not fit a uint8 semantic map (at most {MAX_SEMANTIC_LABELS - 1})"
            )
        instances = output["instances"]
        boxes = getattr(instances.pred_boxes, "tensor", instances.pred_boxes)
        panoptic, segments = output["panoptic_seg"]
        return cls(
            pred_boxes=_numpy(boxes, np.float32).reshape(-1, 4),
            scores=_numpy(instances.scores, np.float32),
            pred_classes=_numpy(instances.pred_classes, np.int64),
            pred_masks=_numpy(instances.pred_masks, bool),
            sem_seg=_numpy(_semantic_labels(output), np.uint8),
            panoptic_seg=_numpy(panoptic, np.int32),
            segments_info=[{k: _plain(v) for k, v in s.items()} for s in segments],
            n_things=n_things,
            n_stuff=n_stuff,
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return self.panoptic_seg.shape

    @property
    def cluster_ids(self) -> np.ndarray:
        """(N,) int64 thing cluster id of every instance: pred_classes + 1 (1..K)."""
        return self.pred_classes + 1

    def category_id(self, segment: dict[str, Any]) -> int:
        """Cluster id of one detectron2 segment (module docstring)."""
        return int(segment["category_id"]) + (1 if segment["isthing"] else self.n_things)

    @cached_property
    def coco_segments(self) -> list[dict[str, Any]]:
        """COCO panoptic `segments_info`: id, category_id (cluster id), isthing, iscrowd, bbox XYWH, area, and
        score for things (computed once)."""
        max_id = max((int(s["id"]) for s in self.segments_info), default=0)
        areas = np.bincount(self.panoptic_seg.ravel(), minlength=max_id + 1)
        boxes = segment_boxes(self.panoptic_seg, max_id)
        segments = []
        for s in self.segments_info:
            sid = int(s["id"])
            entry = {"id": sid, "category_id": self.category_id(s), "isthing": int(bool(s["isthing"])),
                     "iscrowd": 0, "bbox": boxes[sid - 1].tolist(), "area": int(areas[sid])}
            if s["isthing"]:
                entry["score"] = float(s["score"])
            segments.append(entry)
        return segments

    def panoptic_annotation(self, image_id: int, file_name: str) -> dict[str, Any]:
        """COCO panoptic annotation; `file_name` is the panoptic PNG's path relative to the panoptic folder."""
        return {"image_id": int(image_id), "file_name": file_name, "segments_info": self.coco_segments}

    def instance_annotations(self, image_id: int) -> list[dict[str, Any]]:
        """COCO instances (all N, unoccluded, as detectron2's instance evaluation sees them): id
        `image_id * 100 + index`, category_id = cluster id, bbox XYWH from pred_boxes, mask area, RLE, score."""
        xywh = self.pred_boxes.astype(np.float64).copy()
        xywh[:, 2:] -= xywh[:, :2]
        areas = self.pred_masks.sum(axis=(1, 2))
        return [
            {"id": int(image_id) * 100 + i, "image_id": int(image_id), "category_id": int(self.cluster_ids[i]),
             "bbox": xywh[i].tolist(), "area": int(areas[i]), "segmentation": rle,
             "score": float(self.scores[i]), "iscrowd": 0}
            for i, rle in enumerate(encode_rles(self.pred_masks))
        ]

    def raw_arrays(self) -> dict[str, np.ndarray]:
        """The raw outputs under their `--raw` .npz names (RAW_KEYS)."""
        return {key: getattr(self, key) for key in RAW_KEYS}

    def npz_bytes(self) -> bytes:
        """The raw outputs as a compressed .npz file's bytes."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.raw_arrays())
        return buf.getvalue()

    def save(self, folder: str, name: str = "prediction", image: np.ndarray | None = None,
             class_names: dict[int, str] | None = None) -> dict[str, str]:
        """Write this prediction into `folder` (local or fsspec URL), for notebook use: `<name>_panoptic.png`,
        `<name>_semantic.png`, `<name>_raw.npz`, `<name>_segments.json` and, given the (H, W, 3) uint8 RGB
        `image`, `<name>_overlay.png` (labels: `class_names[cluster id]` where given). Returns name -> URL."""
        from .. import storage
        from ..predict.overlay import overlay_png
        from ..predict.writers import panoptic_png, semantic_png

        urls = {kind: storage.join(folder, f"{name}_{kind}{suffix}") for kind, suffix in (
            ("panoptic", ".png"), ("semantic", ".png"), ("raw", ".npz"), ("segments", ".json"))}
        storage.write_png(urls["panoptic"], panoptic_png(self))
        storage.write_png(urls["semantic"], semantic_png(self))
        storage.atomic_write_bytes(urls["raw"], self.npz_bytes())
        storage.write_json(urls["segments"], self.coco_segments)
        if image is not None:
            urls["overlay"] = storage.join(folder, f"{name}_overlay.png")
            storage.write_png(urls["overlay"], overlay_png(self, image, class_names))
        return urls


def _numpy(value: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    """A tensor (any device, bf16 included) or array as a numpy array of `dtype`."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.cpu().numpy()
    return np.asarray(value).astype(dtype, copy=False)


def _semantic_labels(output: dict[str, Any]) -> torch.Tensor:
    """(H, W) semantic label of every pixel: the model's own argmax, or the argmax of its (1+S, H, W) logits."""
    labels = output.get("sem_seg_labels")
    return output["sem_seg"].argmax(dim=0) if labels is None else labels


def _plain(value: Any) -> Any:
    """JSON-ready scalar from a tensor / numpy scalar."""
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    return value
