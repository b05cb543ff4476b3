"""STEGO throughput: training steps/s from stored features vs recomputing the backbone, and inference images/s.

Training runs the same optimisation step (`u2seg_core.stego.train.training_step`: head + cluster probe,
correspondence loss, KNN positives) twice, side by side on each device:
  * stored:    the batch's features are read from the stored token array (what `train_stego` does);
  * recompute: the backbone runs on the batch's images and on their KNN positives at every step (what
               the original STEGO does).
Inference runs `SemanticSegmenter` (flip TTA, cluster probe) without and with the dense CRF (pydensecrf
per image on the CPU, the batched torch CRF on CUDA). ViT weights are random (cost does not depend on
them); images are random.

    python benchmarks/stego.py                        # ViT-S/16 at 224, CPU (+ CUDA if present)
    python benchmarks/stego.py --full                 # ViT-B/8 at 224 (STEGO's training setting), dim 70, 27 classes
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from u2seg_core.backbone import Backbone, DinoViT
from u2seg_core.config import StegoConfig
from u2seg_core.stego.checkpoint import SemanticHead
from u2seg_core.stego.crops import TrainingItems
from u2seg_core.stego.head import StegoHead
from u2seg_core.stego.infer import SemanticSegmenter
from u2seg_core.stego.knn import knn_table
from u2seg_core.stego.probe import ClusterProbe
from u2seg_core.stego.train import BatchSampler, training_step

TOKENS = frozenset({"tokens"})


class RecomputedItems:
    """Same interface as `TrainingItems` (crop 'none'), but every gather runs the backbone on the images."""

    def __init__(self, images: torch.Tensor, backbone: Backbone):
        self.images = images
        self.backbone = backbone
        self.device = backbone.device

    def gather(self, items: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(self.images[torch.as_tensor(items)], TOKENS).tokens.float()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(
    items: TrainingItems | RecomputedItems, knn: np.ndarray, cfg: StegoConfig, channels: int, steps: int,
    device: torch.device,
) -> float:
    torch.manual_seed(cfg.seed)
    head = StegoHead(channels, cfg.dim, cfg.dropout).to(device).train()
    probe = ClusterProbe(cfg.dim, cfg.n_classes).to(device).train()
    optimizers = (torch.optim.Adam(head.parameters(), lr=cfg.lr), torch.optim.Adam(probe.parameters(), lr=cfg.probe_lr))
    sampler = BatchSampler(len(knn), cfg.batch_size, cfg.seed)
    training_step(items, knn, sampler, head, probe, optimizers, cfg, 0)  # warm-up
    sync(device)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        training_step(items, knn, sampler, head, probe, optimizers, cfg, step)
    sync(device)
    return steps / (time.perf_counter() - start)


def images_per_second(segmenter: SemanticSegmenter, pixels: torch.Tensor, batches: int) -> float:
    segmenter.predict(pixels)  # warm-up
    sync(segmenter.backbone.device)
    start = time.perf_counter()
    for _ in range(batches):
        segmenter.predict(pixels)
    sync(segmenter.backbone.device)
    return batches * len(pixels) / (time.perf_counter() - start)


def run_device(args: argparse.Namespace, device: torch.device, steps: int) -> None:
    backbone = DinoViT.from_checkpoint(args.arch, None, device, amp=True)
    cfg = StegoConfig(dim=args.dim, n_classes=args.classes, batch_size=args.batch, crop="none",
                      train_grid=args.resolution // backbone.patch_size)
    images = torch.randint(0, 256, (args.images, 3, args.resolution, args.resolution), dtype=torch.uint8)
    with torch.no_grad():
        tokens = torch.cat([
            backbone(images[i : i + args.batch], TOKENS).tokens.half().cpu() for i in range(0, args.images, args.batch)
        ]).numpy()
    stored = TrainingItems(tokens, "none", cfg.train_grid, device)
    knn = knn_table(stored.pooled(), cfg.knn, use_gpu=device.type == "cuda")
    precision = "bf16 autocast backbone" if device.type == "cuda" else "fp32"
    print(f"\n{device} ({precision}): {args.arch} at {args.resolution}px, batch {cfg.batch_size}, "
          f"dim {cfg.dim}, {cfg.n_classes} classes, {steps} timed steps")
    stored_rate = steps_per_second(stored, knn, cfg, backbone.embed_dim, steps, device)
    recomputed = RecomputedItems(images.to(device), backbone)
    recompute_rate = steps_per_second(recomputed, knn, cfg, backbone.embed_dim, steps, device)
    print(f"  training, stored features     {stored_rate:9.2f} steps/s")
    print(f"  training, recomputed backbone {recompute_rate:9.2f} steps/s")
    print(f"  stored / recompute speed-up: {stored_rate / recompute_rate:.1f}x")

    torch.manual_seed(0)
    model = SemanticHead(StegoHead(backbone.embed_dim, cfg.dim), ClusterProbe(cfg.dim, cfg.n_classes))
    side = args.infer_resolution
    pixels = torch.randint(0, 256, (args.infer_batch, 3, side, side), dtype=torch.uint8)
    batches = args.infer_batches if device.type == "cuda" else 1
    print(f"  inference at {args.infer_resolution}px, batch {args.infer_batch}, {batches} timed batches:")
    for name, crf in (("no CRF", None), ("with CRF", cfg.crf_params)):
        rate = images_per_second(SemanticSegmenter(backbone, model, crf=crf), pixels.to(device), batches)
        print(f"    {name:9s} {rate:9.2f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small_patch16", help="vit_{small,base}_patch{8,16}")
    parser.add_argument("--resolution", type=int, default=224, help="training image side (STEGO: 224)")
    parser.add_argument("--images", type=int, default=32, help="training images (stored features are computed once)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--cpu-steps", type=int, default=5, help="timed CPU steps (0 skips the CPU)")
    parser.add_argument("--cuda-steps", type=int, default=50)
    parser.add_argument("--infer-resolution", type=int, default=224)
    parser.add_argument("--infer-batch", type=int, default=4)
    parser.add_argument("--infer-batches", type=int, default=10, help="timed CUDA inference batches (CPU: 1)")
    parser.add_argument("--full", action="store_true", help="ViT-B/8, batch 16, dim 70, 27 classes, 448px inference")
    args = parser.parse_args()
    if args.full:
        args.arch, args.batch, args.dim, args.classes, args.images = "vit_base_patch8", 16, 70, 27, 64
        args.infer_resolution, args.infer_batch = 448, 8
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.cpu_steps > 0:
        run_device(args, torch.device("cpu"), args.cpu_steps)
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name()}")
        run_device(args, torch.device("cuda"), args.cuda_steps)
    else:
        print("\nno CUDA device: GPU numbers skipped")


if __name__ == "__main__":
    main()
