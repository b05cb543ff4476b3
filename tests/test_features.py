"""Features stage: stored tokens / pooled / image ids of a shard, failures recorded, reader helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from u2seg_core.backbone import build_backbone
from u2seg_core.config import BackboneConfig, FeaturesConfig, PipelineConfig, SynthConfig
from u2seg_core.features import features_shard, load_features
from u2seg_core.manifest import ImageRecord, ShardManifest
from u2seg_core.rundir import RunDir
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


def test_features_shard_writes_complete_arrays(tmp_path: Path, images, cfg) -> None:
    run = RunDir(str(tmp_path / "run"))
    shard = ShardManifest(shard_index=0, source="test", images=images)
    result = features_shard(run, shard, cfg)

    assert (result.stage, result.shard, result.n_images, result.n_failed) == ("features", "shard-00000", 4, 1)
    failure = result.failures[0]
    assert (failure.image_id, failure.file_name, failure.stage) == (3, images[2].file_name, "features")
    assert images[2].file_name in failure.reason or "decode" in failure.reason
    assert result.outputs == {"store": "store.zarr/features/shard-00000"}
    assert result.counts["images_per_s"] > 0

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

    again = features_shard(run, shard, cfg)
    assert again.model_dump(exclude={"counts"}) == result.model_dump(exclude={"counts"})
    np.testing.assert_array_equal(store.read("features", "shard-00000", "tokens"), tokens)


def test_load_features_concatenates_shards(tmp_path: Path, images, cfg) -> None:
    run = RunDir(str(tmp_path / "run"))
    shards = [
        ShardManifest(shard_index=0, source="test", images=images[:2]),
        ShardManifest(shard_index=1, source="test", images=images[2:]),
    ]
    for shard in shards:
        features_shard(run, shard, cfg)
    tokens, pooled, ids = load_features(run, ["shard-00000", "shard-00001"])
    assert tokens.shape == (3, 36, 8, 8) and pooled.shape == (3, 36) and ids.tolist() == [1, 2, 4]
    with pytest.raises(MissingShardError, match="shard-00002"):
        load_features(run, ["shard-00000", "shard-00002"])


def test_all_images_failing_gives_empty_complete_shard(tmp_path: Path, cfg) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    shard = ShardManifest(
        shard_index=0, source="test", images=[ImageRecord(image_id=7, file_name="bad.png", url=str(bad))]
    )
    run = RunDir(str(tmp_path / "run"))
    result = features_shard(run, shard, cfg)
    assert result.n_failed == 1 and result.failures[0].image_id == 7
    tokens, pooled, ids = load_features(run, ["shard-00000"])
    assert tokens.shape == (0, 36, 8, 8) and pooled.shape == (0, 36) and ids.shape == (0,)
