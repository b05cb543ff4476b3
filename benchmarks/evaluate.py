"""Evaluation at COCO val2017 size: 5,000 synthetic 640x480 images, evaluated in parallel over shards.

Generates ground truth in the synthetic layout (panoptic PNGs + JSONs, box/mask instances) and a prediction
set in the merge layout (per-shard JSONs, nested PNGs): the ground truth perturbed (boxes shifted, labels
split over K = 3 x classes clusters, some stuff relabelled). Then it runs the evaluate stage's two steps,
shard evidence in worker processes and the global reduce (u2seg and hungarian protocols, PQ, box and mask
AP, semantic scores), counts every PNG read (each must be read exactly once) and prints the times side by
side: one shard serially vs all shards in parallel.

    python benchmarks/evaluate.py                      # 5000 images, 20 shards, 2 workers
    python benchmarks/evaluate.py --n 500 --workers 4
"""

from __future__ import annotations

import argparse
import collections
import os
import posixpath
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from u2seg_core import storage
from u2seg_core.coco import dataset_json, encode_rle, mask_bbox
from u2seg_core.config import EvaluateConfig
from u2seg_core.evaluate.datasets import load_ground_truth
from u2seg_core.evaluate.evidence import shard_evidence, write_evidence
from u2seg_core.evaluate.predictions import open_prediction_set
from u2seg_core.evaluate.stage import evidence_url, reduce_and_report

N_THINGS, N_STUFF, SPLIT = 8, 6, 3  # ground-truth classes; each thing class is split over SPLIT clusters


def write_fixture_png(path: str, ids: np.ndarray) -> None:
    """A panoptic PNG of the fixtures, written fast (zlib level 1, no fsync: generated data, not results)."""
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.ascontiguousarray(ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3])
    Image.fromarray(rgb).save(path, compress_level=1)


def scene(rng: np.random.Generator, height: int, width: int):
    """(H, W) segment ids and segments_info of one image: stuff bands, then 2-6 rectangles of things."""
    ids = np.zeros((height, width), np.int64)
    cuts = np.sort(rng.choice(np.arange(height // 8, height), size=2, replace=False))
    segments = []
    for band, (y0, y1) in enumerate(zip([0, *cuts], [*cuts, height])):
        category = N_THINGS + 1 + int(rng.integers(N_STUFF))
        if any(s["category_id"] == category for s in segments):
            category = N_THINGS + 1 + (category - N_THINGS) % N_STUFF
        sid = category * 1000
        if any(s["id"] == sid for s in segments):
            continue
        ids[y0:y1] = sid
        segments.append({"id": sid, "category_id": category, "iscrowd": 0})
    for k in range(int(rng.integers(2, 7))):
        h, w = int(rng.integers(30, height // 2)), int(rng.integers(30, width // 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        category = 1 + int(rng.integers(N_THINGS))
        sid = category * 1000 + k + 1
        ids[y:y + h, x:x + w] = sid
        segments.append({"id": sid, "category_id": category, "iscrowd": 0})
    present = set(np.flatnonzero(np.bincount(ids.ravel())).tolist())
    return ids, [s for s in segments if s["id"] in present]


def write_shard(args: tuple) -> tuple[list, list, list]:
    """Ground truth and prediction of one shard's images; returns its GT images, panoptic and instances."""
    shard_index, image_ids, root, height, width, seed = args
    shard = f"shard-{shard_index:05d}"
    gt_images, gt_panoptic, gt_instances = [], [], []
    pred = {"images": [], "panoptic": [], "instances": []}
    for image_id in image_ids:
        rng = np.random.default_rng([seed, image_id])
        ids, segments = scene(rng, height, width)
        name = f"{image_id:06d}.png"
        write_fixture_png(os.path.join(root, "gt", "panoptic", name), ids)
        gt_images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        infos = []
        for s in segments:
            mask = ids == s["id"]
            infos.append({**s, "bbox": mask_bbox(mask), "area": int(mask.sum())})
            if s["category_id"] <= N_THINGS:
                gt_instances.append({"id": len(gt_instances) + image_id * 100, "image_id": image_id,
                                     "category_id": s["category_id"], "bbox": infos[-1]["bbox"],
                                     "area": infos[-1]["area"], "segmentation": encode_rle(mask), "iscrowd": 0})
        gt_panoptic.append({"image_id": image_id, "file_name": name, "segments_info": infos})
        # prediction: shifted by a few pixels, things relabelled to one of SPLIT clusters of their class
        dy, dx = (int(v) for v in rng.integers(-6, 7, size=2))
        shifted = np.roll(ids, (dy, dx), axis=(0, 1))
        pred_infos = []
        for s in segments:
            mask = shifted == s["id"]
            if not mask.any():
                continue
            thing = s["category_id"] <= N_THINGS
            category = (SPLIT * (s["category_id"] - 1) + 1 + int(rng.integers(SPLIT)) if thing
                        else N_THINGS * SPLIT + s["category_id"] - N_THINGS)
            info = {"id": s["id"], "category_id": category, "iscrowd": 0, "bbox": mask_bbox(mask),
                    "area": int(mask.sum())}
            pred_infos.append(info)
            if thing:
                pred["instances"].append({**info, "image_id": image_id, "id": image_id * 100 + len(pred_infos),
                                          "segmentation": encode_rle(mask), "score": float(rng.uniform(0.5, 1.0))})
        png = posixpath.join(shard, f"{image_id}.png")
        write_fixture_png(os.path.join(root, "pred", "panoptic", png), shifted)
        pred["images"].append({"id": image_id, "file_name": name, "height": height, "width": width})
        pred["panoptic"].append({"image_id": image_id, "file_name": png, "segments_info": pred_infos})
    storage.write_json(storage.join(root, "pred", "shards", f"{shard}.json"), pred)
    return gt_images, gt_panoptic, gt_instances


def generate(root: str, n: int, shard_size: int, height: int, width: int, workers: int, seed: int) -> None:
    shards = [list(range(start + 1, min(start + shard_size, n) + 1)) for start in range(0, n, shard_size)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(write_shard, [(i, ids, root, height, width, seed) for i, ids in enumerate(shards)]))
    images = [im for part in parts for im in part[0]]
    things = [{"id": c, "name": f"thing_{c}", "isthing": 1} for c in range(1, N_THINGS + 1)]
    stuff = [{"id": N_THINGS + 1 + s, "name": f"stuff_{s}", "isthing": 0} for s in range(N_STUFF)]
    storage.write_json(storage.join(root, "gt", "annotations", "panoptic.json"),
                       dataset_json(images, [a for p in parts for a in p[1]], things + stuff, "benchmark"))
    storage.write_json(storage.join(root, "gt", "annotations", "instances.json"),
                       dataset_json(images, [a for p in parts for a in p[2]], things, "benchmark"))
    k = N_THINGS * SPLIT
    categories = [{"id": c, "name": f"cluster_{c}", "isthing": 1} for c in range(1, k + 1)] + [
        {"id": k + 1 + s, "name": f"stego_{s}", "isthing": 0} for s in range(N_STUFF)]
    storage.write_json(storage.join(root, "pred", "categories.json"), categories)


def evidence_task(args: tuple) -> tuple[str, list[str], float]:
    """The evaluate shard step of one shard; returns the PNGs it read and its seconds."""
    root, shard, cfg = args
    start = time.perf_counter()
    gt = load_ground_truth("synthetic", storage.join(root, "gt"))
    pset = open_prediction_set("pred", storage.join(root, "pred"), None, None)
    reads: list[str] = []
    evidence, _ = shard_evidence(gt, [pset], shard, None, cfg.u2seg_score_min, cfg.u2seg_box_iou,
                                 cfg.u2seg_semantic_iou, png_reads=reads)
    write_evidence(evidence_url(storage.join(root, "eval"), shard), evidence)
    return shard, reads, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="images (COCO val2017 has 5000)")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--workers", type=int, default=2, help="processes for generation and shard steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    root = args.out or tempfile.mkdtemp(prefix="u2seg-bench-evaluate-")
    try:
        start = time.perf_counter()
        generate(root, args.n, args.shard_size, args.height, args.width, args.workers, args.seed)
        generated = time.perf_counter() - start
        cfg = EvaluateConfig(ground_truth=storage.join(root, "gt"), overlays=0)
        pset = open_prediction_set("pred", storage.join(root, "pred"), None, None)
        shards = pset.shard_names()

        start = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(evidence_task, [(root, shard, cfg) for shard in shards]))
        parallel = time.perf_counter() - start
        start = time.perf_counter()
        gt = load_ground_truth("synthetic", storage.join(root, "gt"))
        report = reduce_and_report(gt, [pset], shards, cfg, storage.join(root, "eval"), None)
        reduced = time.perf_counter() - start

        reads = collections.Counter(url for _, urls, _ in results for url in urls)
        serial_per_shard = float(np.mean([seconds for _, _, seconds in results]))
        print(f"images: {args.n} ({args.width}x{args.height}), shards: {len(shards)}, workers: {args.workers}")
        print(f"generate fixtures: {generated:.1f} s")
        print(f"PNG reads: {sum(reads.values())} for {len(reads)} files "
              f"({'each once' if set(reads.values()) == {1} else 'SOME MORE THAN ONCE'}; expected {2 * args.n})")
        print(f"shard steps: {parallel:.1f} s wall in {args.workers} processes "
              f"(one shard alone: {serial_per_shard:.2f} s; serial estimate {serial_per_shard * len(shards):.1f} s, "
              f"ratio serial/parallel {serial_per_shard * len(shards) / parallel:.2f}x)")
        print(f"global reduce (mapping, PQ, box+mask AP, semantic, report): {reduced:.1f} s")
        print(f"evaluation total: {parallel + reduced:.1f} s = {args.n / (parallel + reduced):.0f} images/s")
        for row in report["rows"]:
            s = row["summary"]
            print(f"  {row['protocol']:>9}: PQ {s['PQ']:.1f}  AP_box {s['AP_box']:.1f}  AP_mask {s['AP_mask']:.1f}  "
                  f"mIoU {s['mIoU']:.1f}")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
