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

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), in pixels


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


def label_font_size(height: int, width: int) -> int:
    """Label font size for an (height, width) picture: 1/50 of its longer side, 10 px at least."""
    return max(10, round(max(height, width) / 50))


def label_font(height: int, width: int) -> ImageFont.ImageFont:
    """The font of mask / segment labels on an (height, width) picture (`label_font_size`)."""
    return ImageFont.load_default(size=label_font_size(height, width))


def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two XYXY boxes (exclusive ends) share at least one pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_anchor(
    mask: np.ndarray, size: tuple[int, int], taken: list[Box], n_candidates: int = 24
) -> tuple[int, int] | None:
    """Top-left corner for a (w, h) label inside `mask` that overlaps no box in `taken`, or None.

    Candidates are the mask's points farthest from its border (distance transform on a grid of at most
    ~256 px), best first; the label's centre must lie in the mask and the box inside the image.
    """
    height, width = mask.shape
    step = max(1, max(height, width) // 256)
    distance = scipy.ndimage.distance_transform_edt(np.pad(mask[::step, ::step], 1))[1:-1, 1:-1]
    flat = np.argsort(-distance, axis=None, kind="stable")[: n_candidates * 16 : 16]
    w, h = size
    for index in flat:
        y, x = np.unravel_index(index, distance.shape)
        if distance[y, x] <= 0:
            break
        cx, cy = int(x * step), int(y * step)
        x0, y0 = min(max(cx - w // 2, 0), width - w), min(max(cy - h // 2, 0), height - h)
        box = (x0, y0, x0 + w, y0 + h)
        inside = mask[min(y0 + h // 2, height - 1), min(x0 + w // 2, width - 1)]
        if inside and x0 >= 0 and y0 >= 0 and not any(boxes_overlap(box, other) for other in taken):
            return x0, y0
    return None


def _draw(
    rgb: np.ndarray, masks: list[np.ndarray], colours: list[tuple[int, int, int]], labels: list[str] | None
) -> np.ndarray:
    """Blend each (H, W) bool mask in its colour, outline it, and write its label inside it.

    Labels go to the deepest free spot of their mask, larger masks first, never over another label; a
    label that finds no such spot is left out.
    """
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
        font = label_font(height, width)
        taken: list[Box] = []
        for i in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
            text = labels[i]
            if not text or not masks[i].any():
                continue
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            size = (right - left + 2, bottom - top + 2)
            if size[0] > width or size[1] > height:
                continue
            anchor = label_anchor(masks[i], size, taken)
            if anchor is None:
                continue
            x, y = anchor
            taken.append((x, y, x + size[0], y + size[1]))
            draw.rectangle((x, y, x + size[0] - 1, y + size[1] - 1), fill=(0, 0, 0))
            draw.text((x + 1 - left, y + 1 - top), text, fill=colours[i], font=font)
    return np.asarray(image)


def title_size(panel: np.ndarray, title: str) -> int:
    """Font size of a panel's title: the usual label size, shrunk (to 8 px at least) until the title fits."""
    height, width = panel.shape[:2]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = label_font_size(height, width)
    while size > 8:
        left, _, right, _ = probe.textbbox((0, 0), title, font=ImageFont.load_default(size=size))
        if right - left + 8 <= width:
            break
        size -= 1
    return size


def titled(panel: np.ndarray, title: str, size: int | None = None) -> np.ndarray:
    """(H, W, 3) panel with a white title bar on top: (H + bar, W, 3) uint8 (font: `title_size` by default)."""
    font = ImageFont.load_default(size=size or title_size(panel, title))
    bar_height = font.size + 8
    bar = Image.new("RGB", (panel.shape[1], bar_height), (255, 255, 255))
    ImageDraw.Draw(bar).text((4, 4), title, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(bar), panel], axis=0)


def side_by_side(panels: list[tuple[str, np.ndarray]], gap: int = 8) -> np.ndarray:
    """Titled panels in a row (one title font for all), white gaps between: (H + bar, sum W + gaps, 3) uint8."""
    size = min(title_size(panel, title) for title, panel in panels)
    shown = [titled(panel, title, size) for title, panel in panels]
    height = max(p.shape[0] for p in shown)
    row = []
    for i, panel in enumerate(shown):
        if i:
            row.append(np.full((height, gap, 3), 255, np.uint8))
        row.append(np.pad(panel, ((0, height - panel.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(row, axis=1)


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

    for shard in run.iter_shards():
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
