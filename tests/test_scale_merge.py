"""Merge at scale: per-image outputs nested per shard, dataset JSONs streamed from the shard files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from u2seg_core import storage
from u2seg_core.coco import CocoJsonWriter, dataset_json, write_dataset_json_streaming
from u2seg_core.config import ClusterConfig, PipelineConfig, StegoConfig, SynthConfig
from u2seg_core.manifest import ImageRecord
from u2seg_core.merge.stage import categories, finalize, merge_shard, shard_json_url
from u2seg_core.synth import STUFF_CLASSES, THING_CLASSES, generate_dataset

N_IMAGES, SIZE = 6, 48
T, S = len(THING_CLASSES), len(STUFF_CLASSES)


@pytest.fixture(scope="module")
def synthetic_gt(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth"))
    generate_dataset(out, SynthConfig(n=N_IMAGES, size=SIZE, seed=4))
    return out


@pytest.fixture
def merged_run(planned_run, synthetic_gt):
    """Ground truth fed in as maskcut / cluster / stego outputs of a 3-shard run, merged."""
    records = [
        ImageRecord(image_id=i, file_name=f"{i:06d}.png", url=storage.join(synthetic_gt, "images", f"{i:06d}.png"))
        for i in range(1, N_IMAGES + 1)
    ]
    run = planned_run([records[:2], records[2:5], records[5:]])
    truth = storage.read_json(storage.join(synthetic_gt, "annotations", "instances.json"))
    for shard in run.shards():
        ids = {im.image_id for im in shard.images}
        anns = [{**a, "score": 1.0} for a in truth["annotations"] if a["image_id"] in ids]
        images = [im for im in truth["images"] if im["id"] in ids]
        maskcut = {"images": images, "annotations": anns}
        storage.write_json(run.url("maskcut", "instances", f"{shard.name}.json"), maskcut)
        storage.write_json(
            run.url("cluster", "assignments", f"{shard.name}.json"), {str(a["id"]): a["category_id"] for a in anns}
        )
        for image_id in ids:
            semantic = storage.read_png(storage.join(synthetic_gt, "semantic", f"{image_id:06d}.png"))
            stuff = np.where((semantic >= 1) & (semantic <= S), semantic - 1, 255).astype(np.uint8)
            storage.write_png(run.image_output_url("stego", "maps", shard.name, image_id), stuff)
    cfg = PipelineConfig.demo(cluster=ClusterConfig(k=T), stego=StegoConfig(n_classes=S))
    results = [merge_shard(run, shard, cfg) for shard in run.shards()]
    assert all(r.n_failed == 0 for r in results)
    return run, cfg, results, finalize(run, cfg)


def test_outputs_are_nested_per_shard(merged_run):
    run, _, results, _ = merged_run
    for shard, result in zip(run.shards(), results):
        assert result.outputs["panoptic"] == f"merge/panoptic/{shard.name}"
        assert result.outputs["semantic"] == f"merge/semantic/{shard.name}"
        names = sorted(f"{im.image_id}.png" for im in shard.images)
        assert storage.listdir(run.url("merge", "panoptic", shard.name)) == names
        assert storage.listdir(run.url("merge", "semantic", shard.name)) == names
    assert sorted(storage.listdir(run.url("merge", "panoptic"))) == ["shard-00000", "shard-00001", "shard-00002"]
    panoptic = storage.read_json(run.url("merge", "panoptic.json"))
    for ann in panoptic["annotations"]:
        shard = next(s.name for s in run.shards() if ann["image_id"] in {im.image_id for im in s.images})
        assert ann["file_name"] == f"{shard}/{ann['image_id']}.png"
        assert storage.exists(run.url("merge", "panoptic", ann["file_name"]))


def test_streamed_dataset_jsons_equal_the_in_memory_ones(merged_run):
    run, cfg, _, result = merged_run
    parts = [storage.read_json(shard_json_url(run, shard.name)) for shard in run.shards()]
    images = [im for part in parts for im in part["images"]]
    all_categories = categories(cfg.cluster.k, cfg.stego.n_classes)
    description = f"u2seg pseudo-labels: {cfg.cluster.k} clusters, {cfg.stego.n_classes} STEGO classes"
    for name, key, cats in (("panoptic", "panoptic", all_categories), ("instances", "instances", all_categories[:T])):
        raw = storage.read_bytes(run.url("merge", f"{name}.json"))
        assert b"\n" not in raw and b'": ' not in raw  # compact
        expected = dataset_json(images, [a for part in parts for a in part[key]], cats, description)
        assert json.loads(raw) == expected
    assert result.summary["n_images"] == N_IMAGES
    assert result.summary["n_thing_segments"] == sum(len(part["instances"]) for part in parts) > 0

    from pycocotools.coco import COCO

    coco = COCO(run.url("merge", "instances.json"))
    assert sorted(coco.getImgIds()) == list(range(1, N_IMAGES + 1))
    assert len(coco.getAnnIds()) == result.summary["n_thing_segments"]
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.annToMask(ann).sum() == ann["area"]


def test_writer_leaves_nothing_on_error_and_streams_to_s3(tmp_path, s3_bucket):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with CocoJsonWriter(str(target), [], "d") as writer:
            writer.add([{"id": 1}], [])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    url = f"{s3_bucket}/run/merge/panoptic.json"
    parts = [([{"id": 1}], [{"id": 100, "image_id": 1}]), ([{"id": 2}], [])]
    assert write_dataset_json_streaming(url, iter(parts), [{"id": 1}], "d") == 2
    expected = dataset_json([{"id": 1}, {"id": 2}], [{"id": 100, "image_id": 1}], [{"id": 1}], "d")
    assert storage.read_json(url) == expected
