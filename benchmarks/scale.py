"""ImageNet scale, simulated: time and peak memory of each stage's data path at 10 k .. 1.28 M listed images.

The source is `fakeimagenet://<N>/train/<class>/<class>_<i>.bmp`, an fsspec filesystem that lists N images
in 1000 class folders (as s3fs lists a bucket: one dict entry per object) and serves a small generated
image (96 x 96 BMP) only when a file is opened. Every measurement runs in its own subprocess, so its peak
RSS (VmHWM, which exec resets, unlike ru_maxrss) is its own:

    plan             the plan stage's global step (list, bucket, write the shard manifests) over N images
    plan-hash        the plan stage's shard step (read + hash every image) on 2 shards of that plan
    features         the features stage (pixel featurizer, stored STEGO sample) on the first
                     --feature-images images of the first shard (the featurizer dominates: ~60 ms/image)
    stego-train      STEGO training (pixel-feature-shaped grids in the store, streamed: preload_bytes=0)
                     on a sample of M images, M in --stego-sizes (memory must not grow with M)
    merge-finalize   merge finalize streaming N images' shard JSONs (generated, 4 segments and 3 RLE
                     instances per image) into panoptic.json / instances.json (memory must not grow with N)

    python benchmarks/scale.py --sizes 10000 --stego-sizes 1000 --merge-sizes 10000   # quick (~1 min)
    python benchmarks/scale.py                                                        # full (many minutes)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any

import fsspec
import numpy as np
from fsspec.spec import AbstractFileSystem

N_CLASSES = 1000
IMAGE_SIDE = 96
SHARD_SIZE = 1000


class FakeImageNet(AbstractFileSystem):
    """Read-only fsspec filesystem: `<N>/train/<class>/<class>_<i>.bmp`, N images over 1000 classes."""

    protocol = "fakeimagenet"
    root_marker = ""

    @staticmethod
    def _split(path: str) -> tuple[int, list[str]]:
        parts = [p for p in FakeImageNet._strip_protocol(path).split("/") if p]
        return int(parts[0]), parts[1:]

    @staticmethod
    def class_name(index: int) -> str:
        return f"n{index:08d}"

    def _class_files(self, n: int, index: int) -> list[str]:
        count = n // N_CLASSES + (1 if index < n % N_CLASSES else 0)
        name = self.class_name(index)
        return [f"{name}_{i}.bmp" for i in range(count)]

    def _file_info(self, path: str) -> dict[str, Any]:
        return {"name": path, "size": IMAGE_BYTES, "type": "file", "ETag": f'"{zlib.crc32(path.encode()):010d}"'}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path).rstrip("/")
        n, parts = self._split(path)
        if len(parts) <= 2:
            return {"name": path, "size": 0, "type": "directory"}
        if parts[2] in self._class_files(n, int(parts[1][1:])):
            return self._file_info(path)
        raise FileNotFoundError(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path).rstrip("/")
        n, parts = self._split(path)
        if not parts:
            entries = [{"name": f"{path}/train", "size": 0, "type": "directory"}]
        elif len(parts) == 1:
            names = [f"{path}/{self.class_name(c)}" for c in range(N_CLASSES)]
            entries = [{"name": name, "size": 0, "type": "directory"} for name in names]
        else:
            entries = [self._file_info(f"{path}/{f}") for f in self._class_files(n, int(parts[1][1:]))]
        return entries if detail else [e["name"] for e in entries]

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kw: Any):
        path = self._strip_protocol(path).rstrip("/")
        n, parts = self._split(path)
        base = f"{n}/train"
        classes = range(N_CLASSES) if len(parts) < 2 else [int(parts[1][1:])]
        out = {}
        for c in classes:
            folder = f"{base}/{self.class_name(c)}"
            for f in self._class_files(n, c):
                out[f"{folder}/{f}"] = self._file_info(f"{folder}/{f}")
        return out if detail else sorted(out)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> io.BytesIO:
        if "r" not in mode:
            raise PermissionError("fakeimagenet is read-only")
        return io.BytesIO(fake_image(self._strip_protocol(path)))


def fake_image(path: str) -> bytes:
    """A deterministic 96 x 96 RGB BMP for `path` (a gradient tinted by the path's hash)."""
    from PIL import Image

    seed = zlib.crc32(path.encode())
    tint = np.random.default_rng(seed).integers(0, 256, 3, dtype=np.uint8)
    ramp = np.linspace(0, 255, IMAGE_SIDE, dtype=np.uint8)
    pixels = ((ramp[:, None, None].astype(np.uint16) + tint[None, None, :]) // 2).astype(np.uint8)
    pixels = np.broadcast_to(pixels, (IMAGE_SIDE, IMAGE_SIDE, 3)).copy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


IMAGE_BYTES = 54 + IMAGE_SIDE * IMAGE_SIDE * 3
fsspec.register_implementation(FakeImageNet.protocol, FakeImageNet, clobber=True)


# ---- the measured steps (each runs in its own subprocess) ----------------------------------------


def config(n: int, **features: Any):
    from u2seg_core.config import BackboneConfig, FeaturesConfig, PipelineConfig, SourceConfig

    pixel = BackboneConfig(arch="pixel", batch_size=32, num_workers=0, device="cpu")
    return PipelineConfig.demo(
        source=SourceConfig(uri=f"fakeimagenet://{n}/", kind="imagenet", shard_size=SHARD_SIZE),
        features=FeaturesConfig(backbone=pixel, resolution=224, **features),
    )


def write_stage_manifest(run, stage: str, summary: dict[str, Any]) -> None:
    from u2seg_core import storage
    from u2seg_core.manifest import StageManifest

    manifest = StageManifest(stage=stage, stage_version="bench", code_version="bench", config={}, config_hash="",
                             summary=summary)
    storage.write_json(run.stage_manifest_url(stage), manifest.model_dump(mode="json"))


def measure_plan(run_dir: str, n: int, _: dict) -> dict[str, Any]:
    from u2seg_core.io.plan import plan_step
    from u2seg_core.rundir import RunDir

    run = RunDir(run_dir)
    result = plan_step(run, config(n))
    write_stage_manifest(run, "plan", result.summary)
    return {"shards": result.summary["n_shards"]}


def measure_plan_hash(run_dir: str, n: int, _: dict) -> dict[str, Any]:
    from u2seg_core.io.plan import hash_shard
    from u2seg_core.rundir import RunDir

    run = RunDir(run_dir)
    shards = [load_shard(run, i) for i, _ in run.plan_shards()[:2]]
    images = sum(hash_shard(run, shard, config(n)).n_images for shard in shards)
    return {"images": images}


def load_shard(run, index: int):
    from u2seg_core import storage
    from u2seg_core.manifest import ShardManifest

    return ShardManifest.model_validate(storage.read_json(run.shard_manifest_url(index)))


def measure_features(run_dir: str, n: int, options: dict) -> dict[str, Any]:
    from u2seg_core.features import features_shard
    from u2seg_core.rundir import RunDir

    run = RunDir(run_dir)
    shard = load_shard(run, run.plan_shards()[0][0])
    shard = shard.model_copy(update={"images": shard.images[: options["images"]]})
    result = features_shard(run, shard, config(n))
    return {"images": result.n_images, "stored_grids": int(result.counts["stored_grids"])}


def measure_stego(run_dir: str, n: int, options: dict) -> dict[str, Any]:
    from u2seg_core.features import training_sample
    from u2seg_core.manifest import shard_name
    from u2seg_core.rundir import RunDir
    from u2seg_core.stego.tokens import StoredRows
    from u2seg_core.stego.train import train_stego
    from u2seg_core.store import FeatureStore

    run = RunDir(run_dir)
    cfg = config(n)
    cfg = cfg.model_copy(update={"stego": cfg.stego.model_copy(
        update={"steps": options["steps"], "preload_bytes": 0, "checkpoint_every": 10**6})})
    shards = [shard_name(i) for i, _ in run.plan_shards()]
    tokens = StoredRows(FeatureStore(run.store), training_sample(run, shards, cfg))
    result = train_stego(tokens, cfg.stego, run.url("stego"), device="cpu")
    return {"items": result.n_items, "steps_per_s": round(result.steps_per_s, 1)}


def measure_merge(run_dir: str, n: int, _: dict) -> dict[str, Any]:
    from u2seg_core.merge.stage import finalize
    from u2seg_core.rundir import RunDir

    result = finalize(RunDir(run_dir), config(n))
    return {"segments": result.summary["n_segments"]}


MEASURES = {
    "plan": measure_plan, "plan-hash": measure_plan_hash, "features": measure_features,
    "stego-train": measure_stego, "merge-finalize": measure_merge,
}


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def child(what: str, run_dir: str, n: int, options: dict) -> None:
    """Subprocess entry: run one measurement, print one JSON line."""
    import torch

    import u2seg_core.features.stage  # noqa: F401  (imports count in the baseline, not in the step)
    import u2seg_core.merge.stage  # noqa: F401
    import u2seg_core.stego.train  # noqa: F401

    torch.set_num_threads(1)
    before = peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    extra = MEASURES[what](run_dir, n, options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mb": peak_rss_mb(), "before_mb": before, **extra}))


# ---- fixtures written by the parent (not measured) ------------------------------------------------


def prepare_stego_store(run_dir: str, m: int) -> None:
    """A run whose plan has m images and whose store holds m pixel-feature-shaped token grids (all sampled)."""
    from u2seg_core.backbone import PixelFeaturizer
    from u2seg_core.features.sample import image_key
    from u2seg_core.manifest import shard_name
    from u2seg_core.rundir import RunDir
    from u2seg_core.store import FeatureStore

    run = RunDir(run_dir)
    store = FeatureStore(run.store)
    channels, grid = PixelFeaturizer().embed_dim, 224 // 8
    rng = np.random.default_rng(0)
    shards = []
    for index, lo in enumerate(range(0, m, SHARD_SIZE)):
        ids = np.arange(lo, min(lo + SHARD_SIZE, m)) + 1
        tokens = rng.standard_normal((len(ids), channels, grid, grid)).astype(np.float16)
        attrs = {"token_image_ids": ids.tolist(), "token_keys": [image_key(str(i), 0) for i in ids],
                 "store_fraction": 1.0}
        store.write_shard("features", shard_name(index), {"tokens": tokens, "image_ids": ids}, attrs)
        shards.append([index, ""])
    write_stage_manifest(run, "plan", {"n_images": m, "n_shards": len(shards), "shards": shards})


def prepare_merge_shards(run_dir: str, n: int) -> None:
    """A run whose merge/shards/*.json hold n images (4 segments, 3 RLE instances each), SHARD_SIZE per shard."""
    from u2seg_core import storage
    from u2seg_core.coco import encode_rle
    from u2seg_core.manifest import shard_name
    from u2seg_core.merge.stage import shard_json_url
    from u2seg_core.rundir import RunDir

    run = RunDir(run_dir)
    mask = np.zeros((375, 500), bool)
    mask[100:250, 120:380] = True
    mask[180:200, 200:260] = False
    rle = encode_rle(mask)
    shards = []
    for index, lo in enumerate(range(0, n, SHARD_SIZE)):
        images, panoptic, instances = [], [], []
        for image_id in range(lo + 1, min(lo + SHARD_SIZE, n) + 1):
            name = shard_name(index)
            images.append({"id": image_id, "file_name": f"train/{image_id}.JPEG", "height": 375, "width": 500})
            segments = [{"id": s + 1, "category_id": 1 + s * 100, "area": 1000, "bbox": [1, 2, 30, 40], "iscrowd": 0}
                        for s in range(4)]
            panoptic.append({"image_id": image_id, "file_name": f"{name}/{image_id}.png", "segments_info": segments})
            instances.extend(
                {"id": image_id * 100 + k, "image_id": image_id, "category_id": 1 + k, "bbox": [1, 2, 30, 40],
                 "area": 1000, "score": 0.9, "iscrowd": 0, "segmentation": rle}
                for k in range(3)
            )
        storage.write_json(shard_json_url(run, shard_name(index)),
                           {"images": images, "panoptic": panoptic, "instances": instances})
        shards.append([index, ""])
    write_stage_manifest(run, "plan", {"n_images": n, "n_shards": len(shards), "shards": shards})


# ---- the parent ----------------------------------------------------------------------------------


def run_child(what: str, run_dir: str, n: int, options: dict) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", what, "--run", run_dir, "--n", str(n)]
    command += ["--options", json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{what} at {n}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1281167", help="listed images for plan / features")
    parser.add_argument("--stego-sizes", default="1000,10000", help="STEGO training sample sizes")
    parser.add_argument("--merge-sizes", default="10000,100000", help="images for merge finalize")
    parser.add_argument("--steps", type=int, default=50, help="STEGO training steps per run")
    parser.add_argument("--feature-images", type=int, default=64, help="images the features step runs on")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.run, args.n, json.loads(args.options))
        return

    work = args.work or tempfile.mkdtemp(prefix="u2seg-scale-")
    rows: list[tuple[str, int, dict[str, Any]]] = []

    def record(what: str, n: int, run_dir: str, options: dict | None = None) -> None:
        result = run_child(what, run_dir, n, options or {})
        rows.append((what, n, result))
        print(f"  {what:15s} n={n:>9,d}  {result['seconds']:8.2f} s  peak {result['peak_mb']:8.0f} MB", flush=True)

    try:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            run_dir = os.path.join(work, f"plan-{n}")
            record("plan", n, run_dir)
            record("plan-hash", n, run_dir)
            record("features", n, run_dir, {"images": args.feature_images})
            shutil.rmtree(run_dir)
        for m in [int(s) for s in args.stego_sizes.split(",") if s]:
            run_dir = os.path.join(work, f"stego-{m}")
            prepare_stego_store(run_dir, m)
            record("stego-train", m, run_dir, {"steps": args.steps})
            shutil.rmtree(run_dir)
        for n in [int(s) for s in args.merge_sizes.split(",") if s]:
            run_dir = os.path.join(work, f"merge-{n}")
            prepare_merge_shards(run_dir, n)
            record("merge-finalize", n, run_dir)
            shutil.rmtree(run_dir)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print("\n| step | images | wall s | CPU s | peak RSS MB | baseline MB | detail |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for what, n, r in rows:
        detail = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("seconds", "cpu_s", "peak_mb", "before_mb"))
        print(f"| {what} | {n:,d} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['peak_mb']:.0f} | {r['before_mb']:.0f} "
              f"| {detail} |")
    print("baseline = peak RSS of the subprocess after its imports, before the step (python + torch + u2seg)")


if __name__ == "__main__":
    main()
