"""Prediction throughput of U2Seg's K=300 model (random weights; cost does not depend on their values).

At detectron2's test size (shortest edge 800, longest at most 1333) on a real photo, side by side per image:
preprocessing (decode + PIL resize: `InputTransform`), the model (forward + detectron2's postprocessing at the
original size + panoptic combine), and writing the outputs (panoptic/semantic PNGs, RLE instances, overlay),
serially and on the predict stage's writer threads.
CUDA (when present, card named) also compares a batch against the same images one by one, in bf16 autocast.
The score threshold defaults to 0 so that every image carries the full 100 detections (the worst case for mask
pasting and writing; released weights at 0.25 keep fewer).

    python benchmarks/predict.py                          # CPU: 1 image; CUDA: batch 4 vs one by one
    python benchmarks/predict.py --cpu-images 2 --cuda-batch 8 --image photo.jpg
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from u2seg_core.config import PredictConfig
from u2seg_core.io.decode import load_image
from u2seg_core.model import ModelConfig, build_model
from u2seg_core.model.predictor import Predictor, configure
from u2seg_core.predict.writers import ImageOutputs, write_image
from u2seg_core.rundir import RunDir

DEFAULT_IMAGE = "/work/shared/data/real_images/demo1.jpg"


def timed(fn, sync) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def run_device(args: argparse.Namespace, device: torch.device, n_images: int, batch: int) -> None:
    torch.manual_seed(0)
    cfg = configure(ModelConfig.u2seg_eval_300(), score_thresh=args.score_thresh)
    predictor = Predictor.from_model(build_model(cfg), cfg, device=str(device), amp=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    precision = "bf16 autocast" if predictor.amp else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name} ({precision}), K=300 Panoptic Cascade Mask R-CNN R-50, test size 800/1333, "
          f"score threshold {args.score_thresh}")

    prep_s, (rgb, pixels) = timed(lambda: _prepare(args.image, predictor), sync)
    print(f"  image {args.image}: {rgb.shape[1]}x{rgb.shape[0]} -> model input {pixels.shape[2]}x{pixels.shape[1]}")
    predictor.predict_prepared([pixels], [rgb.shape[:2]])  # warm-up (kernel selection, allocator)
    model_s, preds = timed(lambda: [predictor.predict_prepared([pixels], [rgb.shape[:2]])[0]
                                    for _ in range(n_images)], sync)
    model_s /= n_images
    with tempfile.TemporaryDirectory() as tmp:
        write_s, _ = timed(lambda: write_image(RunDir(tmp), "predict", "shard-00000", 1, preds[0], rgb,
                                               ImageOutputs(overlay=True, raw=False)), sync)
        write_s += timed(lambda: preds[0].instance_annotations(1), sync)[0]
    total = prep_s + model_s + write_s
    print(f"  {'step':34s} {'s/image':>9s} {'share':>7s}")
    for step, seconds in (("preprocess (decode + PIL resize)", prep_s), ("model (forward + postprocess)", model_s),
                          ("write (PNGs, RLE, overlay)", write_s)):
        print(f"  {step:34s} {seconds:9.3f} {seconds / total:7.1%}")
    print(f"  {len(preds[0].scores)} instances per image; end to end {1.0 / total:.3f} images/s, "
          f"model alone {1.0 / model_s:.3f} images/s; preprocessing / model = {prep_s / model_s:.3f}")

    if args.write_images > 0:
        serial_s, threaded_s = write_rates(preds[0], rgb, args.write_images, args.write_threads)
        print(f"  writing {args.write_images} images: 1 thread {args.write_images / serial_s:.2f} images/s, "
              f"{args.write_threads} threads {args.write_images / threaded_s:.2f} images/s "
              f"({serial_s / threaded_s:.2f}x; the predict stage overlaps this with the model)")

    if batch > 1:
        images = [pixels] * batch
        sizes = [rgb.shape[:2]] * batch
        predictor.predict_prepared(images, sizes)
        batched_s, _ = timed(lambda: predictor.predict_prepared(images, sizes), sync)
        single_s, _ = timed(lambda: [predictor.predict_prepared([p], [s]) for p, s in zip(images, sizes)], sync)
        print(f"  batch of {batch}: {batch / batched_s:.2f} images/s; one by one: {batch / single_s:.2f} images/s; "
              f"batched / one-by-one speed-up {single_s / batched_s:.2f}x")


def write_rates(pred, rgb: np.ndarray, n: int, threads: int) -> tuple[float, float]:
    """Seconds to write `n` copies of one image's outputs serially, and on `threads` threads."""
    def write(i: int, root: str) -> None:
        write_image(RunDir(root), "predict", "shard-00000", i, pred, rgb, ImageOutputs(overlay=True))
        pred.instance_annotations(i)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for i in range(n):
            write(i, tmp)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, range(n), [tmp] * n))
        return serial, time.perf_counter() - start


def _prepare(url: str, predictor: Predictor) -> tuple[np.ndarray, torch.Tensor]:
    image = load_image(url)
    return np.asarray(image), predictor.transform(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="photo to predict (default: a real 2000x1496 photo)")
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--cpu-images", type=int, default=1, help="timed CPU passes (0 skips the CPU)")
    parser.add_argument("--cpu-batch", type=int, default=1, help="CPU batch for the batched comparison (1 = skip)")
    parser.add_argument("--write-images", type=int, default=4, help="images written serially vs threaded (0 skips)")
    parser.add_argument("--write-threads", type=int, default=PredictConfig().write_threads)
    parser.add_argument("--cuda-images", type=int, default=10)
    parser.add_argument("--cuda-batch", type=int, default=4)
    args = parser.parse_args()
    if not Path(args.image).is_file():
        parser.error(f"--image {args.image} does not exist")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.cpu_images > 0:
        run_device(args, torch.device("cpu"), args.cpu_images, args.cpu_batch)
    if torch.cuda.is_available():
        run_device(args, torch.device("cuda"), args.cuda_images, args.cuda_batch)
    else:
        print("\nno CUDA device: GPU numbers skipped")


if __name__ == "__main__":
    main()
