"""Plan stage: hash-bucket shards, stable ids, atomic shard files written only when changed, synthetic source
generated once, content hashes computed per shard."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from u2seg_core import storage
from u2seg_core.config import PipelineConfig, SourceConfig, SynthConfig
from u2seg_core.io import make_shards, plan_shards
from u2seg_core.io.plan import bucket_of, contents_url, hash_shard, n_buckets, plan_step
from u2seg_core.manifest import ImageRecord, ShardManifest
from u2seg_core.rundir import RunDir


def _records(names: list[str]) -> list[ImageRecord]:
    return [ImageRecord(image_id=i, file_name=n, url=f"/x/{n}") for i, n in enumerate(names, start=1)]


def test_buckets_are_powers_of_two_of_the_shard_count():
    assert [n_buckets(n, 4) for n in (0, 1, 4, 5, 8, 9, 17)] == [1, 1, 1, 2, 2, 4, 8]
    with pytest.raises(ValueError):
        n_buckets(3, 0)


def test_make_shards_by_hash_bucket_sorted_inside():
    names = [f"img{i:03d}.png" for i in range(40)]
    shards = make_shards(_records(names), 8, source="src")
    buckets = n_buckets(40, 8)
    assert buckets == 8 and [s.shard_index for s in shards] == sorted(s.shard_index for s in shards)
    for shard in shards:
        files = [im.file_name for im in shard.images]
        assert files == sorted(files) and {bucket_of(f, buckets) for f in files} == {shard.shard_index}
    assert sorted(im.file_name for s in shards for im in s.images) == names
    assert make_shards([], 4, source="src") == []


def test_one_new_or_removed_image_changes_only_its_shard():
    names = [f"photos/{i:04d}.jpg" for i in range(100)]
    records = _records(names)
    before = {s.name: s.hash for s in make_shards(records, 16, source="src")}
    # a new image sorting early does not shift later shards (records keep their own ids)
    grown = records + [ImageRecord(image_id=999, file_name="photos/0042b.jpg", url="/x/new")]
    grown_shards = {s.name: s.hash for s in make_shards(grown, 16, source="src")}
    assert sum(grown_shards.get(name) != h for name, h in before.items()) == 1
    removed = {s.name: s.hash for s in make_shards(records[1:], 16, source="src")}
    assert sum(removed.get(name) != h for name, h in before.items()) == 1


def test_plan_synthetic_generates_once_and_writes_shards(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    cfg = PipelineConfig.demo(source=SourceConfig(shard_size=4, synthetic=SynthConfig(n=6, size=64, seed=2)))
    shards, listing = plan_shards(run, cfg)
    assert sum(len(s.images) for s in shards) == 6 and listing.n_ignored == 0
    assert sorted(im.image_id for s in shards for im in s.images) == [1, 2, 3, 4, 5, 6]  # the COCO ids
    first = next(im for s in shards for im in s.images if im.image_id == 1)
    assert first.url == run.url("synthetic", "images", "000001.png") and (first.width, first.height) == (64, 64)
    assert first.size_bytes == os.path.getsize(first.url) and first.version
    for shard in shards:
        assert ShardManifest.model_validate(storage.read_json(run.shard_manifest_url(shard.shard_index))) == shard
    assert not storage.exists(run.url("plan", "manifest.json"))
    assert storage.listdir(run.url("plan", "shards")) == [f"{s.name}.json" for s in shards]

    image = run.url("synthetic", "images", "000001.png")
    mtime = os.stat(image).st_mtime_ns
    again, _ = plan_shards(run, cfg)
    assert [s.hash for s in again] == [s.hash for s in shards]
    assert os.stat(image).st_mtime_ns == mtime  # not regenerated

    smaller_source = cfg.source.model_copy(update={"synthetic": SynthConfig(n=1, size=64, seed=2)})
    replanned, _ = plan_shards(run, cfg.model_copy(update={"source": smaller_source}))
    assert [len(s.images) for s in replanned] == [1]
    assert storage.listdir(run.url("plan", "shards")) == [f"{replanned[0].name}.json"]  # stale shards removed
    assert storage.listdir(run.url("synthetic", "images")) == ["000001.png"]


def test_plan_folder_source_with_limit_counts_ignored_files(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.new("RGB", (9, 7), (i, 0, 0)).save(photos / f"im{i}.png")
    (photos / "notes.txt").write_text("x")
    run = RunDir(str(tmp_path / "run"))
    cfg = PipelineConfig.demo(source=SourceConfig(uri=str(photos), kind="folder", shard_size=2, limit=3))
    shards, listing = plan_shards(run, cfg)
    assert sorted(im.file_name for s in shards for im in s.images) == ["im0.png", "im1.png", "im2.png"]
    assert listing.n_ignored == 1 and listing.ignored_examples == ["notes.txt"]
    assert plan_step(run, cfg).warnings == ["1 files ignored (not an image format the decoder reads), e.g. notes.txt"]
    assert all(s.source == str(photos) for s in shards)
    assert not storage.exists(run.url("synthetic"))


def test_hash_shard_reads_contents_and_reports_unreadable_files(tmp_path):
    Image.new("RGB", (9, 7), (1, 2, 3)).save(tmp_path / "a.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "b.png")
    run = RunDir(str(tmp_path / "run"))
    cfg = PipelineConfig.demo(source=SourceConfig(uri=str(tmp_path), shard_size=10))
    (shard,), _ = plan_shards(run, cfg)
    result = hash_shard(run, shard, cfg)
    contents = storage.read_json(contents_url(run, shard.name))["images"]
    assert [(c["file_name"], c["width"], c["height"]) for c in contents] == [("a.png", 9, 7)]
    assert result.n_failed == 1 and "dangling symbolic link" in result.failures[0].reason
    assert result.digest and result.outputs == {"contents": f"plan/contents/{shard.name}.json"}
    # touching a file changes its listing (shard hash) but not the content digest downstream keys see
    os.utime(tmp_path / "a.png", ns=(1, 1))
    (touched,), _ = plan_shards(run, cfg)
    assert touched.hash != shard.hash and hash_shard(run, touched, cfg).hash == result.hash
