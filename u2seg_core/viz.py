"""Overlays for looking at results: instance masks, panoptic maps, label maps, and `u2seg show`.

Colours are deterministic: label k gets the hue k * golden ratio (mod 1), so the same id has the
same colour in every picture; label 0 (VOID / background) is black in `colorize`.
"""

from __future__ import annotations

import colorsys

import numpy as np
import scipy.ndimage
from PIL import Image, ImageDraw, ImageFont

from . import storage
from .coco import decode_rle
from .io.decode import load_rgb
from .rundir import RunDir

GOLDEN_RATIO = 0.618033988749895
MASK_ALPHA = 0.5


def label_colour(label: int) -> tuple[int, int, int]:
    """The palette colour of a positive integer label (saturated, bright, well spread in hue)."""
    hue = (label * GOLDEN_RATIO) % 1.0
    saturation = 0.65 + 0.3 * ((label * 7) % 3) / 2.0
    r, g, b = colorsys.hsv_to_rgb(hue, min(saturation, 0.95), 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 (0 and negatives black)."""
    labels, inverse = np.unique(label_map, return_inverse=True)
    table = np.array([label_colour(int(v)) if v > 0 else (0, 0, 0) for v in labels], dtype=np.uint8)
    return table[inverse.reshape(label_map.shape)]


def _draw(
    rgb: np.ndarray, masks: list[np.ndarray], colours: list[tuple[int, int, int]], labels: list[str] | None
) -> np.ndarray:
    """Blend each (H, W) bool mask in its colour, outline it, and write its label at its top-left corner."""
    out = rgb.astype(np.float32).copy()
    height, width = rgb.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    for mask, colour in zip(masks, colours):
        out[mask] = (1.0 - MASK_ALPHA) * out[mask] + MASK_ALPHA * np.asarray(colour, np.float32)
    for mask, colour in zip(masks, colours):
        edge = mask & ~scipy.ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
        out[edge] = colour
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if labels:
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=max(10, round(max(height, width) / 50)))
        for mask, colour, text in zip(masks, colours, labels):
            ys, xs = np.nonzero(mask)
            if len(ys) == 0 or not text:
                continue
            x, y = int(xs.min()), int(ys.min())
            box = draw.textbbox((x, y), text, font=font)
            draw.rectangle(box, fill=(0, 0, 0))
            draw.text((x, y), text, fill=colour, font=font)
    return np.asarray(image)


def overlay_instances(rgb: np.ndarray, masks: np.ndarray, labels: list[str] | None = None) -> np.ndarray:
    """rgb (H, W, 3) uint8, masks (M, H, W) bool -> (H, W, 3) uint8: translucent masks, contours, labels."""
    masks = np.asarray(masks, dtype=bool).reshape(-1, *rgb.shape[:2])
    colours = [label_colour(k + 1) for k in range(len(masks))]
    return _draw(rgb, list(masks), colours, labels)


def overlay_panoptic(
    rgb: np.ndarray,
    segment_ids: np.ndarray,
    segments: list[dict],
    category_names: dict[int, str] | None = None,
) -> np.ndarray:
    """rgb (H, W, 3) uint8, segment_ids (H, W) int, COCO panoptic `segments_info` -> (H, W, 3) uint8.

    Things are coloured per segment, stuff per category; labels are category names (or ids).
    """
    masks, colours, labels = [], [], []
    for segment in segments:
        mask = segment_ids == segment["id"]
        if not mask.any():
            continue
        category = int(segment["category_id"])
        masks.append(mask)
        colours.append(label_colour(int(segment["id"]) if segment.get("isthing", True) else category))
        labels.append((category_names or {}).get(category, str(category)))
    return _draw(rgb, masks, colours, labels)


def show_image_masks(run: RunDir, image_id: int, out_png: str, max_side: int | None = 1600) -> str:
    """Write the MaskCut masks of `image_id` over its image as a PNG (`u2seg show RUN IMAGE_ID`); returns out_png.

    Labels read "<round>: <score>". Images larger than `max_side` are shown downscaled.
    """
    from .maskcut.stage import MAX_MASKS_PER_IMAGE, instances_path

    for shard in run.shards():
        record = next((r for r in shard.images if r.image_id == image_id), None)
        if record is not None:
            break
    else:
        raise KeyError(f"image_id {image_id} is not in the plan of {run.root}")
    url = run.url(instances_path(shard.name))
    if not storage.exists(url):
        raise FileNotFoundError(f"{url} does not exist; run `u2seg stage maskcut {run.root}` first")
    instances = storage.read_json(url)
    if not any(im["id"] == image_id for im in instances["images"]):
        raise KeyError(f"image_id {image_id} has no MaskCut result in {url} (it failed: see the stage's failures)")
    annotations = [a for a in instances["annotations"] if a["image_id"] == image_id]
    rgb = load_rgb(record.url)
    masks = [decode_rle(a["segmentation"]) for a in annotations]
    labels = [f"{a['id'] % MAX_MASKS_PER_IMAGE}: {a['score']:.2f}" for a in annotations]
    scale = max(rgb.shape[:2]) / max_side if max_side else 1.0
    if scale > 1.0:
        size = (round(rgb.shape[1] / scale), round(rgb.shape[0] / scale))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        masks = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks]
    masks = np.stack(masks) if masks else np.zeros((0, *rgb.shape[:2]), bool)
    storage.write_png(out_png, overlay_instances(rgb, masks, labels))
    return out_png
