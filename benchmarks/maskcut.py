"""MaskCut throughput: the `dense` reference solver path against the batched `fast` path, side by side.

Keys come from one backbone forward pass over synthetic scenes (random ViT weights: the cost does not
depend on them), shared by both paths. Timed per path: keys -> masks (affinity, N rounds of NCut
eigensolve, bipartition, seed component, drop rules). Printed: images/s of each path, the speed-up,
and their agreement (mean mask IoU over all rounds, identical round-0 bipartitions); the two paths are
timed interleaved so that load changes on a shared machine hit both. The speed-up grows with the
patch count (dense eigh is O(N^3), the Krylov solve O(N^2)): about 3-10x at 30x30, 20-60x at 60x60
on a busy 2-core VM. With a CUDA
device it also times the whole per-image pipeline on the GPU (forward, MaskCut, torch CRF, hole
filling, drop rule, CLS-crop embeddings) at the default batch, with peak GPU memory.

    python benchmarks/maskcut.py                         # ViT-B/8 at 480x480, N = 3, CPU (+ CUDA if present)
    python benchmarks/maskcut.py --small                 # ViT-S/8 at 240x240 (a quick run)
    python benchmarks/maskcut.py --dense-images 4 --fast-images 32 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from u2seg_core.backbone import Backbone, DinoViT
from u2seg_core.config import MaskCutConfig
from u2seg_core.maskcut import MaskCutResult, maskcut_batch
from u2seg_core.maskcut.embed import cls_crop_embeddings
from u2seg_core.maskcut.postprocess import refine_masks
from u2seg_core.synth.scene import render_scene


def scenes(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) uint8 synthetic scenes."""
    rgb = np.stack([render_scene(np.random.default_rng([2024, i]), size).rgb for i in range(n)])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()


def keys_of(backbone: Backbone, pixels: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    """Keys (n, C, h, w) on the backbone's device and the forward time per image."""
    start = time.perf_counter()
    chunks = [pixels[i : i + batch] for i in range(0, len(pixels), batch)]
    keys = torch.cat([backbone(chunk, frozenset({"keys"})).keys for chunk in chunks])
    return keys, (time.perf_counter() - start) / len(pixels)


def run_path(keys: torch.Tensor, solver: str, batch: int, n_masks: int) -> tuple[list[MaskCutResult], float]:
    sync = torch.cuda.synchronize if keys.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    results = [maskcut_batch(keys[i : i + batch], n_masks=n_masks, solver=solver) for i in range(0, len(keys), batch)]
    sync()
    return results, time.perf_counter() - start


def agreement(dense: MaskCutResult, fast: MaskCutResult) -> tuple[float, float]:
    """(mean IoU over all rounds' masks, both empty = 1; fraction of identical round-0 bipartitions)."""
    a, b = dense.masks.flatten(2).cpu(), fast.masks.flatten(2).cpu()
    inter, union = (a & b).sum(-1).double(), (a | b).sum(-1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    same = (dense.bipartition.cpu() == fast.bipartition.cpu()).flatten(1).all(1).double()
    return float(iou.mean()), float(same.mean())


def end_to_end(backbone: Backbone, pixels: torch.Tensor, cfg: MaskCutConfig, batches: int) -> None:
    """Forward + MaskCut (fast) + torch CRF + hole filling + drop rule + CLS-crop embeddings, on CUDA."""
    device = backbone.device
    batch = cfg.backbone.batch_size

    def one(chunk: torch.Tensor) -> int:
        chunk = chunk.to(device)
        keys = backbone(chunk, frozenset({"keys"})).keys
        result = maskcut_batch(keys, cfg.tau, cfg.eps, cfg.n_masks, cfg.solver)
        refined, _ = refine_masks(chunk, result.masks, cfg)
        host = refined.cpu().numpy()
        images = chunk.permute(0, 2, 3, 1).cpu().numpy()
        kept = [(images[b], host[b, r]) for b in range(len(host)) for r in range(host.shape[1]) if host[b, r].any()]
        cls_crop_embeddings(backbone, [k[0] for k in kept], [k[1] for k in kept], cfg.embedding_resolution, batch)
        return len(kept)

    one(pixels[:batch])  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    masks = sum(one(pixels[(i * batch) % len(pixels) :][:batch]) for i in range(batches))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"  end to end (forward + MaskCut fast + torch CRF + CLS-crop embeddings), batch {batch}: "
        f"{batches * batch / seconds:.1f} images/s, {masks / (batches * batch):.2f} masks/image, "
        f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


def compare(args: argparse.Namespace, device: torch.device) -> None:
    backbone = DinoViT.from_checkpoint(args.arch, None, device, amp=True)
    n = max(args.dense_images, args.fast_images)
    pixels = scenes(n, args.size)
    keys, forward = keys_of(backbone, pixels.to(device), args.batch)
    grid = keys.shape[-1]
    print(
        f"\n{device}: {args.arch} (random weights) at {args.size}x{args.size} -> {grid}x{grid} = {grid * grid} "
        f"patches, N = {args.n_masks}, tau 0.15; backbone forward {forward * 1000:.0f} ms/image (not in the rates)"
    )
    run_path(keys[:1], "fast", 1, args.n_masks)  # warm-up (CUDA context, kernels)
    # Interleaved (one dense image, then one pass of the fast path over its images), so that a change
    # of machine load during the run hits both paths alike.
    dense, dense_s, fast_s, fallbacks = [], 0.0, 0.0, 0
    for i in range(args.dense_images):
        results, seconds = run_path(keys[i : i + 1], "dense", 1, args.n_masks)
        dense += results
        dense_s += seconds
        results, seconds = run_path(keys[: args.fast_images], "fast", args.batch, args.n_masks)
        fast_s += seconds
        fallbacks += sum(r.dense_solves for r in results)
    dense_rate = args.dense_images / dense_s
    fast_rate = args.dense_images * args.fast_images / fast_s
    fast_on_dense, _ = run_path(keys[: args.dense_images], "fast", 1, args.n_masks)
    pairs = [agreement(d, f) for d, f in zip(dense, fast_on_dense)]
    iou = float(np.mean([p[0] for p in pairs]))
    same = float(np.mean([p[1] for p in pairs]))
    print(f"  dense (scipy float64 generalised eigh): {dense_rate:8.3f} images/s  ({args.dense_images} images)")
    print(
        f"  fast  (batched block Krylov, batch {args.batch}): {fast_rate:8.3f} images/s  "
        f"({args.fast_images} images x {args.dense_images} passes, {fallbacks} dense fallbacks)"
    )
    print(f"  speed-up fast / dense: {fast_rate / dense_rate:.1f}x")
    print(
        f"  agreement on {args.dense_images} images: mean mask IoU {iou:.4f}, "
        f"identical round-0 bipartitions {same:.1%}"
    )
    if device.type == "cuda":
        cfg = MaskCutConfig()
        end_to_end(backbone, scenes(cfg.backbone.batch_size * 2, args.size), cfg, args.e2e_batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base_patch8")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--small", action="store_true", help="vit_small_patch8 at 240x240")
    parser.add_argument("--n-masks", type=int, default=3)
    parser.add_argument("--dense-images", type=int, default=2)
    parser.add_argument("--fast-images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--e2e-batches", type=int, default=20, help="CUDA end-to-end batches")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch and BLAS); default all")
    parser.add_argument("--cpu", action="store_true", help="skip CUDA even if present")
    args = parser.parse_args()
    if args.small:
        args.arch, args.size = "vit_small_patch8", 240
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with threadpool_limits(threads):
        compare(args, torch.device("cpu"))
    if torch.cuda.is_available() and not args.cpu:
        args.fast_images, args.batch = max(args.fast_images, 64), 16
        compare(args, torch.device("cuda"))


if __name__ == "__main__":
    main()
