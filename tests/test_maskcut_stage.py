"""The MaskCut stage step: COCO JSON, embeddings in the store, degenerate and bad images, real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from u2seg_core import storage
from u2seg_core.coco import decode_rle
from u2seg_core.config import PipelineConfig
from u2seg_core.maskcut.stage import instances_path, maskcut_shard
from u2seg_core.manifest import ImageRecord
from u2seg_core.store import FeatureStore
from u2seg_core.synth.scene import render_scene
from u2seg_core.viz import show_image_masks
from shared_paths import REAL_IMAGES_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

REAL_IMAGES = REAL_IMAGES_DIR


def _config(**maskcut) -> PipelineConfig:
    cfg = PipelineConfig.demo()
    return cfg.model_copy(update={"maskcut": cfg.maskcut.model_copy(update={"resolution": 160, **maskcut})})


def _records(folder: Path) -> list[ImageRecord]:
    """Two non-square synthetic scenes, a uniform image, a 5x4 image, and a file that is not an image."""
    folder.mkdir()
    files = []
    for i, (h, w) in enumerate([(192, 256), (256, 160)]):
        rgb = render_scene(np.random.default_rng([3, i]), 256).rgb[:h, :w]
        files.append(("scene%d.png" % i, rgb))
    files.append(("uniform.png", np.full((120, 90, 3), 128, np.uint8)))
    files.append(("tiny.png", np.full((5, 4, 3), 30, np.uint8) + np.arange(4, dtype=np.uint8)[None, :, None]))
    for name, rgb in files:
        Image.fromarray(rgb).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    names = [name for name, _ in files] + ["broken.png"]
    return [ImageRecord(image_id=i + 1, file_name=n, url=str(folder / n)) for i, n in enumerate(names)]


@pytest.mark.parametrize(("embedding", "crf"), [("pooled", "pydensecrf"), ("cls_crop", "torch")])
def test_stage_writes_coco_instances_and_embeddings(tmp_path, planned_run, embedding, crf):
    records = _records(tmp_path / "images")
    run = planned_run([records])
    shard = run.shards()[0]
    result = maskcut_shard(run, shard, _config(embedding=embedding, crf=crf))

    assert [f.file_name for f in result.failures] == ["broken.png"]
    assert result.n_images == 5 and result.n_failed == 1
    assert result.counts["uniform"] == 1 and result.counts["too_small"] == 1
    doc = storage.read_json(run.url(result.outputs["instances"]))
    assert result.outputs["instances"] == instances_path(shard.name)
    assert doc["categories"] == [{"id": 1, "name": "fg", "supercategory": "fg"}]
    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    assert sizes == {1: (192, 256), 2: (256, 160), 3: (120, 90), 4: (5, 4)}
    annotations = doc["annotations"]
    assert annotations, "the synthetic scenes should give masks"
    assert len({a["id"] for a in annotations}) == len(annotations)
    assert result.counts["masks"] == len(annotations)
    for a in annotations:
        assert a["image_id"] in (1, 2) and a["category_id"] == 1 and a["iscrowd"] == 0
        assert a["id"] // 100 == a["image_id"] and 0 <= a["id"] % 100 < 4
        mask = decode_rle(a["segmentation"])
        assert mask.shape == sizes[a["image_id"]]
        assert a["area"] == int(mask.sum()) > 0
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert 0.0 <= a["score"] <= 1.0
    store = FeatureStore(run.store)
    ann_ids = store.read("maskcut", shard.name, "ann_ids")
    embeddings = store.read("maskcut", shard.name, "embeddings")
    np.testing.assert_array_equal(ann_ids, [a["id"] for a in annotations])
    assert embeddings.shape[0] == len(annotations) and np.isfinite(embeddings).all()
    assert np.abs(embeddings).sum(axis=1).min() > 0

    again = maskcut_shard(run, shard, _config(embedding=embedding, crf=crf))
    assert storage.read_json(run.url(again.outputs["instances"])) == doc
    assert again.hash == result.hash


def test_masks_per_image_are_disjoint_before_the_crf(tmp_path, planned_run):
    run = planned_run([_records(tmp_path / "images")[:2]])
    result = maskcut_shard(run, run.shards()[0], _config(crf="none"))
    doc = storage.read_json(run.url(result.outputs["instances"]))
    for image in doc["images"]:
        masks = [decode_rle(a["segmentation"]) for a in doc["annotations"] if a["image_id"] == image["id"]]
        if masks:
            assert np.stack(masks).sum(axis=0).max() <= 1


@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="shared real photos not present")
def test_real_photos_go_through_the_stage_and_overlays_are_written(tmp_path, planned_run):
    files = sorted(REAL_IMAGES.glob("*.jpg"))
    records = [ImageRecord(image_id=i + 1, file_name=f.name, url=str(f)) for i, f in enumerate(files)]
    run = planned_run([records])
    result = maskcut_shard(run, run.shards()[0], _config())
    assert result.n_failed == 0 and result.counts["images"] == len(files) == 8
    doc = storage.read_json(run.url(result.outputs["instances"]))
    for record, image in zip(records, doc["images"]):
        with Image.open(record.url) as im:
            width, height = im.size  # these photos carry no EXIF rotation
        assert (image["width"], image["height"]) == (width, height)
    for record in records:
        out = show_image_masks(run, record.image_id, str(tmp_path / f"overlay_{record.image_id}.png"), max_side=800)
        overlay = np.asarray(Image.open(out))
        assert overlay.ndim == 3 and max(overlay.shape[:2]) == 800
