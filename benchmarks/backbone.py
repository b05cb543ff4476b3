"""Backbone throughput: images/s of a DINO ViT (random weights; cost does not depend on them).

Measures, side by side on each device, the keys-only pass (MaskCut) and the full pass (keys, tokens,
CLS), plus the training-free `pixel` featurizer. CPU runs a few images by default; CUDA (when
present) runs bf16 autocast at batch 16 with warm-up and synchronisation.

    python benchmarks/backbone.py                       # ViT-B/8 at 480x480, CPU (1 image) + CUDA if present
    python benchmarks/backbone.py --cpu-images 8 --cuda-batches 50
"""

from __future__ import annotations

import argparse
import time

import torch

from u2seg_core.backbone import ALL_OUTPUTS, Backbone, DinoViT, PixelFeaturizer

MODES = {"keys-only": frozenset({"keys"}), "all-outputs": ALL_OUTPUTS}


def images_per_second(
    backbone: Backbone, pixels: torch.Tensor, outputs: frozenset[str], batches: int, warmup: int
) -> float:
    """Throughput of `batches` forward passes on `pixels` (B, 3, S, S) after `warmup` passes."""
    sync = torch.cuda.synchronize if backbone.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        backbone(pixels, outputs)
    sync()
    start = time.perf_counter()
    for _ in range(batches):
        backbone(pixels, outputs)
    sync()
    return batches * len(pixels) / (time.perf_counter() - start)


def run_device(args: argparse.Namespace, device: torch.device, batch: int, batches: int, warmup: int) -> None:
    vit = DinoViT.from_checkpoint(args.arch, None, device, amp=True)
    pixel = PixelFeaturizer(device)
    pixels = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"\n{device} ({precision}), {args.arch} at {args.size}x{args.size}, batch {batch}, {batches} timed batches")
    rates = {mode: images_per_second(vit, pixels, outputs, batches, warmup) for mode, outputs in MODES.items()}
    for mode, rate in rates.items():
        print(f"  {mode:12s} {rate:9.2f} images/s")
    print(f"  keys-only / all-outputs speed-up: {rates['keys-only'] / rates['all-outputs']:.3f}x")
    pixel_rate = images_per_second(pixel, pixels, ALL_OUTPUTS, batches, warmup)
    print(f"  pixel featurizer {pixel_rate:9.2f} images/s ({pixel_rate / rates['all-outputs']:.1f}x the ViT)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base_patch8", help="vit_{small,base}_patch{8,16}")
    parser.add_argument("--size", type=int, default=480, help="square input side (multiple of the patch)")
    parser.add_argument("--cpu-images", type=int, default=1, help="images per CPU batch (0 skips the CPU)")
    parser.add_argument("--cpu-batches", type=int, default=1)
    parser.add_argument("--cuda-batch", type=int, default=16)
    parser.add_argument("--cuda-batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="CUDA warm-up batches (CPU uses 1)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.cpu_images > 0:
        run_device(args, torch.device("cpu"), args.cpu_images, args.cpu_batches, warmup=1)
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name()}")
        run_device(args, torch.device("cuda"), args.cuda_batch, args.cuda_batches, args.warmup)
    else:
        print("\nno CUDA device: GPU numbers skipped")


if __name__ == "__main__":
    main()
