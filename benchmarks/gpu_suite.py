"""GPU suite (issue 14): every GPU path of u2seg measured next to its reference, in one run of <= 6 minutes.

Items (each prints its figure and the side-by-side reference measured in the same run):

  backbone     ViT-B/8 at 480x480 bf16: images/s of the keys-only pass and of the full pass (all outputs),
               and what float32 keys cost (keys_precision 'fp32_last_block' and 'fp32')
  maskcut      MaskCut end to end through the real stage step (`maskcut_shard`: decode in DataLoader workers
               -> ViT keys -> affinity -> N=3 NCut rounds -> CRF -> hole filling -> original size -> RLE + JSON,
               CLS-crop embeddings -> zarr) on >= 512 images of mixed sizes (tiles of the real photos in
               shared/data/real_images plus synthetic scenes); the per-step time breakdown; and, on a sample,
               the dense float64 reference path (scipy eigh per image, pydensecrf when installed) with the
               mask IoU between the two
  precision    MaskCut masks from bf16 keys vs float32 keys on the same images (fraction of images whose
               mask IoU < 0.99; the issue's rule: > 1 % -> compute the keys in float32)
  embeddings   the CLS-crop embedding step: all crops of a batch cut on the device at once vs one torch resize
               per crop (`MaskCutConfig.embedding_crops`), same embeddings within tolerance
  stego        STEGO head training steps/s (device vs CPU) and inference images/s with / without the CRF
  kmeans       faiss-gpu vs faiss-cpu K-means on 200k x 768, K = 300 (faiss-gpu absent: says so, and times a
               plain torch Lloyd iteration on the device instead, as what a GPU K-means would cost)
  train        Panoptic Cascade Mask R-CNN training iterations/s (u2seg_core.train, when present)

    python benchmarks/gpu_suite.py --device cuda --out gpu_suite.json     # the real run (H100 / H200)
    python benchmarks/gpu_suite.py --smoke --out /tmp/smoke.json          # tiny sizes on the CPU, < ~2 min

`--smoke` runs every item at tiny sizes (ViT-S/8, small images, CPU): those figures say the code runs, not how
fast a GPU is. The ViT has random weights unless `--weights` gives DINO ViT-B/8 (dino_vitbase8_pretrain.pth):
speed does not depend on the weights, but the precision and mask-IoU figures need the real ones to decide.

On the device machine (python 3.12 image with torch/timm/scipy, without this project's other packages), carry
wheels for: pydantic pydantic_core annotated-types typing-inspection pycocotools faiss-cpu zarr numcodecs
donfig google-crc32c (pip download --python-version 3.12 ..., see the device README; ~25 MB) and a copy of
the real photos (13 MB; `../shared` does not travel), e.g. in an ignored `.photos/`; carry both, then
    pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    pip install --no-index --no-deps --no-build-isolation --ignore-requires-python -e .   # the u2seg version
    python3 benchmarks/gpu_suite.py --device cuda --photos .photos --out $OUT/gpu_suite.json
A missing optional package (faiss-gpu, pydensecrf) turns its figure into a 'not installed' line. DINO weights
(343 MB) cannot travel in one call: without them the ViT is random (speed is the same; see `precision`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

REAL_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_images"
MIXED_SIZES = [(480, 640), (640, 480), (375, 500), (500, 375), (427, 640), (640, 427), (333, 500), (512, 512),
               (600, 800), (240, 320), (720, 1280), (500, 333)]
REQUIRED = ["timm", "scipy", "pydantic", "pycocotools", "fsspec", "PIL", "zarr", "faiss"]
OPTIONAL = {"pydensecrf": "the pydensecrf reference CRF (the torch CRF is used for both paths instead)"}


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (`--smoke` or the real one)."""

    arch: str
    resolution: int
    batch: int
    n_images: int
    reference_images: int
    precision_images: int
    precision_resolution: int
    embedding_masks: int
    stego_steps: int
    stego_cpu_steps: int
    stego_images: int
    stego_resolution: int
    kmeans_points: int
    kmeans_dim: int
    kmeans_k: int
    kmeans_iters: int
    train_iters: int
    workers: int


FULL = Sizes("vit_base_patch8", 480, 16, 512, 8, 128, 480, 96, 60, 3, 64, 448, 200_000, 768, 300, 20, 10,
             min(8, max(1, (os.cpu_count() or 2) - 4)))
SMOKE = Sizes("vit_small_patch8", 64, 4, 8, 2, 6, 128, 6, 3, 2, 2, 64, 4000, 64, 16, 5, 1, 0)


@dataclass
class Item:
    """One suite item's figures, as printed and written to the JSON."""

    name: str
    status: str = "ok"  # ok | skipped | failed
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, key: str, value: Any, line: str | None = None) -> None:
        self.figures[key] = value
        if line:
            print(f"  {line}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


@dataclass
class Context:
    """What every item gets: the device, the sizes, the scratch folder, the prechecks."""

    device: torch.device
    sizes: Sizes
    scratch: Path
    weights: str | None
    photos: Path
    available: dict[str, bool]
    smoke: bool
    _vit: Any = None

    def vit(self, keys_precision: str = "amp"):
        """The suite's one ViT (DINO weights from --weights, else seeded random weights), bf16 autocast, with
        `keys_precision` set for the next calls."""
        if self._vit is None:
            from u2seg_core.backbone import DinoViT

            path = Path(self.weights) if self.weights and self.sizes.arch == "vit_base_patch8" else None
            self._vit = DinoViT.from_checkpoint(self.sizes.arch, path, self.device, amp=True)
        self._vit.keys_precision = keys_precision
        return self._vit

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def timed(ctx: Context, fn: Callable[[], Any], repeats: int = 1, warmup: int | None = None) -> float:
    """Seconds per call of `fn` (device-synchronised), after `warmup` untimed calls (default 1, 0 for --smoke)."""
    for _ in range(warmup if warmup is not None else int(not ctx.smoke)):
        fn()
    ctx.sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    ctx.sync()
    return (time.perf_counter() - start) / repeats


# ---- prechecks -----------------------------------------------------------------------------------------------


def precheck(device: torch.device) -> dict[str, bool]:
    """Import every package an item needs; print one line per package and what a missing one skips."""
    available = {}
    for name in REQUIRED + list(OPTIONAL):
        try:
            importlib.import_module(name)
            available[name] = True
        except Exception as exc:  # noqa: BLE001 - any import failure means 'not usable here'
            available[name] = False
            why = OPTIONAL.get(name, "required: the items that need it fail")
            print(f"  {name}: not installed ({type(exc).__name__}) -> {why}")
    try:
        from importlib.metadata import version

        version("u2seg")
        available["u2seg_installed"] = True
    except Exception:  # noqa: BLE001
        available["u2seg_installed"] = False
        print("  u2seg: not installed as a package (the stage records its version) -> the maskcut item fails; "
              "pip install --no-deps --no-build-isolation -e .")
    n_gpus = 0
    if available.get("faiss"):
        import faiss

        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    available["faiss_gpu"] = n_gpus > 0
    print(f"  faiss-gpu: {'installed, ' + str(n_gpus) + ' GPU(s)' if n_gpus else 'not installed (faiss sees no GPU)'}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"  card: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
              f"compute capability {props.major}.{props.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"  card: none (CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} torch threads); torch {torch.__version__}")
    return available


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


# ---- data ----------------------------------------------------------------------------------------------------


def build_images(folder: Path, n: int, small: bool, photo_dir: Path) -> list:
    """n JPEGs of mixed sizes in `folder`: tiles of the real photos (3 of 4) and synthetic scenes (1 of 4).

    Returns ImageRecords. Tiles are random crops of the photos (downscaled once to a 1200-px long side),
    resized to a size drawn from MIXED_SIZES (halved 4 times for --smoke); synthetic scenes are 16 renders
    at 320 px, flipped and resized to mixed sizes.
    """
    from PIL import Image

    from u2seg_core.manifest import ImageRecord
    from u2seg_core.synth.scene import render_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(14)
    photos = []
    for path in sorted(photo_dir.glob("*.jpg")):
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((1200, 1200))
            photos.append(np.asarray(im))
    scenes = [render_scene(np.random.default_rng([14, i]), 320 if not small else 96).rgb for i in range(16 if not small else 4)]
    records = []
    for i in range(n):
        height, width = MIXED_SIZES[i % len(MIXED_SIZES)]
        if small:
            height, width = max(24, height // 16), max(24, width // 16)
        if photos and i % 4 != 3:
            photo = photos[i % len(photos)]
            ph, pw = photo.shape[:2]
            th, tw = int(ph * rng.uniform(0.35, 1.0)), int(pw * rng.uniform(0.35, 1.0))
            y, x = int(rng.integers(0, ph - th + 1)), int(rng.integers(0, pw - tw + 1))
            tile = photo[y : y + th, x : x + tw]
        else:
            tile = scenes[i % len(scenes)]
            tile = tile[:, ::-1] if (i // len(scenes)) % 2 else tile
        image = Image.fromarray(np.ascontiguousarray(tile)).resize((width, height), Image.Resampling.BILINEAR)
        name = f"img{i:05d}.jpg"
        image.save(folder / name, quality=90)
        records.append(ImageRecord(image_id=i + 1, file_name=name, url=str(folder / name)))
    return records


def pipeline_config(ctx: Context, **maskcut: Any):
    """PipelineConfig whose MaskCut section is the reference one at the suite's sizes and device."""
    from u2seg_core.config import BackboneConfig, PipelineConfig

    backbone = BackboneConfig(
        arch=ctx.sizes.arch, weights=ctx.weights if ctx.sizes.arch == "vit_base_patch8" else None,
        random_init=ctx.weights is None or ctx.sizes.arch != "vit_base_patch8", device=str(ctx.device),
        batch_size=ctx.sizes.batch, num_workers=ctx.sizes.workers,
    )
    cfg = PipelineConfig()
    update = {"backbone": backbone, "resolution": ctx.sizes.resolution, "embedding_resolution": ctx.sizes.resolution}
    return cfg.model_copy(update={"maskcut": cfg.maskcut.model_copy(update={**update, **maskcut})})


def mask_ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, ...) bool pairs -> (M,) IoU, 1 where both are empty."""
    a, b = a.flatten(1), b.flatten(1)
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


# ---- items ---------------------------------------------------------------------------------------------------


def item_backbone(ctx: Context, item: Item) -> None:
    from u2seg_core.backbone import ALL_OUTPUTS

    s = ctx.sizes
    pixels = torch.randint(0, 256, (s.batch, 3, s.resolution, s.resolution), dtype=torch.uint8, device=ctx.device)
    rates = {}
    for label, precision, outputs in (
        ("keys", "amp", frozenset({"keys"})),
        ("all_outputs", "amp", ALL_OUTPUTS),
        ("keys_fp32_last_block", "fp32_last_block", frozenset({"keys"})),
        ("keys_fp32", "fp32", frozenset({"keys"})),
    ):
        model = ctx.vit(precision)
        seconds = timed(ctx, lambda: model(pixels, outputs), repeats=3 if not ctx.smoke else 1)
        rates[label] = s.batch / seconds
    amp = "bf16 autocast" if not ctx.on_cpu else "float32 (CPU: autocast is CUDA-only)"
    item.add("keys_images_per_s", rates["keys"], f"{s.arch} {s.resolution}^2 {amp}, batch {s.batch}: "
             f"keys only {rates['keys']:.1f} images/s")
    item.add("all_outputs_images_per_s", rates["all_outputs"],
             f"reference, all outputs (keys, tokens, cls): {rates['all_outputs']:.1f} images/s "
             f"(keys-only pass {rates['keys'] / rates['all_outputs']:.2f}x faster)")
    item.add("keys_fp32_last_block_images_per_s", rates["keys_fp32_last_block"],
             f"keys, last block in float32: {rates['keys_fp32_last_block']:.1f} images/s "
             f"({rates['keys'] / rates['keys_fp32_last_block']:.2f}x the bf16 time)")
    item.add("keys_fp32_images_per_s", rates["keys_fp32"],
             f"keys, whole pass in float32: {rates['keys_fp32']:.1f} images/s "
             f"({rates['keys'] / rates['keys_fp32']:.2f}x the bf16 time)")


def item_maskcut(ctx: Context, item: Item) -> None:
    from u2seg_core.manifest import ShardManifest
    from u2seg_core.maskcut.stage import maskcut_shard
    from u2seg_core.rundir import RunDir

    s = ctx.sizes
    if not ctx.available.get("u2seg_installed"):
        raise RuntimeError("u2seg is not installed as a package (the stage records its version): "
                           "pip install --no-deps --no-build-isolation -e .")
    records = build_images(ctx.scratch / "images", s.n_images, ctx.smoke, ctx.photos)
    n_photos = len(list(ctx.photos.glob("*.jpg")))
    if n_photos == 0:
        item.note(f"no real photos in {ctx.photos}: synthetic scenes only (pass --photos)")
    cfg = pipeline_config(ctx)
    warm = ShardManifest(shard_index=0, source="gpu_suite", images=records[: s.batch])
    maskcut_shard(RunDir(str(ctx.scratch / "warm")), warm, cfg)  # CUDA context, kernels, cuBLAS handles
    run = RunDir(str(ctx.scratch / "run"))
    shard = ShardManifest(shard_index=0, source="gpu_suite", images=records)
    ctx.sync()
    start = time.perf_counter()
    result = maskcut_shard(run, shard, cfg)
    ctx.sync()
    seconds = time.perf_counter() - start
    rate = len(records) / seconds
    item.add("images", len(records))
    item.add("end_to_end_images_per_s", rate,
             f"end to end ({len(records)} images of mixed sizes, {s.arch} {s.resolution}^2, N=3, CRF "
             f"{'torch' if ctx.device.type == 'cuda' else 'pydensecrf'}, CLS-crop embeddings batched, batch "
             f"{s.batch}, {s.workers} decode workers): {rate:.1f} images/s ({seconds:.1f} s)")
    counts = {k: v for k, v in result.counts.items() if k != "images_per_s"}
    item.add("counts", counts, f"counts: {json.dumps(counts)}; failures {result.n_failed}")
    startup = loader_startup(ctx, records[: s.batch], cfg)
    item.add("steady_images_per_s", len(records) / max(seconds - startup, 1e-9),
             f"without the decode workers' start ({startup:.1f} s per shard, spawn): "
             f"{len(records) / max(seconds - startup, 1e-9):.1f} images/s")
    breakdown(ctx, item, records[: 4 * s.batch], cfg)
    reference(ctx, item, run, records[: s.reference_images], cfg, rate)


def loader_startup(ctx: Context, records: list, cfg) -> float:
    """Seconds from creating a shard's loader to its first batch (worker processes are spawned per shard)."""
    from u2seg_core.io.loader import iter_batches
    from u2seg_core.manifest import ShardManifest

    mc = cfg.maskcut
    shard = ShardManifest(shard_index=0, source="gpu_suite", images=records)
    start = time.perf_counter()
    batches = iter_batches(shard, mc.resolution, mc.backbone.batch_size, mc.backbone.num_workers, keep_original=True,
                           pin_memory=ctx.device.type == "cuda")
    next(batches)
    first = time.perf_counter() - start
    batches.close()
    return first


def breakdown(ctx: Context, item: Item, records: list, cfg) -> None:
    """Per-step seconds per image over a few batches (each step synchronised: the sum exceeds the pipelined rate)."""
    from u2seg_core.backbone import build_backbone
    from u2seg_core.io.loader import iter_batches
    from u2seg_core.manifest import ShardManifest
    from u2seg_core.maskcut.embed import cls_crop_embeddings_batched
    from u2seg_core.maskcut.maskcut import maskcut_batch
    from u2seg_core.maskcut.postprocess import annotation_fields, refine_masks, resize_to_original

    mc = cfg.maskcut
    backbone = build_backbone(mc.backbone)
    shard = ShardManifest(shard_index=0, source="gpu_suite", images=records)
    steps = dict.fromkeys(("decode", "vit_keys", "ncut_3_rounds", "crf_fill_drop", "resize_rle", "embeddings"), 0.0)
    n_images, fallbacks = 0, 0

    def clock(name: str, start: float) -> float:
        ctx.sync()
        now = time.perf_counter()
        steps[name] += now - start
        return now

    start = time.perf_counter()
    for batch in iter_batches(shard, mc.resolution, mc.backbone.batch_size, mc.backbone.num_workers,
                              resample="lanczos", keep_original=True, pin_memory=ctx.device.type == "cuda"):
        t = clock("decode", start)
        pixels = batch.pixels.to(ctx.device, non_blocking=True)
        keys = backbone(pixels, frozenset({"keys"})).keys
        t = clock("vit_keys", t)
        result = maskcut_batch(keys, mc.tau, mc.eps, mc.n_masks, mc.solver, mc.krylov, mc.min_area_fraction,
                               mc.max_previous_iou)
        t = clock("ncut_3_rounds", t)
        fallbacks += result.dense_solves
        refined, _ = refine_masks(pixels, result.masks, mc)
        t = clock("crf_fill_drop", t)
        device_masks = []
        for i, (height, width) in enumerate(batch.original_sizes):
            resized = resize_to_original(refined[i][refined[i].flatten(1).any(1)], height, width)
            device_masks.append(resized)
            for mask in resized.cpu().numpy():
                annotation_fields(mask)
        t = clock("resize_rle", t)
        cls_crop_embeddings_batched(backbone, [torch.from_numpy(o) for o in batch.originals], device_masks,
                                    mc.embedding_resolution, mc.backbone.batch_size)
        start = clock("embeddings", t)
        n_images += len(batch.records)
    per_image = {k: 1000 * v / max(n_images, 1) for k, v in steps.items()}
    item.add("breakdown_ms_per_image", per_image, "per step, ms/image (synchronised, "
             f"{n_images} images): " + ", ".join(f"{k} {v:.1f}" for k, v in per_image.items()))
    item.add("breakdown_dense_fallbacks", fallbacks, f"NCut solves re-done by the dense CPU solver: {fallbacks} "
             f"(of up to {n_images * mc.n_masks}; each costs about a second at 60x60 patches)")
    bound = max(per_image, key=per_image.get)
    item.add("bound_by", bound, f"largest step: {bound} ({per_image[bound] / sum(per_image.values()):.0%} of the sum)")


def reference(ctx: Context, item: Item, run, records: list, cfg, fast_rate: float) -> None:
    """Dense float64 reference path on a sample (CPU: scipy eigh, pydensecrf if installed) vs the stage's masks."""
    from u2seg_core.backbone import build_backbone
    from u2seg_core.coco import decode_rle
    from u2seg_core.io.loader import iter_batches
    from u2seg_core.manifest import ShardManifest
    from u2seg_core.maskcut.maskcut import maskcut_batch
    from u2seg_core.maskcut.postprocess import refine_masks, resize_to_original
    from u2seg_core.maskcut.stage import MAX_MASKS_PER_IMAGE, instances_path
    from u2seg_core import storage

    mc = cfg.maskcut
    crf = "pydensecrf" if ctx.available.get("pydensecrf") else "torch"
    crf_device = torch.device("cpu") if crf == "pydensecrf" else ctx.device
    if crf == "torch":
        item.note(f"pydensecrf not installed: the reference path uses the torch CRF too (on {crf_device.type}; "
                  "tests/test_gpu.py checks it against the CPU)")
    reference_cfg = mc.model_copy(update={"crf": crf, "solver": "dense"})
    backbone = build_backbone(mc.backbone)
    document = storage.read_json(run.url(instances_path("shard-00000")))
    fast = {a["id"]: decode_rle(a["segmentation"]) for a in document["annotations"]}
    shard = ShardManifest(shard_index=0, source="gpu_suite", images=records)
    ious, seconds, n_images = [], 0.0, 0
    for batch in iter_batches(shard, mc.resolution, 1, 0, resample="lanczos", keep_original=True):
        keys = backbone(batch.pixels.to(ctx.device), frozenset({"keys"})).keys.cpu()
        start = time.perf_counter()
        result = maskcut_batch(keys, mc.tau, mc.eps, mc.n_masks, "dense", mc.krylov, mc.min_area_fraction,
                               mc.max_previous_iou)
        refined, _ = refine_masks(batch.pixels.to(crf_device), result.masks.to(crf_device), reference_cfg)
        height, width = batch.original_sizes[0]
        masks = resize_to_original(refined[0], height, width).cpu()
        seconds += time.perf_counter() - start
        n_images += 1
        image_id = batch.records[0].image_id
        for round_index, mask in enumerate(masks):
            other = fast.get(image_id * MAX_MASKS_PER_IMAGE + round_index, np.zeros((height, width), bool))
            ious.append(float(mask_ious(mask[None], torch.from_numpy(other)[None])[0]))
    ious_array = np.array(ious)
    rate = n_images / seconds
    item.add("reference_images_per_s", rate, f"reference, dense float64 path (CPU scipy eigh per image + {crf} CRF, "
             f"{n_images} images, keys not timed): {rate:.3f} images/s -> fast / reference "
             f"{fast_rate / rate:.2f}x")
    item.add("mask_iou_mean", float(ious_array.mean()),
             f"mask IoU fast vs reference on {n_images} images x {mc.n_masks} rounds: mean {ious_array.mean():.4f}, "
             f"min {ious_array.min():.4f}, >= 0.99 for {np.mean(ious_array >= 0.99):.1%}")
    item.add("mask_iou_at_least_099", float(np.mean(ious_array >= 0.99)))


def item_precision(ctx: Context, item: Item) -> None:
    """bf16 vs float32 keys -> MaskCut patch masks (before the CRF: what the keys decide) on the same images."""
    from u2seg_core.io.loader import iter_batches
    from u2seg_core.manifest import ShardManifest
    from u2seg_core.maskcut.maskcut import maskcut_batch

    s = ctx.sizes
    folder = ctx.scratch / "images"
    records = build_images(folder, s.precision_images, ctx.smoke, ctx.photos) if not folder.exists() else None
    if records is None:
        from u2seg_core.manifest import ImageRecord

        names = sorted(p.name for p in folder.glob("*.jpg"))[: s.precision_images]
        records = [ImageRecord(image_id=i + 1, file_name=n, url=str(folder / n)) for i, n in enumerate(names)]
    model = ctx.vit()
    if ctx.on_cpu:
        model.amp_on_cpu = True  # CPU bf16 autocast: the smoke figure exercises the same switch
        item.note("CPU bf16 autocast on random weights at a small size: a smoke figure, the decision needs the "
                  "GPU run with DINO weights")
    elif ctx.weights is None:
        item.note("random ViT weights: the decision needs --weights (DINO ViT-B/8)")
    masks: dict[str, list[torch.Tensor]] = {p: [] for p in ("amp", "fp32_last_block", "fp32")}
    shard = ShardManifest(shard_index=0, source="gpu_suite", images=records)
    try:
        for batch in iter_batches(shard, s.precision_resolution, s.batch, s.workers, resample="lanczos"):
            pixels = batch.pixels.to(ctx.device)
            for precision in masks:
                keys = ctx.vit(precision)(pixels, frozenset({"keys"})).keys
                masks[precision].append(maskcut_batch(keys, n_masks=3).masks.cpu())
    finally:
        model.amp_on_cpu = False
        ctx.vit("amp")
    exact = torch.cat(masks["fp32"])
    for precision in ("amp", "fp32_last_block"):
        got = torch.cat(masks[precision])
        per_round = mask_ious(got.flatten(0, 1), exact.flatten(0, 1)).view(len(exact), -1)
        worst = per_round.min(1).values
        below = float((worst < 0.99).float().mean())
        label = "bf16 keys" if precision == "amp" else "bf16 blocks + float32 last block"
        item.add(f"{precision}_fraction_below_099", below,
                 f"{label} vs float32 keys on {len(exact)} images ({s.arch} {s.precision_resolution}^2): mask IoU "
                 f"< 0.99 on {below:.1%} of images "
                 f"(mean IoU {float(per_round.mean()):.4f})")
    decision = "keep bf16 keys" if item.figures["amp_fraction_below_099"] <= 0.01 else (
        "fp32_last_block" if item.figures["fp32_last_block_fraction_below_099"] <= 0.01 else "fp32")
    item.add("decision", decision, f"issue 14's rule (> 1 % of images below 0.99 -> float32 keys): {decision} "
             "(cost: see the backbone item)")


def item_embeddings(ctx: Context, item: Item) -> None:
    from u2seg_core.maskcut.embed import cls_crop_embeddings, cls_crop_embeddings_batched

    s = ctx.sizes
    rng = np.random.default_rng(3)
    images, masks = [], []
    per_image = 3
    for i in range(math.ceil(s.embedding_masks / per_image)):
        height, width = MIXED_SIZES[i % len(MIXED_SIZES)]
        if ctx.smoke:
            height, width = height // 8, width // 8
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:height, :width]
        stack = []
        for _ in range(per_image):  # ellipses: what the cost depends on is the box size, not the shape
            cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
            ry, rx = rng.uniform(0.1, 0.5) * height, rng.uniform(0.1, 0.5) * width
            stack.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)
        images.append(image)
        masks.append(np.stack(stack))
    model = ctx.vit()
    n_masks = sum(len(m) for m in masks)
    batched_out: list[torch.Tensor] = []
    per_crop_out: list[torch.Tensor] = []

    def batched() -> None:
        batched_out[:] = [cls_crop_embeddings_batched(
            model, [torch.from_numpy(im).to(ctx.device) for im in images],
            [torch.from_numpy(m).to(ctx.device) for m in masks], s.resolution, s.batch)]

    def per_crop() -> None:
        flat_images = [im for im, m in zip(images, masks) for _ in range(len(m))]
        flat_masks = [mask for m in masks for mask in m]
        per_crop_out[:] = [cls_crop_embeddings(model, flat_images, flat_masks, s.resolution, s.batch)]

    t_batched = timed(ctx, batched)
    t_per_crop = timed(ctx, per_crop)
    cosine = torch.nn.functional.cosine_similarity(batched_out[0], per_crop_out[0], dim=1)
    item.add("batched_masks_per_s", n_masks / t_batched,
             f"batched crops (one gather + two matmuls per chunk on the device): {n_masks / t_batched:.1f} masks/s")
    item.add("per_crop_masks_per_s", n_masks / t_per_crop,
             f"reference, one torch resize per crop: {n_masks / t_per_crop:.1f} masks/s -> "
             f"{t_per_crop / t_batched:.2f}x")
    item.add("min_cosine", float(cosine.min()), f"same embeddings: min cosine {float(cosine.min()):.6f} over {n_masks} "
             f"masks, max |diff| {float((batched_out[0] - per_crop_out[0]).abs().max()):.2e}")
    item.note(f"each mask is one {s.arch} pass at {s.resolution}^2 (the recipe's CLS of the crop): ~3 masks per "
              "image = 3 extra forwards per image, the step's floor")


def item_stego(ctx: Context, item: Item) -> None:
    from u2seg_core.config import StegoConfig
    from u2seg_core.stego.checkpoint import SemanticHead
    from u2seg_core.stego.infer import SemanticSegmenter
    from u2seg_core.stego.train import train_stego

    s = ctx.sizes
    channels = 768 if s.arch.startswith("vit_base") else 384
    grid = s.stego_resolution // 8
    tokens = torch.randn(32 if not ctx.smoke else 4, channels, grid, grid, generator=torch.Generator().manual_seed(0))
    figures = {}
    for label, device, steps in (("device", ctx.device, s.stego_steps), ("cpu", torch.device("cpu"), s.stego_cpu_steps)):
        if label == "cpu" and ctx.on_cpu:
            continue
        cfg = StegoConfig(steps=steps, checkpoint_every=10**6, train_grid=min(28, grid // 2 * 2), batch_size=16
                          if not ctx.smoke else 2)
        result = train_stego(tokens, cfg, str(ctx.scratch / f"stego-{label}"), str(device))
        figures[label] = result.steps_per_s
        figures[f"{label}_head"] = result
    item.add("train_steps_per_s", figures["device"], f"STEGO training ({'device' if not ctx.on_cpu else 'CPU'}, "
             f"batch {16 if not ctx.smoke else 2}, five crops, train grid 28): {figures['device']:.1f} steps/s")
    if "cpu" in figures:
        item.add("train_steps_per_s_cpu", figures["cpu"],
                 f"reference, the same steps on the CPU: {figures['cpu']:.2f} steps/s -> "
                 f"{figures['device'] / figures['cpu']:.0f}x")
    trained = figures["device_head"]
    head = SemanticHead(trained.head, trained.cluster_probe)
    model = ctx.vit()
    pixels = torch.randint(0, 256, (s.stego_images, 3, s.stego_resolution, s.stego_resolution), dtype=torch.uint8)
    cfg = StegoConfig()
    backends = [("none", None), ("torch", "torch")]
    if ctx.available.get("pydensecrf"):
        backends.append(("pydensecrf", "pydensecrf"))
    else:
        item.note("pydensecrf not installed: no per-image CPU CRF reference")
    for label, backend in backends:
        segmenter = SemanticSegmenter(model, head, crf=None if backend is None else cfg.crf_params,
                                      crf_backend=backend or "auto")
        batch = s.batch if label != "pydensecrf" else 2

        def infer() -> None:
            for first in range(0, len(pixels), batch):
                segmenter.predict(pixels[first : first + batch].to(ctx.device))

        rate = len(pixels) / timed(ctx, infer)
        item.add(f"infer_images_per_s_{label}", rate, f"inference {s.stego_resolution}^2 (flip TTA), CRF {label}: "
                 f"{rate:.1f} images/s")


def item_kmeans(ctx: Context, item: Item) -> None:
    from u2seg_core.cluster.kmeans import kmeans_fit

    s = ctx.sizes
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(s.kmeans_k, s.kmeans_dim)).astype(np.float32)
    x = centres[rng.integers(0, s.kmeans_k, s.kmeans_points)] + 0.5 * rng.normal(
        size=(s.kmeans_points, s.kmeans_dim)).astype(np.float32)
    start = time.perf_counter()
    _, cpu_stats = kmeans_fit(x, s.kmeans_k, niter=s.kmeans_iters, use_gpu="never")
    cpu_s = time.perf_counter() - start
    item.add("faiss_cpu_s", cpu_s, f"faiss-cpu K-means {s.kmeans_points} x {s.kmeans_dim}, K={s.kmeans_k}, "
             f"{s.kmeans_iters} iterations (sample {cpu_stats['n_train']}): {cpu_s:.2f} s, inertia "
             f"{cpu_stats['inertia']:.4g}")
    if ctx.available.get("faiss_gpu") and not ctx.on_cpu:
        start = time.perf_counter()
        _, gpu_stats = kmeans_fit(x, s.kmeans_k, niter=s.kmeans_iters, use_gpu="always")
        gpu_s = time.perf_counter() - start
        item.add("faiss_gpu_s", gpu_s, f"faiss-gpu: {gpu_s:.2f} s -> {cpu_s / gpu_s:.1f}x, inertia "
                 f"{gpu_stats['inertia']:.4g} ({gpu_stats['inertia'] / cpu_stats['inertia'] - 1:+.2%} vs CPU)")
    else:
        item.note("faiss-gpu not installed (or no CUDA device): no faiss-gpu figure")
        sample = torch.from_numpy(x[: cpu_stats["n_train"]]).to(ctx.device)
        lloyd_s = timed(ctx, lambda: lloyd(sample, s.kmeans_k, s.kmeans_iters), warmup=0)
        item.add("torch_lloyd_s", lloyd_s, f"instead: plain torch Lloyd on {ctx.device.type} (same sample and "
                 f"iterations, no re-seeding; not the pipeline's path): {lloyd_s:.2f} s -> {cpu_s / lloyd_s:.1f}x")


def lloyd(x: torch.Tensor, k: int, iterations: int) -> torch.Tensor:
    """(n, d) -> (k, d) centroids by plain Lloyd iterations from k seeded rows (timing stand-in for faiss-gpu)."""
    centroids = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:k].to(x.device)].clone()
    for _ in range(iterations):
        labels = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).clamp_min(1).unsqueeze(1)
        centroids = sums / counts
    return centroids


def item_train(ctx: Context, item: Item) -> None:
    """Panoptic Cascade Mask R-CNN training iterations/s through u2seg_core.train's `training_losses`."""
    needed = ("u2seg_core.train.forward", "u2seg_core.train.solver", "u2seg_core.model.meta_arch")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        item.status = "skipped"
        item.note(f"not available yet: {', '.join(missing)}")
        return
    from u2seg_core.config import SolverConfig
    from u2seg_core.model import ModelConfig, build_model
    from u2seg_core.train.forward import GroundTruth, training_losses
    from u2seg_core.train.solver import build_optimizer

    cfg = ModelConfig.demo() if ctx.smoke else ModelConfig.u2seg_eval_300()
    model = build_model(cfg).to(ctx.device).train()
    optimizer = build_optimizer(model, SolverConfig())
    height, width = (64, 96) if ctx.smoke else (800, 1216)
    gen = torch.Generator().manual_seed(0)

    def example(seed: int) -> dict[str, Any]:
        boxes = torch.tensor([[10.0, 12.0, width / 2, height / 2], [width / 3, height / 4, width - 5.0, height - 7.0]])
        masks = torch.zeros(2, height, width, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        return {
            "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen),
            "instances": GroundTruth(boxes, torch.tensor([0, 1]), masks),
            "sem_seg": torch.randint(0, 3, (height, width), generator=gen),
            "seed": seed, "height": height, "width": width,
        }

    inputs = [example(0), example(1)]

    def iteration() -> None:
        losses = training_losses(model, inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    seconds = timed(ctx, iteration, repeats=ctx.sizes.train_iters)
    item.add("iterations_per_s", 1 / seconds, f"training {'demo' if ctx.smoke else 'u2seg_eval_300 (R50)'} model, "
             f"2 images of {height}x{width} per iteration: {1 / seconds:.2f} iterations/s "
             f"({2 / seconds:.1f} images/s)")


ITEMS: list[tuple[str, Callable[[Context, Item], None], float]] = [
    # name, function, rough share of the time budget it needs before it starts
    ("backbone", item_backbone, 0.05),
    ("maskcut", item_maskcut, 0.35),
    ("precision", item_precision, 0.10),
    ("embeddings", item_embeddings, 0.05),
    ("stego", item_stego, 0.08),
    ("kmeans", item_kmeans, 0.08),
    ("train", item_train, 0.05),
]


def summary_table(items: list[Item]) -> None:
    """The final table: one row per figure."""
    print("\n== summary ==")
    print(f"{'item':<11} {'status':<8} {'figure':<38} value")
    for item in items:
        scalars = {k: v for k, v in item.figures.items() if isinstance(v, (int, float, str))}
        if not scalars:
            print(f"{item.name:<11} {item.status:<8} {'-':<38} {item.notes[-1] if item.notes else ''}")
        for key, value in scalars.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"{item.name:<11} {item.status:<8} {key:<38} {shown}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (the real run) or cpu; default: cuda when present")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (< ~2 minutes): runs, not speed")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    parser.add_argument("--weights", default=None, help="DINO ViT-B/8 checkpoint (else random weights)")
    parser.add_argument("--photos", type=Path, default=REAL_IMAGES, help="folder of real .jpg photos to tile")
    parser.add_argument("--items", default=",".join(name for name, _, _ in ITEMS), help="comma-separated subset")
    parser.add_argument("--budget-s", type=float, default=330.0, help="items that would start past it are skipped")
    args = parser.parse_args()
    os.environ.setdefault("U2SEG_OFFLINE", "1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda was asked for but CUDA is not available; use --device cpu or --smoke", file=sys.stderr)
        return 2
    wanted = [name.strip() for name in args.items.split(",") if name.strip()]
    unknown = sorted(set(wanted) - {name for name, _, _ in ITEMS})
    if unknown:
        print(f"unknown items {unknown}; choose from {[name for name, _, _ in ITEMS]}", file=sys.stderr)
        return 2
    if args.smoke:  # one thread: on a small shared CPU, multithreaded kernels spin-wait and run slower
        torch.set_num_threads(1)
        threadpool_limits(1)
    started = time.perf_counter()
    print(f"u2seg GPU suite ({'smoke, ' if args.smoke else ''}device {device}, {card_name(device)})")
    print("== prechecks ==")
    available = precheck(device)
    results: list[Item] = []
    with tempfile.TemporaryDirectory(prefix="u2seg-gpu-suite-") as scratch:
        ctx = Context(device, SMOKE if args.smoke else FULL, Path(scratch), args.weights, args.photos, available,
                      args.smoke)
        for name, function, share in ITEMS:
            if name not in wanted:
                continue
            item = Item(name)
            results.append(item)
            print(f"\n== {name}{' (CPU smoke)' if ctx.on_cpu else ''} ==", flush=True)
            left = args.budget_s - (time.perf_counter() - started)
            if left < share * args.budget_s * 0.5:
                item.status = "skipped"
                item.note(f"time budget: {left:.0f} s left of {args.budget_s:.0f} s")
                continue
            item_start = time.perf_counter()
            try:
                function(ctx, item)
            except Exception as exc:  # noqa: BLE001 - one broken item must not hide the others' figures
                item.status = "failed"
                item.note(f"FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc(limit=3)
            item.seconds = time.perf_counter() - item_start
            print(f"  ({item.seconds:.1f} s)", flush=True)
    summary_table(results)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s")
    if args.out:
        from u2seg_core import storage

        storage.write_json(args.out, {
            "device": str(device), "card": card_name(device), "smoke": args.smoke, "torch": torch.__version__,
            "weights": args.weights, "total_s": total, "prechecks": available,
            "items": {i.name: {"status": i.status, "seconds": i.seconds, "figures": i.figures, "notes": i.notes}
                      for i in results},
        })
        print(f"figures written to {args.out}")
    return 0 if all(i.status != "failed" for i in results) else 1


if __name__ == "__main__":
    sys.exit(main())
