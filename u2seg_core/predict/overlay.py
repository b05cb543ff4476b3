"""The prediction overlay, like U2Seg's figure: panoptic segments in their cluster's colour, thing boxes, labels.

Drawn from the (H, W) segment-id map directly (no per-segment mask stack, so a 20-megapixel photo with 100
instances stays cheap). Labels ("id 273", or the mapped class name) never overlap each other: a thing's label
goes to its box's top-left corner (inside, else just above it) when free, otherwise, like a stuff label, to the
deepest free spot of its segment (`u2seg_core.viz.label_anchor`); a label with no free spot is left out.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.ndimage
from PIL import Image, ImageDraw

from ..model.prediction import PanopticPrediction
from ..viz import MASK_ALPHA, Box, boxes_overlap, label_anchor, label_colour, label_font


def segment_edges(segment_ids: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool: pixels of a non-zero segment that touch another id (4-neighbourhood), `thickness` wide."""
    ids = np.asarray(segment_ids)
    edge = np.zeros(ids.shape, dtype=bool)
    vertical = ids[1:] != ids[:-1]
    horizontal = ids[:, 1:] != ids[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    if thickness > 1:
        edge = scipy.ndimage.binary_dilation(edge, iterations=thickness - 1)
    return edge & (ids != 0)


def blend_segments(rgb: np.ndarray, segment_ids: np.ndarray, table: np.ndarray, thickness: int) -> np.ndarray:
    """(H, W, 3) uint8: every non-zero segment blended with its colour `table[id]` ((max id + 1, 3)) at
    MASK_ALPHA, its edge pixels (`segment_edges`) painted in that colour."""
    colour = table[segment_ids].astype(np.float32)
    alpha = np.where(segment_ids > 0, np.float32(MASK_ALPHA), np.float32(0.0))[..., None]
    edge = segment_edges(segment_ids, thickness)[..., None]
    out = np.where(edge, colour, rgb * (1.0 - alpha) + colour * alpha)
    return np.clip(out, 0, 255).astype(np.uint8)


def segment_text(category_id: int, class_names: dict[int, str] | None) -> str:
    """"id 273", or the mapped class name when `class_names` has one for the cluster."""
    name = (class_names or {}).get(category_id)
    return name if name else f"id {category_id}"


def corner_label(box: np.ndarray, size: tuple[int, int], taken: list[Box], width: int, height: int) -> Box | None:
    """The label box at the top-left corner of a thing's XYXY `box`, inside it or just above, if free."""
    w, h = size
    x0 = int(min(max(box[0], 0), max(width - w, 0)))
    for y0 in (int(box[1]), int(box[1]) - h):
        y0 = min(max(y0, 0), max(height - h, 0))
        candidate = (x0, y0, x0 + w, y0 + h)
        if not any(boxes_overlap(candidate, other) for other in taken):
            return candidate
    return None


def overlay_png(
    pred: PanopticPrediction, rgb: np.ndarray, class_names: dict[int, str] | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 overlay of `pred` on the (H, W, 3) uint8 RGB image (module docstring)."""
    if rgb.shape[:2] != pred.image_size:
        raise ValueError(f"image is {rgb.shape[:2]}, the prediction {pred.image_size}")
    ids = pred.panoptic_seg
    height, width = ids.shape
    colour_of = {s["id"]: label_colour(s["category_id"]) for s in pred.coco_segments}
    table = np.zeros((max(colour_of, default=0) + 1, 3), dtype=np.float32)
    for sid, colour in colour_of.items():
        table[sid] = colour
    line = max(1, round(max(height, width) / 400))
    image = Image.fromarray(blend_segments(rgb, ids, table, line))
    draw = ImageDraw.Draw(image)
    for sid, box in thing_boxes(pred).items():
        draw.rectangle((float(box[0]), float(box[1]), max(float(box[0]), float(box[2]) - 1),
                        max(float(box[1]), float(box[3]) - 1)), outline=colour_of[sid], width=line)
    font = label_font(height, width)
    for sid, text, spot, offset in label_spots(pred, class_names, lambda t: draw.textbbox((0, 0), t, font=font)):
        draw.rectangle((spot[0], spot[1], spot[2] - 1, spot[3] - 1), fill=(0, 0, 0))
        draw.text((spot[0] + 1 - offset[0], spot[1] + 1 - offset[1]), text, fill=colour_of[sid], font=font)
    return np.asarray(image)


def thing_boxes(pred: PanopticPrediction) -> dict[int, np.ndarray]:
    """segment id -> (4,) XYXY box of the instance behind each thing segment."""
    return {s["id"]: pred.pred_boxes[int(info["instance_id"])]
            for s, info in zip(pred.coco_segments, pred.segments_info) if s["isthing"]}


def label_spots(
    pred: PanopticPrediction, class_names: dict[int, str] | None, text_box: Callable[[str], Box]
) -> list[tuple[int, str, Box, tuple[int, int]]]:
    """(segment id, text, label box, text offset) of every label that finds a free spot (module docstring), things
    by score (detectron2's paint order) then stuff; `text_box(text)` is the font's (left, top, right, bottom)."""
    height, width = pred.image_size
    boxes = thing_boxes(pred)
    taken: list[Box] = []
    spots = []
    for s in pred.coco_segments:
        text = segment_text(s["category_id"], class_names)
        left, top, right, bottom = text_box(text)
        size = (right - left + 2, bottom - top + 2)
        if size[0] > width or size[1] > height:
            continue
        spot = corner_label(boxes[s["id"]], size, taken, width, height) if s["id"] in boxes else None
        if spot is None:
            anchor = label_anchor(pred.panoptic_seg == s["id"], size, taken)
            spot = None if anchor is None else (*anchor, anchor[0] + size[0], anchor[1] + size[1])
        if spot is not None:
            taken.append(spot)
            spots.append((s["id"], text, spot, (left, top)))
    return spots
