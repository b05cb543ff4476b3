"""Plan stage: fixed-size shards in order, atomic shard files, synthetic source generated once."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from u2seg_core import storage
from u2seg_core.config import PipelineConfig, SourceConfig, SynthConfig
from u2seg_core.io import make_shards, plan_shards
from u2seg_core.manifest import ImageRecord, ShardManifest
from u2seg_core.rundir import RunDir


def _records(n: int) -> list[ImageRecord]:
    return [ImageRecord(image_id=i, file_name=f"{i}.png", url=f"/x/{i}.png") for i in range(1, n + 1)]


def test_make_shards_fixed_size_in_order():
    shards = make_shards(_records(10), 4, source="src")
    assert [s.shard_index for s in shards] == [0, 1, 2]
    assert [[im.image_id for im in s.images] for s in shards] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert make_shards([], 4, source="src") == []
    with pytest.raises(ValueError):
        make_shards(_records(2), 0, source="src")


def test_plan_synthetic_generates_once_and_writes_shards(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    cfg = PipelineConfig.demo(source=SourceConfig(shard_size=4, synthetic=SynthConfig(n=6, size=64, seed=2)))
    shards = plan_shards(run, cfg)
    assert [len(s.images) for s in shards] == [4, 2]
    assert [im.image_id for s in shards for im in s.images] == [1, 2, 3, 4, 5, 6]
    first = shards[0].images[0]
    assert first.url == run.url("synthetic", "images", "000001.png") and (first.width, first.height) == (64, 64)
    assert first.content_hash and first.size_bytes == os.path.getsize(first.url)
    for shard in shards:
        assert ShardManifest.model_validate(storage.read_json(run.shard_manifest_url(shard.shard_index))) == shard
    assert not storage.exists(run.url("plan", "manifest.json"))
    assert storage.listdir(run.url("plan", "shards")) == ["shard-00000.json", "shard-00001.json"]

    image = run.url("synthetic", "images", "000001.png")
    mtime = os.stat(image).st_mtime_ns
    again = plan_shards(run, cfg)
    assert [s.hash for s in again] == [s.hash for s in shards]
    assert os.stat(image).st_mtime_ns == mtime  # not regenerated

    smaller_source = cfg.source.model_copy(update={"synthetic": SynthConfig(n=3, size=64, seed=2)})
    smaller = cfg.model_copy(update={"source": smaller_source})
    replanned = plan_shards(run, smaller)
    assert [len(s.images) for s in replanned] == [3]
    assert storage.listdir(run.url("plan", "shards")) == ["shard-00000.json"]  # stale shard removed
    assert storage.listdir(run.url("synthetic", "images")) == ["000001.png", "000002.png", "000003.png"]


def test_plan_folder_source_with_limit(tmp_path):
    for i in range(5):
        Image.new("RGB", (9, 7), (i, 0, 0)).save(tmp_path / f"im{i}.png")
    run = RunDir(str(tmp_path / "run"))
    cfg = PipelineConfig.demo(source=SourceConfig(uri=str(tmp_path), kind="folder", shard_size=2, limit=3))
    shards = plan_shards(run, cfg)
    assert [[im.file_name for im in s.images] for s in shards] == [["im0.png", "im1.png"], ["im2.png"]]
    assert all(s.source == str(tmp_path) for s in shards)
    assert not storage.exists(run.url("synthetic"))
