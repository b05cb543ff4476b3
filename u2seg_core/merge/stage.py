"""Merge stage: MaskCut instances (with their cluster ids) over STEGO stuff -> panoptic pseudo-labels.

Per shard (`merge_shard`), for every image:
    merge/panoptic/<shard>/<image_id>.png   id2rgb(segment ids), COCO panoptic (file_name <shard>/<image_id>.png)
    merge/semantic/<shard>/<image_id>.png   uint8: 0 things, 1..S stuff, 255 VOID
and `merge/shards/<shard>.json` = {images, panoptic (COCO panoptic annotations), instances
(class-aware COCO instances: the occluded masks as RLE, category = cluster id, MaskCut score),
instances_unoccluded (the same MaskCut masks whole, before painting: the train stage's things)}.
`finalize` streams the shard files, one at a time, into `merge/panoptic.json` (categories things 1..K,
stuff K+1..K+S) and `merge/instances.json` (categories 1..K), compact (`coco.CocoJsonWriter`): its
memory does not grow with the number of images.

Images that failed upstream, lack a STEGO map or have inconsistent inputs become FailureRecords;
images without instances are kept (stuff only).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import storage
from ..coco import CocoJsonWriter, decode_rle, encode_rle, id2rgb, image_entry
from ..config import PipelineConfig
from ..manifest import FailureRecord, GlobalResult, ShardManifest, ShardResult, shard_name
from ..rundir import RunDir
from .panoptic import merge_image, semantic_from_segments

STAGE = "merge"
UPSTREAM = ("maskcut", "cluster", "stego")


def png_name(shard: str, image_id: int) -> str:
    """An image's PNG relative to merge/panoptic/ (the panoptic `file_name`) and merge/semantic/."""
    return f"{shard}/{image_id}.png"


def shard_json_url(run: RunDir, shard: str) -> str:
    return run.url(STAGE, "shards", f"{shard}.json")


def categories(k: int, n_stuff: int) -> list[dict[str, Any]]:
    """Panoptic categories of the pseudo-labels: clusters 1..k (things), STEGO classes k+1..k+n_stuff."""
    things = [{"id": c, "name": f"cluster_{c}", "supercategory": "thing", "isthing": 1} for c in range(1, k + 1)]
    stuff = [
        {"id": k + 1 + s, "name": f"stuff_{s}", "supercategory": "stuff", "isthing": 0} for s in range(n_stuff)
    ]
    return things + stuff


def merge_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Merge every image of one shard (outputs in the module docstring)."""
    start = time.perf_counter()
    instances_url = run.url("maskcut", "instances", f"{shard.name}.json")
    assignments_url = run.url("cluster", "assignments", f"{shard.name}.json")
    for url, stage in ((instances_url, "maskcut"), (assignments_url, "cluster")):
        if not storage.exists(url):
            raise FileNotFoundError(f"merge {shard.name}: {url} is missing; run the '{stage}' stage first")
    maskcut = storage.read_json(instances_url)
    assignments: dict[str, int] = storage.read_json(assignments_url)
    entries = {int(im["id"]): im for im in maskcut["images"]}
    annotations: dict[int, list[dict[str, Any]]] = {}
    for ann in maskcut["annotations"]:
        annotations.setdefault(int(ann["image_id"]), []).append(ann)
    upstream_failed = upstream_failures(run, shard.name)

    images, panoptic, instances, unoccluded = [], [], [], []
    failures: list[FailureRecord] = []
    counts = {"segments": 0.0, "thing_segments": 0.0, "stuff_segments": 0.0, "instances_occluded_away": 0.0}
    for record in shard.images:
        if record.image_id in upstream_failed:
            failures.append(
                FailureRecord(
                    image_id=record.image_id, file_name=record.file_name, stage=STAGE,
                    reason=f"failed upstream, not merged ({upstream_failed[record.image_id]})",
                )
            )
            continue
        try:
            entry, pan_ann, inst_anns, n_dropped = merge_one(
                run, shard.name, record.image_id, entries.get(record.image_id), annotations.get(record.image_id, []),
                assignments, cfg,
            )
        except (ValueError, FileNotFoundError, KeyError) as exc:
            failures.append(
                FailureRecord(image_id=record.image_id, file_name=record.file_name, stage=STAGE, reason=str(exc))
            )
            continue
        images.append(entry)
        panoptic.append(pan_ann)
        instances.extend(inst_anns)
        unoccluded.extend(unoccluded_instances(record.image_id, annotations.get(record.image_id, []), assignments))
        n_things = len(inst_anns)
        counts["segments"] += len(pan_ann["segments_info"])
        counts["thing_segments"] += n_things
        counts["stuff_segments"] += len(pan_ann["segments_info"]) - n_things
        counts["instances_occluded_away"] += n_dropped

    url = shard_json_url(run, shard.name)
    storage.write_json(
        url, {"images": images, "panoptic": panoptic, "instances": instances, "instances_unoccluded": unoccluded}
    )
    return ShardResult(
        stage=STAGE,
        shard=shard.name,
        n_images=len(shard.images),
        n_failed=len(failures),
        failures=failures,
        outputs={
            "shard": run.rel(url),
            "panoptic": run.rel(run.url(STAGE, "panoptic", shard.name)),
            "semantic": run.rel(run.url(STAGE, "semantic", shard.name)),
        },
        counts=counts,
        seconds=time.perf_counter() - start,
    )


def upstream_failures(run: RunDir, shard: str) -> dict[int, str]:
    """image_id -> '<stage>: reason' for every image an upstream stage recorded as failed."""
    failed: dict[int, str] = {}
    for stage in UPSTREAM:
        result = run.shard_result(stage, shard)
        for failure in result.failures if result else []:
            failed.setdefault(failure.image_id, f"{stage}: {failure.reason}")
    return failed


def unoccluded_instances(
    image_id: int, annotations: list[dict[str, Any]], assignments: dict[str, int]
) -> list[dict[str, Any]]:
    """The image's MaskCut masks whole (before painting), category = cluster id: what the train stage learns
    things from, as U2Seg trains on them."""
    return [
        {"id": int(ann["id"]), "image_id": image_id, "category_id": int(assignments[str(ann["id"])]),
         "segmentation": ann["segmentation"], "bbox": ann["bbox"], "area": ann.get("area", 0),
         "score": float(ann.get("score", 1.0)), "iscrowd": 0}
        for ann in annotations
    ]


def merge_one(
    run: RunDir,
    shard: str,
    image_id: int,
    entry: dict[str, Any] | None,
    annotations: list[dict[str, Any]],
    assignments: dict[str, int],
    cfg: PipelineConfig,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], int]:
    """Merge one image and write its PNGs; returns (image entry, panoptic annotation, instance
    annotations, number of instances occluded away). Raises ValueError / FileNotFoundError naming
    the bad input."""
    k, n_stuff = cfg.cluster.k, cfg.stego.n_classes
    if entry is None:
        raise ValueError(f"no entry in maskcut/instances for image {image_id}; re-run maskcut for its shard")
    height, width = int(entry["height"]), int(entry["width"])
    map_url = run.image_output_url("stego", "maps", shard, image_id)
    if not storage.exists(map_url):
        raise FileNotFoundError(f"no STEGO map {map_url}; re-run the stego stage for this shard")
    semantic = storage.read_png(map_url)
    if semantic.shape != (height, width):
        raise ValueError(f"STEGO map {map_url} is {semantic.shape}, the image is {(height, width)}; re-run stego")

    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for i, ann in enumerate(annotations):
        mask = decode_rle(ann["segmentation"])
        if mask.shape != (height, width):
            raise ValueError(f"mask {ann['id']} is {mask.shape}, the image is {(height, width)}; re-run maskcut")
        masks[i] = mask
    missing = [ann["id"] for ann in annotations if str(ann["id"]) not in assignments]
    if missing:
        raise ValueError(f"masks {missing[:5]} have no cluster assignment; re-run the cluster stage")
    cluster_ids = np.array([assignments[str(ann["id"])] for ann in annotations], dtype=np.int64)
    boxes = np.array([ann["bbox"] for ann in annotations], dtype=np.float64).reshape(-1, 4)

    segment_ids, segments = merge_image(
        masks, cluster_ids, boxes, semantic, k, n_stuff,
        stuff_overlap_max=cfg.merge.stuff_overlap_max, min_segment_area=cfg.merge.min_segment_area,
    )
    storage.write_png(run.image_output_url(STAGE, "panoptic", shard, image_id), id2rgb(segment_ids))
    semantic_png = semantic_from_segments(segment_ids, segments, k, n_stuff)
    storage.write_png(run.image_output_url(STAGE, "semantic", shard, image_id), semantic_png)

    instances = []
    for info in segments:
        index = info.pop("instance_index", None)
        if index is None:
            continue
        source = annotations[index]
        instances.append(
            {
                "id": int(source["id"]),
                "image_id": image_id,
                "category_id": info["category_id"],
                "segmentation": encode_rle(segment_ids == info["id"]),
                "bbox": info["bbox"],
                "area": info["area"],
                "score": float(source.get("score", 1.0)),
                "iscrowd": 0,
            }
        )
    panoptic = {"image_id": image_id, "file_name": png_name(shard, image_id), "segments_info": segments}
    image = image_entry(image_id, entry.get("file_name", ""), height, width)
    return image, panoptic, instances, len(annotations) - len(instances)


def finalize(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """Stream every shard's entries into merge/panoptic.json and merge/instances.json (one shard in memory)."""
    start = time.perf_counter()
    k, n_stuff = cfg.cluster.k, cfg.stego.n_classes
    all_categories = categories(k, n_stuff)
    description = f"u2seg pseudo-labels: {k} clusters, {n_stuff} STEGO classes"
    panoptic_url = run.url(STAGE, "panoptic.json")
    instances_url = run.url(STAGE, "instances.json")
    totals = {"n_images": 0, "n_segments": 0, "n_thing_segments": 0, "images_without_things": 0}
    with (
        CocoJsonWriter(panoptic_url, all_categories, description) as panoptic,
        CocoJsonWriter(instances_url, all_categories[:k], description) as instances,
    ):
        for index, _ in run.plan_shards():
            url = shard_json_url(run, shard_name(index))
            if not storage.exists(url):
                raise FileNotFoundError(f"merge finalize: {url} is missing; run merge for {shard_name(index)} first")
            part = storage.read_json(url)
            panoptic.add(part["images"], part["panoptic"])
            instances.add(part["images"], part["instances"])
            totals["n_images"] += len(part["images"])
            totals["n_segments"] += sum(len(a["segments_info"]) for a in part["panoptic"])
            totals["n_thing_segments"] += len(part["instances"])
            totals["images_without_things"] += sum(
                1 for a in part["panoptic"] if not any(s["category_id"] <= k for s in a["segments_info"])
            )
    return GlobalResult(
        stage=STAGE,
        outputs={"panoptic_json": run.rel(panoptic_url), "instances_json": run.rel(instances_url)},
        summary={
            "n_images": totals["n_images"],
            "n_segments": totals["n_segments"],
            "n_thing_segments": totals["n_thing_segments"],
            "n_stuff_segments": totals["n_segments"] - totals["n_thing_segments"],
            "images_without_things": totals["images_without_things"],
        },
        seconds=time.perf_counter() - start,
    )
