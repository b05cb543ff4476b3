"""Decode + resize throughput of `iter_batches`: in-process vs spawned DataLoader workers, side by side.

    python benchmarks/bench_loader.py                       # the 8 shared photos x 3, 480 px, workers 0 vs 2
    python benchmarks/bench_loader.py --repeat 20 --workers 8

Worker start-up (spawn imports torch) is included, as it is in a shard task.
"""

from __future__ import annotations

import argparse
import glob
import time

from u2seg_core.io import iter_batches
from u2seg_core.manifest import ImageRecord, ShardManifest


def run(shard: ShardManifest, resolution: int, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    n = sum(len(b.records) for b in iter_batches(shard, resolution, batch_size, num_workers=workers))
    assert n == len(shard.images)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="/work/shared/data/real_images/*.jpg")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    urls = sorted(glob.glob(args.images)) * args.repeat
    if not urls:
        raise SystemExit(f"no images match {args.images}")
    shard = ShardManifest(
        shard_index=0,
        source="bench",
        images=[ImageRecord(image_id=i + 1, file_name=u, url=u) for i, u in enumerate(urls)],
    )
    serial = run(shard, args.resolution, args.batch_size, 0)
    parallel = run(shard, args.resolution, args.batch_size, args.workers)
    print(f"{len(urls)} images -> {args.resolution}x{args.resolution} (lanczos)")
    print(f"num_workers=0: {serial:7.2f} img/s")
    print(f"num_workers={args.workers}: {parallel:7.2f} img/s  ({parallel / serial:.2f}x)")


if __name__ == "__main__":
    main()
