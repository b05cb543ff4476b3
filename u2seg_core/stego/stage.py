"""STEGO stage: train the head on the stored features (global step), then one semantic map per image.

Writes (relative to RUN/):
    stego/head.pt                 head + probes (trained here, or converted from `stego.pretrained`)
    stego/checkpoints/, stego/loss.json, stego/loss.png       training only
    stego/maps/<shard>/<image_id>.png   uint8 class 0..n_classes-1 at the image's original size
Training reads only the sample's token grids (features/sample.py), streamed when they do not fit in
`stego.preload_bytes`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from .. import storage
from ..backbone import build_backbone
from ..config import PipelineConfig, patch_size
from ..features.stage import training_sample
from ..io.loader import iter_batches
from ..manifest import FailureRecord, GlobalResult, ShardManifest, ShardResult, shard_name
from ..rundir import RunDir
from .checkpoint import SemanticHead, load_head, load_released, save_head
from ..store import FeatureStore
from .infer import SemanticSegmenter
from .tokens import StoredRows
from .train import train_stego

log = logging.getLogger(__name__)

STAGE = "stego"
SUMMARY_WINDOW = 50


def map_url(run: RunDir, shard: str, image_id: int) -> str:
    """Where the semantic map of an image of `shard` is written."""
    return run.image_output_url(STAGE, "maps", shard, image_id)


def head_url(run: RunDir) -> str:
    return run.url(STAGE, "head.pt")


def check_released(model: SemanticHead, cfg: PipelineConfig) -> None:
    """A released head must match the configured class count and backbone patch size."""
    stego = cfg.stego
    if stego.probe == "linear" and model.linear_probe is None:
        raise ValueError(f"{stego.pretrained} has no linear probe; use stego.probe='cluster'")
    classes = model.linear_probe.conv.out_channels if stego.probe == "linear" else model.meta["n_classes"]
    if classes != stego.n_classes:
        raise ValueError(
            f"{stego.pretrained} has {classes} {stego.probe}-probe classes but stego.n_classes={stego.n_classes}; "
            f"set stego.n_classes={classes}"
        )
    patch = model.meta.get("backbone_patch")
    arch = cfg.features.backbone.arch
    if patch is not None and patch != patch_size(arch):
        raise ValueError(
            f"{stego.pretrained} was trained on patch-{patch} DINO tokens but features.backbone.arch={arch} "
            f"has patch {patch_size(arch)}; use a matching backbone"
        )


def train_head(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """Train head + cluster probe on the stored training sample, or convert `stego.pretrained`."""
    started = time.perf_counter()
    stego = cfg.stego
    if stego.pretrained is not None:
        model = load_released(stego.pretrained)
        check_released(model, cfg)
        save_head(head_url(run), model.head, model.cluster_probe, model.meta, model.linear_probe)
        summary = {key: model.meta[key] for key in ("source", "in_dim", "dim", "n_classes")}
        return GlobalResult(
            stage=STAGE, outputs={"head": run.rel(head_url(run))}, summary=summary,
            seconds=time.perf_counter() - started,
        )
    # the stored pooled features describe whole images; STEGO's KNN runs over crops, which train_stego pools
    shards = [shard_name(index) for index, _ in run.plan_shards()]
    tokens = StoredRows(FeatureStore(run.store), training_sample(run, shards, cfg))
    image_ids = tokens.image_ids
    data_identity = storage.hash_json([run.stage_manifest("features").hash, image_ids.tolist()])
    result = train_stego(tokens, stego, run.url(STAGE), stego.device, data_identity)
    log.info(
        "STEGO head trained: %d steps (resumed from step %d) at %.2f steps/s",
        result.steps, result.resumed_from, result.steps_per_s,
    )
    tail = slice(-SUMMARY_WINDOW, None)
    summary = {  # deterministic values only: the summary is part of the stage manifest hash
        "source": "trained",
        "n_images": int(len(image_ids)),
        "n_items": result.n_items,
        "steps": result.steps,
    }
    metrics = {  # vary with non-deterministic GPU kernels: shown, never hashed
        "final_loss": float(np.mean(result.history["loss"][tail])),
        "final_probe_loss": float(np.mean(result.history["probe"][tail])),
    }
    return GlobalResult(
        stage=STAGE,
        outputs={name: run.rel(url) for name, url in result.outputs.items()},
        summary=summary,
        metrics=metrics,
        seconds=time.perf_counter() - started,
    )


def stego_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Semantic map of every image of the shard (flip TTA, cluster or linear probe, optional CRF)."""
    url = head_url(run)
    if not storage.exists(url):
        raise FileNotFoundError(f"no STEGO head {url}; run the stego stage's training step (train_head) first")
    stego = cfg.stego
    backbone_cfg = cfg.features.backbone
    backbone = build_backbone(backbone_cfg)
    if stego.inference_resolution % backbone.patch_size:
        raise ValueError(
            f"stego.inference_resolution={stego.inference_resolution} must be a multiple of the patch size "
            f"{backbone.patch_size}"
        )
    segmenter = SemanticSegmenter(backbone, load_head(url), stego.probe, stego.crf_params if stego.crf else None)
    failures: list[FailureRecord] = []
    written = 0
    started = time.perf_counter()
    batches = iter_batches(
        shard, stego.inference_resolution, backbone_cfg.batch_size, backbone_cfg.num_workers,
        stage=STAGE, resample="bilinear", max_pixels=cfg.source.max_pixels,
    )
    for batch in batches:
        failures.extend(batch.failures)
        if not batch.records:
            continue
        maps = segmenter.predict(batch.pixels)
        for record, labels, (height, width) in zip(batch.records, maps, batch.original_sizes):
            full_size = np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))
            storage.write_png(map_url(run, shard.name, record.image_id), full_size)
            written += 1
    seconds = time.perf_counter() - started
    return ShardResult(
        stage=STAGE,
        shard=shard.name,
        n_images=len(shard.images),
        n_failed=len(failures),
        failures=failures,
        outputs={"maps": run.rel(run.url(STAGE, "maps", shard.name))},
        counts={"images_per_s": written / seconds if seconds > 0 else 0.0},
        seconds=seconds,
    )
