"""Write the built-in synthetic dataset with exact ground truth (layout: docs/architecture.md).

    OUT/images/NNNNNN.png               RGB image (NNNNNN = image_id, 1..n)
    OUT/annotations/instances.json      COCO instances (compressed RLE), thing categories 1..T
    OUT/annotations/panoptic.json       COCO panoptic, things 1..T (isthing 1), stuff T+1..T+S (isthing 0)
    OUT/panoptic/NNNNNN.png             id2rgb(segment id); thing id = category * 1000 + k, stuff id = category * 1000
    OUT/semantic/NNNNNN.png             uint8: 0 = any thing, 1..S = stuff class, 255 = void (unused: all
                                        pixels are labelled)
    OUT/config.json                     generator version + SynthConfig, written last (completion marker)

Image i is drawn from `numpy.random.default_rng([seed, i])`: the same seed gives byte-identical files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import storage
from ..coco import dataset_json, encode_rle, id2rgb, image_entry, mask_bbox
from ..config import SynthConfig
from .classes import (
    STUFF_CLASSES,
    THING_CLASSES,
    panoptic_categories,
    stuff_category_id,
    thing_categories,
    thing_category_id,
)
from .scene import Scene, render_scene

SYNTH_VERSION = "1"
SEGMENT_ID_STRIDE = 1000  # segment id = category_id * 1000 + instance index (0 for stuff)


def dataset_paths(out: str) -> dict[str, str]:
    """Where each part of the dataset lives under `out`."""
    return {
        "root": out,
        "images": storage.join(out, "images"),
        "instances": storage.join(out, "annotations", "instances.json"),
        "panoptic_json": storage.join(out, "annotations", "panoptic.json"),
        "panoptic": storage.join(out, "panoptic"),
        "semantic": storage.join(out, "semantic"),
        "config": storage.join(out, "config.json"),
    }


def marker(cfg: SynthConfig) -> dict[str, Any]:
    """Content of `config.json`: what the dataset was generated with."""
    return {"generator_version": SYNTH_VERSION, "synthetic": cfg.model_dump(mode="json")}


def dataset_is_complete(out: str, cfg: SynthConfig) -> bool:
    """True when `out` holds a finished dataset generated with this config and generator version."""
    url = dataset_paths(out)["config"]
    return storage.exists(url) and storage.read_json(url) == marker(cfg)


def generate_dataset(out: str, cfg: SynthConfig) -> dict[str, str]:
    """Generate `cfg.n` images of `cfg.size` px with their annotations under `out`; returns `dataset_paths(out)`."""
    paths = dataset_paths(out)
    images, instances, panoptic = [], [], []
    for image_id in range(1, cfg.n + 1):
        scene = render_scene(np.random.default_rng([cfg.seed, image_id]), cfg.size)
        name = f"{image_id:06d}.png"
        segment_ids, semantic = label_maps(scene)
        segments_info, thing_annotations = annotate(segment_ids, image_id)
        storage.write_png(storage.join(paths["images"], name), scene.rgb)
        storage.write_png(storage.join(paths["panoptic"], name), id2rgb(segment_ids))
        storage.write_png(storage.join(paths["semantic"], name), semantic)
        images.append(image_entry(image_id, name, cfg.size, cfg.size))
        instances.extend(thing_annotations)
        panoptic.append({"image_id": image_id, "file_name": name, "segments_info": segments_info})
    description = f"u2seg synthetic dataset (seed {cfg.seed}, {cfg.n} images of {cfg.size} px)"
    storage.write_json(paths["instances"], dataset_json(images, instances, thing_categories(), description))
    storage.write_json(paths["panoptic_json"], dataset_json(images, panoptic, panoptic_categories(), description))
    storage.write_json(paths["config"], marker(cfg))
    return paths


def label_maps(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int64 panoptic segment ids and (H, W) uint8 semantic map of a scene."""
    thing_category = np.array([0] + [thing_category_id(i.thing) for i in scene.instances], np.int64)
    stuff_category = np.array([stuff_category_id(s) for s in range(len(STUFF_CLASSES))], np.int64)
    is_thing = scene.instance_map > 0
    segment_ids = np.where(
        is_thing,
        thing_category[scene.instance_map] * SEGMENT_ID_STRIDE + scene.instance_map,
        stuff_category[scene.stuff_map] * SEGMENT_ID_STRIDE,
    )
    semantic = np.where(is_thing, 0, scene.stuff_map + 1).astype(np.uint8)
    return segment_ids, semantic


def annotate(segment_ids: np.ndarray, image_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO panoptic `segments_info` and COCO instance annotations (things only) of one image.

    Thing annotation ids are `image_id * 100 + k` (k = the instance's paint order).
    """
    n_things = len(THING_CLASSES)
    segments, things = [], []
    ids, areas = np.unique(segment_ids, return_counts=True)
    for segment_id, area in zip(ids.tolist(), areas.tolist()):
        mask = segment_ids == segment_id
        category_id, k = divmod(segment_id, SEGMENT_ID_STRIDE)
        bbox = mask_bbox(mask)
        segments.append(
            {"id": segment_id, "category_id": category_id, "iscrowd": 0, "area": area, "bbox": bbox}
        )
        if category_id <= n_things:
            things.append(
                {
                    "id": image_id * 100 + k,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": encode_rle(mask),
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    return segments, things
