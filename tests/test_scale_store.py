"""zarr layout for a million rows: sharding codec, objects per shard array, isolation of shard re-runs,
one GET to open a shard (consolidated shard metadata)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from u2seg_core.store import FeatureStore, feature_store


def objects(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def small_objects(monkeypatch):
    """1 KiB chunks and 8 KiB zarr shards, so that a few rows exercise several shard objects."""
    monkeypatch.setattr(feature_store, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(feature_store, "SHARD_BYTES", 8 * 1024)


def test_arrays_use_the_sharding_codec_with_the_expected_object_count(tmp_path, small_objects):
    store = FeatureStore(str(tmp_path))
    rows = np.random.default_rng(0).standard_normal((50, 4, 8, 8)).astype(np.float16)  # 512 B per row
    store.write_shard("features", "shard-00000", {"tokens": rows, "ids": np.arange(50)})
    tokens = zarr.open_array(store.store, path="features/shard-00000/tokens", mode="r")
    assert tokens.chunks == (2, 4, 8, 8) and tokens.shards == (16, 4, 8, 8)  # 2 rows per KiB, 8 chunks per shard
    expected = ["zarr.json"] + [f"c/{i}/0/0/0" for i in range(math.ceil(50 / 16))]
    assert objects(tmp_path / "features" / "shard-00000" / "tokens") == sorted(expected)
    assert objects(tmp_path / "features" / "shard-00000" / "ids") == ["c/0", "zarr.json"]  # 400 B: one chunk
    np.testing.assert_array_equal(store.read("features", "shard-00000", "tokens"), rows)


def test_rerunning_one_shard_touches_no_other_object(tmp_path):
    store = FeatureStore(str(tmp_path))
    for index in range(3):
        store.write_shard("features", f"shard-{index:05d}", {"pooled": np.full((4, 6), index, np.float16)})
    before = {path: (tmp_path / path).stat().st_mtime_ns for path in objects(tmp_path)}
    store.write_shard("features", "shard-00001", {"pooled": np.full((3, 6), 7, np.float16)})
    after = {path: (tmp_path / path).stat().st_mtime_ns for path in objects(tmp_path)}
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert changed and all(p.startswith("features/shard-00001/") for p in changed)
    assert store.read("features", "shard-00001", "pooled").shape == (3, 6)
    assert store.read("features", "shard-00002", "pooled")[0, 0] == 2


def test_a_shard_opens_with_one_read(tmp_path, monkeypatch):
    store = FeatureStore(str(tmp_path))
    store.write_shard("maskcut", "shard-00000", {"embeddings": np.ones((9, 5)), "ann_ids": np.arange(9)})
    keys: list[str] = []
    real_get = zarr.storage.LocalStore.get

    async def counting_get(self, key, prototype=None, byte_range=None):
        keys.append(key)
        return await real_get(self, key, prototype, byte_range)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    assert store.open_array("maskcut", "shard-00000", "ann_ids").shape == (9,)
    assert store.has_shard("maskcut", "shard-00000", ["embeddings", "ann_ids"])
    assert keys == ["maskcut/shard-00000/zarr.json"] * 2  # the arrays' metadata is consolidated in it


def test_read_rows_across_chunks_and_shards_equals_fancy_indexing(tmp_path, small_objects):
    store = FeatureStore(str(tmp_path))
    rows = np.random.default_rng(1).standard_normal((50, 4, 8, 8)).astype(np.float16)
    store.write_shard("features", "shard-00000", {"tokens": rows})
    wanted = np.array([49, 0, 17, 16, 17, 33, 2])  # several chunks of several zarr shards, a repeat, any order
    np.testing.assert_array_equal(store.read_rows("features", "shard-00000", "tokens", wanted), rows[wanted])
