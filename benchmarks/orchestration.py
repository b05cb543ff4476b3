"""Orchestration overhead, measured side by side in one process.

(a) Prefect + caching overhead per shard: the features step (the `pixel` featurizer, so no weights are
    needed) on the same shards of `--images-per-shard` random images, called directly
    (`features_shard(run, shard, cfg)`) and as the Prefect features stage flow (one task per shard, cache key with
    done-marker check, persisted result record, progress and table artifacts, stage manifest) on a one-thread
    pool, so both run the shards one after the other. Reports the side-by-side ratio (flow - direct) / direct,
    and, robust to the load of a shared machine, the overhead inside the same flow run: its wall time minus the
    time spent inside the core step (ShardResult.seconds), per shard and as a ratio; plus the per-shard cost
    of a fully cached re-run (the resume path).
(b) Planning and submitting a 2,000-shard stage: a no-op shard step on `--fanout-shards` shards through the
    same stage flow, bounded thread pool; reports wall time, task runs per second, peak RSS and peak threads.

Runs against a temporary local Prefect server (`prefect_test_harness`) unless PREFECT_API_URL is set.

    python benchmarks/orchestration.py                       # 4 shards x 256 images of 224 px, 2,000-shard fan-out
    python benchmarks/orchestration.py --shards 8 --fanout-shards 0
"""

from __future__ import annotations

import argparse
import operator
import os
import resource
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image

from u2seg_core import storage
from u2seg_core.config import PipelineConfig, SourceConfig
from u2seg_core.manifest import ImageRecord, ShardManifest, ShardResult, StageManifest
from u2seg_core.local_runner import run_stage_local
from u2seg_core.registry import STAGES, StageSpec
from u2seg_core.rundir import RunDir


def noop_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """The (b) step: does nothing but report its shard."""
    return ShardResult(stage="noop", shard=shard.name, n_images=len(shard.images))


def write_images(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


class Sampler:
    """Peak thread count of this process, sampled every 50 ms while running."""

    def __init__(self) -> None:
        self.peak_threads = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_threads = max(self.peak_threads, threading.active_count())

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def overhead(work: Path, n_shards: int, per_shard: int, size: int, rounds: int) -> None:
    from flows.stages import STAGE_FLOWS
    from prefect.task_runners import ThreadPoolTaskRunner

    write_images(work / "images", n_shards * per_shard, size)
    cfg = PipelineConfig.demo(source=SourceConfig(uri=str(work / "images"), shard_size=per_shard))
    cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update={"resolution": size})})
    planned = RunDir(str(work / "planned"))
    run_stage_local(STAGES["plan"], planned, cfg)
    shards = planned.shards()
    features_shard = STAGES["features"].shard_fn()
    with ThreadPoolExecutor(max_workers=1) as pool:  # warm-up: imports, first-call costs
        pool.submit(features_shard, planned, shards[0], cfg).result()

    one_thread = STAGE_FLOWS["features"].with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    direct, flow, inside, cached = [], [], [], []
    for round_ in range(rounds):  # alternate, best of `rounds`: the machine's load varies over minutes
        direct_run, flow_run = RunDir(str(work / f"direct{round_}")), RunDir(str(work / f"flow{round_}"))
        shutil.copytree(planned.root, direct_run.root)
        shutil.copytree(planned.root, flow_run.root)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as pool:  # a pool thread, like the flow's tasks
            list(pool.map(lambda shard: features_shard(direct_run, shard, cfg), shards))
        direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        manifest = one_thread(run_dir=flow_run.root, config=cfg)
        flow.append(time.perf_counter() - start)
        inside.append(sum(result.seconds for result in manifest.shards))
        start = time.perf_counter()
        one_thread(run_dir=flow_run.root, config=cfg)
        cached.append(time.perf_counter() - start)
    best = min(range(rounds), key=lambda i: flow[i] - inside[i])
    overhead = flow[best] - inside[best]

    print(f"(a) features on {n_shards} shards x {per_shard} random {size}x{size} images (pixel featurizer), "
          f"1 thread, {rounds} alternating rounds")
    print(f"    direct core calls        {min(direct):8.2f} s  {min(direct) / n_shards:7.3f} s/shard (best round)")
    print(f"    Prefect stage flow       {min(flow):8.2f} s  {min(flow) / n_shards:7.3f} s/shard (best round)")
    print(f"    side by side             ratio (flow - direct) / direct = {(min(flow) - min(direct)) / min(direct):6.1%}"
          "  (both include the machine's load swings)")
    print(f"    same run: flow wall {flow[best]:.2f} s - time inside the core step {inside[best]:.2f} s")
    print(f"    overhead                 {overhead / n_shards:8.3f} s/shard   ratio {overhead / inside[best]:6.1%}"
          "  (task runs, cache keys + done-marker checks, result records, artifacts, manifests, subflow)")
    print(f"    cached re-run            {min(cached):8.2f} s  {min(cached) / n_shards:7.3f} s/shard (resume path, no compute)")


def fanout(work: Path, n_shards: int, workers: int) -> None:
    from flows.stages import run_stage
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner

    STAGES["noop"] = StageSpec("noop", "1", ("plan",), operator.attrgetter("merge"),
                               shard_step="__main__:noop_shard")
    run = RunDir(str(work / "fanout"))
    image = ImageRecord(image_id=1, file_name="a.png", url="unused")
    start = time.perf_counter()
    hashes = []
    for i in range(n_shards):
        shard = ShardManifest(shard_index=i, source="benchmark", images=[image])
        storage.write_json(run.shard_manifest_url(i), shard.model_dump(mode="json"))
        hashes.append(shard.hash)
    plan = StageManifest(stage="plan", stage_version="1", code_version="benchmark", config={}, config_hash="",
                         summary={"n_shards": n_shards, "shard_hashes": hashes})
    storage.write_json(run.stage_manifest_url("plan"), plan.model_dump(mode="json"))
    planning = time.perf_counter() - start

    cfg = PipelineConfig.demo()
    noop_flow = flow(name="noop", task_runner=ThreadPoolTaskRunner(max_workers=workers))(run_stage)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with Sampler() as sampler:
        start = time.perf_counter()
        manifest = noop_flow(stage="noop", run_dir=run.root, cfg=cfg)
        seconds = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(manifest.shards) == n_shards
    print(f"(b) {n_shards}-shard no-op stage, thread pool of {workers}")
    print(f"    planning (shard manifests) {planning:7.2f} s")
    print(f"    submit + run + manifest    {seconds:7.2f} s   {n_shards / seconds:6.1f} task runs/s")
    print(f"    peak RSS {rss_after:7.0f} MiB (was {rss_before:.0f} MiB before the flow)   peak threads {sampler.peak_threads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=4, help="(a) shards")
    parser.add_argument("--images-per-shard", type=int, default=256, help="(a) images per shard")
    parser.add_argument("--size", type=int, default=224, help="(a) image side = features resolution (multiple of 8)")
    parser.add_argument("--rounds", type=int, default=1, help="(a) alternating rounds, the best one is reported")
    parser.add_argument("--fanout-shards", type=int, default=2000, help="(b) shards (0 skips it)")
    parser.add_argument("--workers", type=int, default=4, help="(b) thread pool size")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = nullcontext() if os.environ.get("PREFECT_API_URL") else prefect_test_harness(server_startup_timeout=120)
    with tempfile.TemporaryDirectory() as tmp, server:
        if args.shards:
            overhead(Path(tmp), args.shards, args.images_per_shard, args.size, args.rounds)
        if args.fanout_shards:
            fanout(Path(tmp), args.fanout_shards, args.workers)


if __name__ == "__main__":
    main()
