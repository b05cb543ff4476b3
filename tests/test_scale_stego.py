"""STEGO at scale: a seeded per-image sample, token grids stored for it only, training streamed from the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from u2seg_core.config import BackboneConfig, FeaturesConfig, PipelineConfig, StegoConfig, SynthConfig
from u2seg_core.features import features_shard, training_sample
from u2seg_core.features.sample import image_key, store_fraction, train_fraction
from u2seg_core.manifest import ImageRecord
from u2seg_core.stego import tokens as token_sources
from u2seg_core.stego.tokens import StoredRows
from u2seg_core.stego.train import train_stego
from u2seg_core.store import FeatureStore
from u2seg_core.synth import generate_dataset

pytestmark = pytest.mark.usefixtures("single_torch_thread")

N_IMAGES, SIZE = 12, 32


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[ImageRecord]:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(str(out), SynthConfig(n=N_IMAGES, size=SIZE, seed=2))
    files = sorted((out / "images").glob("*.png"))
    return [ImageRecord(image_id=i + 1, file_name=f"images/{f.name}", url=str(f)) for i, f in enumerate(files)]


def config(sample: int) -> PipelineConfig:
    pixel = BackboneConfig(arch="pixel", batch_size=4, num_workers=0, device="cpu")
    return PipelineConfig.demo(features=FeaturesConfig(backbone=pixel, resolution=SIZE, stego_sample=sample))


def featurize(planned_run, layout: list[list[ImageRecord]], cfg: PipelineConfig):
    run = planned_run(layout)
    for shard in run.shards():
        features_shard(run, shard, cfg)
    return run


def test_fractions_and_keys():
    assert train_fraction(10, 20) == store_fraction(10, 20) == 1.0
    assert train_fraction(1000, 100) == 0.1 and store_fraction(1000, 100) == 0.125
    assert store_fraction(1_281_167, 20_000) == 2.0**-6  # stores ~20k..40k grids of ImageNet
    keys = np.array([image_key(f"n01440764/{i}.JPEG", 0) for i in range(20_000)])
    assert 0 <= keys.min() and keys.max() < 1 and abs((keys < 0.25).mean() - 0.25) < 0.02  # uniform
    assert image_key("a.jpg", 0) == image_key("a.jpg", 0) != image_key("a.jpg", 1)


def test_sample_is_deterministic_and_independent_of_the_shard_layout(planned_run, records, tmp_path):
    cfg = config(sample=5)  # 12 images: train keys < 5/12, store keys < 0.5
    one = featurize(planned_run, [records], cfg)
    expected_stored = [r.image_id for r in records if image_key(r.file_name, 0) < 0.5]
    expected_trained = [r.image_id for r in records if image_key(r.file_name, 0) < 5 / 12]
    assert 0 < len(expected_trained) < len(expected_stored) < N_IMAGES  # the sample is a proper subset here
    assert FeatureStore(one.store).shard_attrs("features", "shard-00000")["token_image_ids"] == expected_stored
    trained = [int(i) for part in training_sample(one, ["shard-00000"], cfg) for i in part.image_ids]
    assert trained == expected_trained

    shuffled = [records[i] for i in np.random.default_rng(0).permutation(N_IMAGES)]
    import shutil

    shutil.rmtree(one.root)
    three = featurize(planned_run, [shuffled[:3], shuffled[3:8], shuffled[8:]], cfg)
    names = [shard.name for shard in three.shards()]
    again = sorted(int(i) for part in training_sample(three, names, cfg) for i in part.image_ids)
    assert again == expected_trained
    store = FeatureStore(three.store)
    stored = sorted(i for name in names for i in store.shard_attrs("features", name)["token_image_ids"])
    assert stored == expected_stored
    assert sum(store.read("features", name, "tokens").shape[0] for name in names) == len(expected_stored)
    assert sum(store.read("features", name, "pooled").shape[0] for name in names) == N_IMAGES


def test_a_smaller_stored_fraction_than_the_plan_needs_is_an_error(planned_run, records):
    run = featurize(planned_run, [records], config(sample=3))  # stored keys < 0.25
    with pytest.raises(ValueError, match="re-run the features stage"):
        training_sample(run, ["shard-00000"], config(sample=6))  # needs keys < 0.5


def test_streamed_training_reads_only_the_sample_and_equals_in_memory(planned_run, records, tmp_path, monkeypatch):
    cfg = config(sample=8)
    run = featurize(planned_run, [records[:5], records[5:]], cfg)
    sample = training_sample(run, ["shard-00000", "shard-00001"], cfg)
    stored = StoredRows(FeatureStore(run.store), sample)
    assert stored.shape[0] == sum(len(part.rows) for part in sample) < N_IMAGES

    reads: list[tuple[str, list[int]]] = []
    real_read_rows = token_sources.read_rows

    def recording(array, rows):
        reads.append((array.path, sorted(np.asarray(rows).tolist())))
        return real_read_rows(array, rows)

    monkeypatch.setattr(token_sources, "read_rows", recording)
    stego = StegoConfig(dim=6, n_classes=3, steps=6, batch_size=4, checkpoint_every=100, train_grid=2, knn=3,
                        loss={"feature_samples": 2, "neg_samples": 2}, preload_bytes=0)
    streamed = train_stego(stored, stego, str(tmp_path / "streamed"), device="cpu")
    assert reads, "training did not read from the store"
    allowed = {f"features/{part.shard}/tokens": set(part.rows.tolist()) for part in sample}
    for path, rows in reads:
        assert set(rows) <= allowed[path]  # only the sample's rows, never another image's
    assert max(len(rows) for _, rows in reads[-8:]) <= 4  # a training step reads at most its batch's grids
    monkeypatch.undo()

    in_memory = train_stego(stored.load().tokens, stego, str(tmp_path / "memory"), device="cpu")
    for a, b in zip(streamed.head.state_dict().values(), in_memory.head.state_dict().values()):
        assert torch.equal(a, b)
    assert streamed.history == in_memory.history
