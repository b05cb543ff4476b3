"""MaskCut stage: class-agnostic instance masks of every image of a shard, plus one embedding per mask.

Writes (relative to the run directory):

    maskcut/instances/<shard>.json    COCO instances: every processed image (original width and height,
                                      the right way round), category 1 `fg`, per mask: id = image_id * 100
                                      + round (0-based), compressed RLE at the original size, bbox, area,
                                      score (`maskcut.ncut_score`), iscrowd 0
    store.zarr/maskcut/<shard>/       embeddings (m, D) float16, ann_ids (m,) int64 (aligned with the
                                      annotations, in file order)

Images that produce no mask (every mask dropped, a constant affinity, a uniform image, or an image
smaller than one patch) are listed in the JSON and counted in `counts`, not failures. Undecodable
images and per-image errors are FailureRecords; a batch that raises is retried image by image so
one bad image cannot take its batch down with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from .. import storage
from ..backbone import Backbone, build_backbone
from ..coco import dataset_json, image_entry
from ..config import MaskCutConfig, PipelineConfig
from ..io.loader import ImageBatch, iter_batches
from ..manifest import FailureRecord, ShardManifest, ShardResult
from ..rundir import RunDir
from ..store import FeatureStore
from .embed import cls_crop_embeddings, cls_crop_embeddings_batched, pooled_embeddings
from .maskcut import maskcut_batch
from .postprocess import encode_async, refine_masks, resize_to_original

STAGE = "maskcut"
GROUP = "maskcut"
CATEGORIES = [{"id": 1, "name": "fg", "supercategory": "fg"}]
MAX_MASKS_PER_IMAGE = 100  # annotation ids are image_id * 100 + round (config: n_masks <= 99)


def instances_path(shard: str) -> str:
    """Path of a shard's COCO instances JSON, relative to the run directory."""
    return f"{STAGE}/instances/{shard}.json"


@dataclass
class _Accumulator:
    """What a shard has produced so far."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("images", "masks", "images_without_masks", "degenerate", "uniform", "too_small", "crf_dropped",
             "dense_fallbacks"),
            0,
        )
    )


def maskcut_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Run MaskCut on one shard and write its instances JSON and embeddings (see the module docstring)."""
    mc = cfg.maskcut
    backbone = build_backbone(mc.backbone)
    acc = _Accumulator()
    start = time.perf_counter()
    batches = iter_batches(
        shard, mc.resolution, mc.backbone.batch_size, mc.backbone.num_workers, stage=STAGE,
        resample="lanczos", keep_original=True, max_pixels=cfg.source.max_pixels,
        pin_memory=backbone.device.type == "cuda",
    )
    for batch in batches:
        acc.failures.extend(batch.failures)
        if batch.records:
            _process_with_isolation(backbone, batch, mc, acc)
    seconds = time.perf_counter() - start

    dim = backbone.cls_dim if mc.embedding == "cls_crop" else backbone.embed_dim
    embeddings = np.concatenate(acc.embeddings) if acc.embeddings else np.zeros((0, dim), np.float32)
    ann_ids = np.array([a["id"] for a in acc.annotations], dtype=np.int64)
    description = f"u2seg MaskCut pseudo-masks ({shard.name}, tau {mc.tau}, N {mc.n_masks}, {mc.backbone.arch})"
    document = dataset_json(acc.images, acc.annotations, CATEGORIES, description)
    storage.write_json(run.url(instances_path(shard.name)), document)
    attrs = {
        "backbone": mc.backbone.arch,
        "weights": mc.backbone.weights,
        "random_init": mc.backbone.random_init,
        "embedding": mc.embedding,
        "embedding_resolution": mc.embedding_resolution,
        "u2seg_version": version("u2seg"),
    }
    FeatureStore(run.store).write_shard(GROUP, shard.name, {"embeddings": embeddings, "ann_ids": ann_ids}, attrs)
    counts: dict[str, float] = {k: float(v) for k, v in acc.counts.items()}
    counts["images_per_s"] = acc.counts["images"] / seconds if seconds > 0 else 0.0
    return ShardResult(
        stage=STAGE,
        shard=shard.name,
        n_images=len(shard.images),
        n_failed=len(acc.failures),
        failures=acc.failures,
        outputs={"instances": instances_path(shard.name), "store": run.rel(storage.join(run.store, GROUP, shard.name))},
        counts=counts,
    )


def _process_with_isolation(backbone: Backbone, batch: ImageBatch, mc: MaskCutConfig, acc: _Accumulator) -> None:
    """Process a batch; if it raises, process its images one by one and record the ones that fail."""
    try:
        _process(backbone, batch, mc, acc)
        return
    except Exception:  # noqa: BLE001 - isolate the failing image(s) below
        if len(batch.records) == 1:
            raise
    for i, record in enumerate(batch.records):
        single = ImageBatch(
            records=[record],
            pixels=batch.pixels[i : i + 1],
            original_sizes=[batch.original_sizes[i]],
            originals=[batch.originals[i]] if batch.originals is not None else None,
            failures=[],
        )
        try:
            _process(backbone, single, mc, acc)
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the shard
            acc.failures.append(
                FailureRecord(
                    image_id=record.image_id, file_name=record.file_name, stage=STAGE,
                    reason=f"maskcut failed on {record.url}: {type(exc).__name__}: {exc}",
                )
            )


def _process(backbone: Backbone, batch: ImageBatch, mc: MaskCutConfig, acc: _Accumulator) -> None:
    """MaskCut, post-processing, annotations and embeddings of one batch; appends to `acc` only on success."""
    pixels = batch.pixels.to(backbone.device, non_blocking=True)
    flat = pixels.flatten(1)
    uniform = (flat.amax(1) == flat.amin(1)).cpu()
    too_small = torch.tensor([min(size) < backbone.patch_size for size in batch.original_sizes])
    usable = ~(uniform | too_small)
    n_batch = len(batch.records)
    grid = mc.resolution // backbone.patch_size
    masks = torch.zeros(n_batch, mc.n_masks, grid, grid, dtype=torch.bool, device=backbone.device)
    scores = torch.zeros(n_batch, mc.n_masks, dtype=torch.float64)
    degenerate = torch.zeros(n_batch, dtype=torch.bool)
    tokens = None
    dense_fallbacks = 0
    if bool(usable.any()):
        rows = usable.nonzero().flatten().to(backbone.device)
        wanted = {"keys", "tokens"} if mc.embedding == "pooled" else {"keys"}
        out = backbone(pixels[rows], frozenset(wanted))
        finite = torch.isfinite(out.keys).flatten(1).all(1)
        if not bool(finite.all()):
            bad = [batch.records[int(rows[i])] for i in (~finite).nonzero().flatten().tolist()]
            raise FloatingPointError(f"backbone returned non-finite keys for {[r.file_name for r in bad]}")
        result = maskcut_batch(
            out.keys, mc.tau, mc.eps, mc.n_masks, mc.solver, mc.krylov, mc.min_area_fraction, mc.max_previous_iou
        )
        masks[rows] = result.masks
        scores[rows.cpu()] = result.scores.cpu()
        degenerate[rows.cpu()] = result.degenerate.cpu()
        dense_fallbacks = result.dense_solves
        if out.tokens is not None:
            tokens = torch.zeros(n_batch, out.tokens.shape[1], grid, grid, device=backbone.device)
            tokens[rows] = out.tokens
    refined, crf_dropped = refine_masks(pixels, masks, mc)

    images, annotations, encoded, kept_masks, kept_images, pooled_rows = [], [], [], [], [], []
    device_masks = []  # per image: (R_i, H, W) bool kept masks on the device (batched cls_crop)
    without_masks = 0
    present_rounds = refined.flatten(2).any(2).cpu()  # (B, R): one device sync for the batch
    for i, record in enumerate(batch.records):
        height, width = batch.original_sizes[i]
        images.append(image_entry(record.image_id, record.file_name, height, width))
        present = present_rounds[i].nonzero().flatten().tolist()
        resized = resize_to_original(refined[i, present], height, width)
        host = resized.cpu().numpy()
        kept = [j for j, mask in enumerate(host) if mask.any()]
        for j in kept:
            round_index = present[j]
            annotations.append(
                {
                    "id": record.image_id * MAX_MASKS_PER_IMAGE + round_index,
                    "image_id": record.image_id,
                    "category_id": 1,
                    "score": float(scores[i, round_index]),
                    "iscrowd": 0,
                }
            )
            encoded.append(encode_async(host[j]))  # segmentation, area, bbox: filled in below
            kept_masks.append(host[j])
            kept_images.append(batch.originals[i])
            pooled_rows.append((i, round_index))
        device_masks.append(resized[kept])
        without_masks += int(not kept)

    if mc.embedding == "cls_crop" and mc.embedding_crops == "batched":
        embeddings = cls_crop_embeddings_batched(
            backbone, [torch.from_numpy(o) for o in batch.originals], device_masks, mc.embedding_resolution,
            mc.backbone.batch_size,
        ).numpy()
    elif mc.embedding == "cls_crop":
        embeddings = cls_crop_embeddings(
            backbone, kept_images, kept_masks, mc.embedding_resolution, mc.backbone.batch_size
        ).numpy()
    elif pooled_rows:
        pooled = pooled_embeddings(tokens, masks)
        index = torch.tensor(pooled_rows, device=pooled.device)
        embeddings = pooled[index[:, 0], index[:, 1]].float().cpu().numpy()
    else:
        embeddings = np.zeros((0, backbone.embed_dim), np.float32)
    for annotation, fields in zip(annotations, encoded):
        annotation.update(fields.result())

    acc.images.extend(images)
    acc.annotations.extend(annotations)
    acc.embeddings.append(embeddings)
    acc.counts["images"] += n_batch
    acc.counts["masks"] += len(annotations)
    acc.counts["images_without_masks"] += without_masks
    acc.counts["degenerate"] += int(degenerate.sum())
    acc.counts["uniform"] += int(uniform.sum())
    acc.counts["too_small"] += int((too_small & ~uniform).sum())
    acc.counts["crf_dropped"] += int(crf_dropped.sum())
    acc.counts["dense_fallbacks"] += dense_fallbacks
