"""Batch loader: order, exactly-once, resize parity with PIL, originals, spawn workers reading s3://."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from u2seg_core import storage
from u2seg_core.io import ImageBatch, iter_batches, load_rgb
from u2seg_core.manifest import ImageRecord, ShardManifest


def _photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth-plus-noise image (so that resampling filters give different results)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 64 * 4], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def _shard(urls: list[str]) -> ShardManifest:
    images = [ImageRecord(image_id=10 + i, file_name=u.rsplit("/", 1)[-1], url=u) for i, u in enumerate(urls)]
    return ShardManifest(shard_index=3, source="test", images=images)


@pytest.fixture
def photo_urls(tmp_path) -> list[str]:
    rng = np.random.default_rng(1)
    sizes = [(30, 50), (64, 64), (41, 23), (100, 80), (20, 90), (57, 57), (33, 44)]
    urls = []
    for i, (h, w) in enumerate(sizes):
        path = tmp_path / f"img{i}.png"
        _photo(rng, h, w).save(path)
        urls.append(str(path))
    return urls


@pytest.mark.parametrize("resample,pil_filter", [("lanczos", Image.LANCZOS), ("nearest", Image.NEAREST)])
def test_batches_match_pil_resize_and_keep_order(photo_urls, resample, pil_filter):
    bad = photo_urls[0].replace("img0.png", "missing.png")
    urls = photo_urls[:3] + [bad] + photo_urls[3:]
    shard = _shard(urls)
    batches = list(iter_batches(shard, resolution=32, batch_size=3, resample=resample, keep_original=True))
    assert [len(b.records) + len(b.failures) for b in batches] == [3, 3, 2]
    seen = [r.image_id for b in batches for r in b.records] + [f.image_id for b in batches for f in b.failures]
    assert sorted(seen) == [im.image_id for im in shard.images]  # each image exactly once
    assert [r.url for b in batches for r in b.records] == photo_urls  # order preserved
    assert batches[1].failures[0].file_name == "missing.png" and batches[1].failures[0].stage == "decode"
    for batch in batches:
        assert isinstance(batch, ImageBatch)
        assert batch.pixels.dtype == torch.uint8 and batch.pixels.shape[1:] == (3, 32, 32)
        for record, pixels, size, original in zip(
            batch.records, batch.pixels, batch.original_sizes, batch.originals
        ):
            with Image.open(record.url) as im:
                reference = np.asarray(im.convert("RGB").resize((32, 32), pil_filter))
                assert size == (im.height, im.width)
            np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), reference)
            np.testing.assert_array_equal(original, load_rgb(record.url))


def test_batch_with_only_failures_is_still_yielded(tmp_path):
    shard = _shard([str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    batches = list(iter_batches(shard, resolution=16, batch_size=4, stage="maskcut"))
    assert len(batches) == 1
    assert batches[0].pixels.shape == (0, 3, 16, 16) and batches[0].records == []
    assert [f.image_id for f in batches[0].failures] == [10, 11]
    assert batches[0].originals is None


def test_spawn_workers_read_s3_in_order(photo_urls, s3_bucket):
    """Two spawned workers: the registered S3 endpoint must reach them, order must hold."""
    urls = []
    for i, local in enumerate(photo_urls[:5]):
        url = f"{s3_bucket}/photos/{i:02d}.png"
        storage.atomic_write_bytes(url, open(local, "rb").read())
        urls.append(url)
    urls.insert(2, f"{s3_bucket}/photos/absent.png")
    batches = list(iter_batches(_shard(urls), resolution=24, batch_size=2, num_workers=2, keep_original=True))
    assert [r.url for b in batches for r in b.records] == [u for u in urls if "absent" not in u]
    assert [f.file_name for b in batches for f in b.failures] == ["absent.png"]
    for batch in batches:
        for record, original in zip(batch.records, batch.originals):
            local = photo_urls[int(record.url[-6:-4])]
            np.testing.assert_array_equal(original, load_rgb(local))
