"""Helpers of the evaluate tests: ground truth rewritten as a prediction set in the merge layout (C2)."""

from __future__ import annotations

import posixpath

import numpy as np

from u2seg_core import storage


def write_prediction_set(
    gt_dir: str,
    out: str,
    shards: list[list[int]],
    id_offset: int = 0,
    rename: dict[str, str] | None = None,
    category_of=lambda c: c,
    extra: list[str] = (),
) -> str:
    """The synthetic ground truth at `gt_dir` as predictions under `out`: shard i holds the ground-truth image
    ids `shards[i]` (nested PNGs shard-NNNNN/<id>.png), image ids shifted by `id_offset`, file names renamed
    through `rename`, categories relabelled by `category_of`, instances with score 1, plus `extra` images
    (copies of the first image under new file names) that the ground truth does not have."""
    panoptic = storage.read_json(storage.join(gt_dir, "annotations", "panoptic.json"))
    instances = storage.read_json(storage.join(gt_dir, "annotations", "instances.json"))
    images = {im["id"]: im for im in panoptic["images"]}
    anns = {a["image_id"]: a for a in panoptic["annotations"]}
    categories = [{**c, "id": category_of(c["id"])} for c in panoptic["categories"]]
    storage.write_json(storage.join(out, "categories.json"), categories)
    for index, ids in enumerate(shards):
        shard = f"shard-{index:05d}"
        doc = {"images": [], "panoptic": [], "instances": []}
        entries = [(gid, images[gid]["file_name"]) for gid in ids]
        if index == 0:
            entries += [(shards[0][0], name) for name in extra]
        for n, (gid, file_name) in enumerate(entries):
            new_id = gid + id_offset + (1000 * (n - len(ids) + 1) if n >= len(ids) else 0)
            name = (rename or {}).get(file_name, file_name)
            png = posixpath.join(shard, f"{new_id}.png")
            storage.atomic_write_bytes(
                storage.join(out, "panoptic", png), storage.read_bytes(storage.join(gt_dir, "panoptic", anns[gid]["file_name"]))
            )
            doc["images"].append({**images[gid], "id": new_id, "file_name": name})
            doc["panoptic"].append({
                "image_id": new_id, "file_name": png,
                "segments_info": [{**s, "category_id": category_of(s["category_id"])} for s in anns[gid]["segments_info"]],
            })
            doc["instances"] += [
                {**a, "image_id": new_id, "category_id": category_of(a["category_id"]), "score": 1.0}
                for a in instances["annotations"] if a["image_id"] == gid
            ]
        storage.write_json(storage.join(out, "shards", f"{shard}.json"), doc)
    return out


# ---- official dataset layouts, written by the tests ------------------------------------------------


def rect_polygon(x: int, y: int, w: int, h: int) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


COCO_CATEGORIES = [  # a subset of COCO 2017's panoptic categories, ids / names / supercategories as released
    {"supercategory": "person", "isthing": 1, "id": 1, "name": "person"},
    {"supercategory": "vehicle", "isthing": 1, "id": 3, "name": "car"},
    {"supercategory": "plant", "isthing": 0, "id": 184, "name": "tree-merged"},
    {"supercategory": "sky", "isthing": 0, "id": 187, "name": "sky-other-merged"},
    {"supercategory": "plant", "isthing": 0, "id": 193, "name": "grass-merged"},
]


def write_coco(root: str, images: dict[int, tuple[np.ndarray, list[dict]]], split: str = "val2017") -> str:
    """COCO 2017's official layout: images {coco id: ((H, W) segment ids, segments_info)}; things also go to
    instances_<split>.json with the polygon of their box (the fixtures' things are rectangles)."""
    from u2seg_core.coco import id2rgb, mask_bbox

    image_entries, panoptic, instances = [], [], []
    for coco_id, (ids, segments) in images.items():
        h, w = ids.shape
        name = f"{coco_id:012d}"
        image_entries.append({"license": 1, "file_name": f"{name}.jpg", "coco_url": "", "height": h, "width": w,
                              "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": coco_id})
        infos = []
        for s in segments:
            mask = ids == s["id"]
            bbox = [int(v) for v in mask_bbox(mask)] if mask.any() else [0, 0, 0, 0]
            infos.append({"id": s["id"], "category_id": s["category_id"], "iscrowd": s.get("iscrowd", 0),
                          "bbox": bbox, "area": int(mask.sum())})
            if s["category_id"] in (1, 3) and mask.any():
                x, y, bw, bh = bbox
                instances.append({"segmentation": rect_polygon(x, y, bw, bh), "area": float(mask.sum()), "iscrowd": s.get("iscrowd", 0),
                                  "image_id": coco_id, "bbox": [float(v) for v in bbox],
                                  "category_id": s["category_id"], "id": len(instances) + 1})
        panoptic.append({"segments_info": infos, "file_name": f"{name}.png", "image_id": coco_id})
        storage.write_png(storage.join(root, "annotations", f"panoptic_{split}", f"{name}.png"), id2rgb(ids))
        storage.write_png(storage.join(root, split, f"{name}.jpg"), np.full((h, w, 3), 128, np.uint8))
    info = {"description": "COCO 2018 Panoptic Dataset", "version": "1.0", "year": 2018}
    licenses = [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "CC BY-NC-SA"}]
    storage.write_json(storage.join(root, "annotations", f"panoptic_{split}.json"), {
        "info": info, "licenses": licenses, "images": image_entries, "annotations": panoptic,
        "categories": COCO_CATEGORIES})
    storage.write_json(storage.join(root, "annotations", f"instances_{split}.json"), {
        "info": info, "licenses": licenses, "images": image_entries, "annotations": instances,
        "categories": [{k: c[k] for k in ("supercategory", "id", "name")} for c in COCO_CATEGORIES if c["isthing"]]})
    return root


def write_predictions(out: str, categories: list[dict], images: list[tuple[str, np.ndarray, list[dict]]]) -> str:
    """A prediction set in the merge layout: images [(file_name, (H, W) ids, segments with category_id and
    optional score)]; thing segments also become scored instances."""
    from u2seg_core.coco import encode_rle, id2rgb, mask_bbox

    things = {c["id"] for c in categories if c["isthing"]}
    doc = {"images": [], "panoptic": [], "instances": []}
    for image_id, (file_name, ids, segments) in enumerate(images, start=1):
        png = f"shard-00000/{image_id}.png"
        storage.write_png(storage.join(out, "panoptic", png), id2rgb(ids))
        doc["images"].append({"id": image_id, "file_name": file_name, "height": ids.shape[0], "width": ids.shape[1]})
        infos = []
        for s in segments:
            mask = ids == s["id"]
            info = {"id": s["id"], "category_id": s["category_id"], "iscrowd": 0, "bbox": mask_bbox(mask),
                    "area": int(mask.sum())}
            infos.append(info)
            if s["category_id"] in things:
                doc["instances"].append({"id": image_id * 100 + len(doc["instances"]), "image_id": image_id,
                                         "category_id": s["category_id"], "bbox": info["bbox"], "area": info["area"],
                                         "segmentation": encode_rle(mask), "score": s.get("score", 1.0), "iscrowd": 0})
        doc["panoptic"].append({"image_id": image_id, "file_name": png, "segments_info": infos})
    storage.write_json(storage.join(out, "shards", "shard-00000.json"), doc)
    storage.write_json(storage.join(out, "categories.json"), categories)
    return out
