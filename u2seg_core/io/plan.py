"""Plan stage: list the source, bucket the images into shards, then hash their contents shard by shard.

* Global step `plan_step` re-lists the source on every run, cheaply (names, sizes, mtimes or ETags; no byte is
  read), and writes one `RUN/plan/shards/shard-NNNNN.json` per non-empty bucket, rewriting only changed ones.
* Shard step `hash_shard` reads the shard's images (in parallel across shard tasks) and records their content
  hashes and sizes in `RUN/plan/contents/shard-NNNNN.json`; its result hash is what downstream stages key on,
  so touching a file without changing its bytes recomputes nothing downstream.

Image ids are stable across re-plans (io/sources.py): a COCO source keeps its ids, other sources derive the id
from the relative path.
An image's shard is a hash bucket of its relative path among `n_buckets(N)` = the next power of two of
N / shard_size (average shard size between shard_size / 2 and shard_size): adding, removing or changing an image
changes only its own shard, except when N crosses a power of two times shard_size, which re-buckets everything.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor

from .. import storage
from ..config import PipelineConfig, SourceConfig
from ..manifest import FailureRecord, GlobalResult, ImageRecord, ShardManifest, ShardResult
from ..rundir import RunDir
from ..synth import dataset_is_complete, dataset_paths, generate_dataset
from .decode import ImageDecodeError, header_size, read_image_bytes
from .sources import Listing, list_source

SYNTHETIC_DIR = "synthetic"
HASH_THREADS = 8
STAGE = "plan"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def n_buckets(n_images: int, shard_size: int) -> int:
    """Next power of two >= n_images / shard_size (1 for an empty listing)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return 1 << max(0, math.ceil(math.log2(max(1.0, n_images / shard_size))))


def bucket_of(file_name: str, buckets: int) -> int:
    return int.from_bytes(_digest(file_name)[8:16], "big") % buckets


def make_shards(records: list[ImageRecord], shard_size: int, source: str) -> list[ShardManifest]:
    """One shard per non-empty hash bucket, in bucket order; images sorted by file name inside a shard."""
    buckets = n_buckets(len(records), shard_size)
    grouped: dict[int, list[ImageRecord]] = {}
    for record in sorted(records, key=lambda r: r.file_name):
        grouped.setdefault(bucket_of(record.file_name, buckets), []).append(record)
    return [ShardManifest(shard_index=i, source=source, images=grouped[i]) for i in sorted(grouped)]


def synthetic_source(run: RunDir, cfg: SourceConfig) -> SourceConfig:
    """Generate the synthetic dataset under RUN/synthetic (unless already there with this config) and
    return the COCO source config that reads it."""
    out = run.url(SYNTHETIC_DIR)
    if not dataset_is_complete(out, cfg.synthetic):
        storage.remove(out, recursive=True)  # stale images of another config must not linger
        generate_dataset(out, cfg.synthetic)
    paths = dataset_paths(out)
    return cfg.model_copy(update={"uri": paths["instances"], "kind": "coco", "image_root": paths["images"]})


def plan_shards(run: RunDir, cfg: PipelineConfig) -> tuple[list[ShardManifest], Listing]:
    """List the source and write RUN/plan/shards/shard-NNNNN.json (only those whose contents changed; files of
    buckets that are now empty are removed). The plan StageManifest is written by the pipeline layer."""
    source = synthetic_source(run, cfg.source) if cfg.source.uri is None else cfg.source
    listing = list_source(source)
    shards = make_shards(listing.records, source.shard_size, source=source.uri)
    previous = dict(run.plan_shards()) if run.has_stage(STAGE) else {}
    for shard in shards:
        if previous.get(shard.shard_index) != shard.hash or not storage.exists(run.shard_manifest_url(shard.shard_index)):
            storage.write_json(run.shard_manifest_url(shard.shard_index), shard.model_dump(mode="json"))
    shard_dir = run.url(STAGE, "shards")
    current = {f"{shard.name}.json" for shard in shards}
    for name in storage.listdir(shard_dir):
        if name.startswith("shard-") and name not in current:
            storage.remove(storage.join(shard_dir, name))
    return shards, listing


def plan_step(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """The plan stage's global step: `plan_shards`, summarised so later stages never load every shard."""
    shards, listing = plan_shards(run, cfg)
    return GlobalResult(
        stage=STAGE,
        outputs={"shards": f"{STAGE}/shards"},
        digest=storage.hash_json([s.name for s in shards]),  # contents: the shard steps' digests
        summary={
            "n_shards": len(shards),
            "n_images": sum(len(s.images) for s in shards),
            "n_ignored": listing.n_ignored,
            "ignored_examples": listing.ignored_examples,
            "shards": [[s.shard_index, s.hash] for s in shards],
        },
        warnings=[
            f"{listing.n_ignored} files ignored (not an image format the decoder reads), e.g. "
            + ", ".join(listing.ignored_examples)
        ] if listing.n_ignored else [],
    )


def contents_url(run: RunDir, shard: str) -> str:
    return run.url(STAGE, "contents", f"{shard}.json")


def hash_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Read every image of the shard once: content hash (sha256, 16 hex digits), size and header width/height.

    An unreadable file is a FailureRecord with its reason; its content hash stays "" (stages report it too)."""

    def content(record: ImageRecord) -> dict | FailureRecord:
        try:
            data = read_image_bytes(record.url)
        except ImageDecodeError as exc:
            return FailureRecord(image_id=record.image_id, file_name=record.file_name, stage=STAGE, reason=exc.reason)
        width_height = header_size(data)
        return {
            "image_id": record.image_id, "file_name": record.file_name, "size_bytes": len(data),
            "content_hash": storage.sha256_bytes(data)[:16],
            "width": width_height[0] if width_height else record.width,
            "height": width_height[1] if width_height else record.height,
        }

    with ThreadPoolExecutor(max_workers=max(1, min(HASH_THREADS, len(shard.images)))) as pool:
        infos = list(pool.map(content, shard.images))
    failures = [info for info in infos if isinstance(info, FailureRecord)]
    images = [info for info in infos if not isinstance(info, FailureRecord)]
    url = contents_url(run, shard.name)
    storage.write_json(url, {"shard": shard.name, "images": images})
    return ShardResult(
        stage=STAGE, shard=shard.name, n_images=len(shard.images), n_failed=len(failures), failures=failures,
        outputs={"contents": run.rel(url)},
        digest=storage.hash_json([[im["image_id"], im["file_name"], im["content_hash"]] for im in images]),
        counts={"bytes_read": float(sum(im["size_bytes"] for im in images))},
    )
