"""Features stage: stored tokens / pooled / image ids of a shard, failures recorded, the training-sample index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from u2seg_core.backbone import build_backbone
from u2seg_core.config import BackboneConfig, FeaturesConfig, PipelineConfig, SynthConfig
from u2seg_core.features import features_shard, training_sample
from u2seg_core.manifest import ImageRecord
from u2seg_core.store import FeatureStore, MissingShardError
from u2seg_core.synth import generate_dataset

SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[ImageRecord]:
    """4 synthetic 64-px images; image 3 is replaced by a corrupt file."""
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(str(out), SynthConfig(n=4, size=SIZE, seed=1))
    files = sorted((out / "images").glob("*.png"))
    files[2].write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return [ImageRecord(image_id=i + 1, file_name=f.name, url=str(f)) for i, f in enumerate(files)]


@pytest.fixture
def cfg() -> PipelineConfig:
    pixel = BackboneConfig(arch="pixel", batch_size=2, num_workers=0, device="cpu")
    return PipelineConfig.demo(features=FeaturesConfig(backbone=pixel, resolution=SIZE))


def test_features_shard_writes_complete_arrays(planned_run, images, cfg) -> None:
    run = planned_run([images])
    shard = run.shards()[0]
    result = features_shard(run, shard, cfg)

    assert (result.stage, result.shard, result.n_images, result.n_failed) == ("features", "shard-00000", 4, 1)
    failure = result.failures[0]
    assert (failure.image_id, failure.file_name, failure.stage) == (3, images[2].file_name, "features")
    assert images[2].file_name in failure.reason or "decode" in failure.reason
    assert result.outputs == {"store": "store.zarr/features/shard-00000"}
    assert result.counts["images_per_s"] > 0 and result.counts["stored_grids"] == 3  # 4 planned <= the sample

    store = FeatureStore(run.store)
    assert store.has_shard("features", "shard-00000", ["tokens", "pooled", "image_ids"])
    tokens = store.read("features", "shard-00000", "tokens")
    pooled = store.read("features", "shard-00000", "pooled")
    ids = store.read("features", "shard-00000", "image_ids")
    assert tokens.dtype == pooled.dtype == np.float16 and ids.dtype == np.int64
    assert tokens.shape == (3, 36, SIZE // 8, SIZE // 8) and pooled.shape == (3, 36)
    assert ids.tolist() == [1, 2, 4]

    backbone = build_backbone(cfg.features.backbone)
    for row, record in enumerate(images[i] for i in (0, 1, 3)):
        rgb = torch.from_numpy(np.array(Image.open(record.url).convert("RGB"))).permute(2, 0, 1)[None]
        expected = backbone(rgb, frozenset({"tokens"})).tokens[0].numpy()
        np.testing.assert_allclose(tokens[row].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(pooled[row].astype(np.float32), expected.mean(axis=(1, 2)), rtol=2e-3, atol=2e-3)
    attrs = store.shard_attrs("features", "shard-00000")
    assert attrs["backbone"] == "pixel" and attrs["resolution"] == SIZE and attrs["complete"] is True
    assert attrs["token_image_ids"] == [1, 2, 4] and attrs["store_fraction"] == 1.0

    again = features_shard(run, shard, cfg)
    assert again.model_dump(exclude={"counts"}) == result.model_dump(exclude={"counts"})
    np.testing.assert_array_equal(store.read("features", "shard-00000", "tokens"), tokens)


def test_training_sample_lists_the_stored_rows_of_every_shard(planned_run, images, cfg) -> None:
    run = planned_run([images[:2], images[2:]])
    for shard in run.shards():
        features_shard(run, shard, cfg)
    sample = training_sample(run, ["shard-00000", "shard-00001"], cfg)
    assert [(part.shard, part.rows.tolist(), part.image_ids.tolist()) for part in sample] == [
        ("shard-00000", [0, 1], [1, 2]), ("shard-00001", [0], [4])
    ]
    with pytest.raises(MissingShardError, match="shard-00002"):
        training_sample(run, ["shard-00000", "shard-00002"], cfg)


def test_only_the_sample_gets_token_grids(planned_run, images, cfg) -> None:
    from u2seg_core.features.sample import image_key

    run = planned_run([images])
    small = cfg.model_copy(update={"features": cfg.features.model_copy(update={"stego_sample": 2})})
    result = features_shard(run, run.shards()[0], small)  # 4 planned, sample 2: keys < 0.5 are stored
    store = FeatureStore(run.store)
    expected = [r.image_id for r in images if r.image_id != 3 and image_key(r.file_name, 0) < 0.5]
    assert store.shard_attrs("features", "shard-00000")["token_image_ids"] == expected
    assert store.read("features", "shard-00000", "tokens").shape[0] == len(expected) == result.counts["stored_grids"]
    assert store.read("features", "shard-00000", "pooled").shape[0] == 3


def test_all_images_failing_gives_empty_complete_shard(planned_run, tmp_path: Path, cfg) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    run = planned_run([[ImageRecord(image_id=7, file_name="bad.png", url=str(bad))]])
    result = features_shard(run, run.shards()[0], cfg)
    assert result.n_failed == 1 and result.failures[0].image_id == 7
    store = FeatureStore(run.store)
    assert store.read("features", "shard-00000", "tokens").shape == (0, 36, 8, 8)
    assert store.read("features", "shard-00000", "pooled").shape == (0, 36)
    assert training_sample(run, ["shard-00000"], cfg) == []
