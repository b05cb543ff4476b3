"""zarr v3 feature store: round trips (local and S3), dtype rule, completion marker, streaming reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from u2seg_core.store import FeatureStore, MissingShardError


def sample_arrays(seed: int, n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.standard_normal((n, 6, 3, 4)),
        "pooled": rng.standard_normal((n, 6)).astype(np.float32),
        "image_ids": np.arange(n, dtype=np.int64) + 100 * seed,
        "valid": rng.random(n) > 0.5,
    }


def check_round_trip(store: FeatureStore) -> None:
    arrays = sample_arrays(1)
    store.write_shard("features", "shard-00000", arrays, attrs={"backbone": "pixel", "resolution": 64})
    assert store.has_shard("features", "shard-00000", ["tokens", "pooled", "image_ids", "valid"])
    tokens = store.read("features", "shard-00000", "tokens")
    assert tokens.dtype == np.float16 and tokens.shape == (5, 6, 3, 4)
    np.testing.assert_allclose(tokens, arrays["tokens"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(store.read("features", "shard-00000", "image_ids"), arrays["image_ids"])
    np.testing.assert_array_equal(store.read("features", "shard-00000", "valid"), arrays["valid"])
    assert store.shard_attrs("features", "shard-00000") == {"backbone": "pixel", "resolution": 64, "complete": True}
    centroids = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    store.write_array("cluster", "centroids", centroids, attrs={"k": 4})
    read_back = store.read_array("cluster", "centroids")
    assert read_back.dtype == np.float32
    np.testing.assert_array_equal(read_back, centroids)


def test_local_round_trip(tmp_path: Path) -> None:
    check_round_trip(FeatureStore(str(tmp_path / "store.zarr")))


def test_s3_round_trip(s3_bucket: str) -> None:
    store = FeatureStore(f"{s3_bucket}/run/store.zarr")
    check_round_trip(store)
    store.delete_shard("features", "shard-00000")
    assert not store.has_shard("features", "shard-00000")


def test_dtype_rule(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path))
    arrays = {
        "f64": np.ones((2, 3)),
        "f32": np.ones((2, 3), np.float32),
        "kept": np.full((2, 3), 1 / 3, np.float64),
        "i32": np.ones(2, np.int32),
        "u8": np.ones((2, 4), np.uint8),
        "flag": np.ones(2, bool),
    }
    store.write_shard("g", "s", arrays, float32=["kept"])
    dtypes = {name: store.read("g", "s", name).dtype for name in arrays}
    assert dtypes == {
        "f64": np.float16, "f32": np.float16, "kept": np.float32, "i32": np.int32, "u8": np.uint8, "flag": bool,
    }
    assert store.read("g", "s", "kept")[0, 0] == np.float32(1 / 3)
    store.write_array("g", "global64", np.full(3, 1 / 3))
    assert store.read_array("g", "global64").dtype == np.float64


def test_chunks_hold_whole_rows_and_shards_pack_them(tmp_path: Path) -> None:
    import zarr

    from u2seg_core.store import feature_store

    store = FeatureStore(str(tmp_path))
    big = np.ones((6, 1024, 1024), np.float16)  # 2 MiB per row: one row per chunk
    small = np.zeros((5000, 64), np.float16)  # 128 B per row: 8192 rows per chunk, so one chunk
    store.write_shard("g", "s", {"big": big, "small": small, "ids": np.arange(6)})
    stored = zarr.open_array(store.store, path="g/s/big", mode="r")
    assert stored.chunks == (1, 1024, 1024) and stored.shards == (6, 1024, 1024)
    assert zarr.open_array(store.store, path="g/s/small", mode="r").shards is None
    assert feature_store.array_layout((6, 1024, 1024), np.float16)["chunks"] == (1, 1024, 1024)
    assert sorted(p.name for p in (tmp_path / "g" / "s" / "big").rglob("*") if p.is_file()) == ["0", "zarr.json"]


def test_incomplete_shard_is_not_a_shard(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path))
    store.write_shard("features", "shard-00001", sample_arrays(2))
    with pytest.raises(RuntimeError, match="killed"):
        with store.shard_writer("features", "shard-00001", attrs={"backbone": "pixel"}) as writer:
            writer.append(sample_arrays(3))
            raise RuntimeError("writer killed")
    assert not store.has_shard("features", "shard-00001")  # the old version is gone, the new one never completed
    with pytest.raises(MissingShardError, match="shard-00001 is missing"):
        store.read("features", "shard-00001", "tokens")


def test_writer_killed_before_the_group_metadata_leaves_an_incomplete_shard(tmp_path: Path, monkeypatch) -> None:
    from u2seg_core import storage

    store = FeatureStore(str(tmp_path))

    def killed(url: str, data: bytes) -> None:
        raise OSError("killed while writing " + url)

    monkeypatch.setattr(storage, "atomic_write_bytes", killed)
    with pytest.raises(OSError, match="killed"):
        store.write_shard("features", "shard-00001", sample_arrays(3))
    assert (tmp_path / "features" / "shard-00001" / "tokens" / "zarr.json").exists()
    assert not store.has_shard("features", "shard-00001")
    with pytest.raises(MissingShardError, match="shard-00001 is incomplete"):
        store.read("features", "shard-00001", "tokens")
    marker = json.loads((tmp_path / "features" / "shard-00001" / "zarr.json").read_text())
    assert "complete" not in marker["attributes"]


def test_rewrite_replaces_old_arrays(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path))
    store.write_shard("features", "shard-00000", sample_arrays(1, n=7))
    store.write_shard("features", "shard-00000", {"image_ids": np.arange(2)})
    assert not store.has_shard("features", "shard-00000", ["tokens"])
    assert store.read("features", "shard-00000", "image_ids").tolist() == [0, 1]


def test_streaming_writer_appends_batches(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path))
    parts = [sample_arrays(seed, n) for seed, n in ((1, 3), (2, 0), (3, 4))]
    with store.shard_writer("features", "shard-00000", attrs={"n": 7}) as writer:
        for part in parts:
            writer.append(part)
    for name in ("tokens", "image_ids", "valid"):
        expected = np.concatenate([p[name] for p in parts])
        got = store.read("features", "shard-00000", name)
        np.testing.assert_allclose(got.astype(expected.dtype), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="the shard has"):
        with store.shard_writer("features", "shard-00002") as writer:
            writer.append({"a": np.zeros(2)})
            writer.append({"b": np.zeros(2)})
    with pytest.raises(ValueError, match="after rows of"):
        with store.shard_writer("features", "shard-00002") as writer:
            writer.append({"a": np.zeros((2, 3))})
            writer.append({"a": np.zeros((2, 4))})
    assert not store.has_shard("features", "shard-00002")


def test_read_rows_any_order(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path))
    arrays = sample_arrays(4, n=9)
    store.write_shard("features", "shard-00000", arrays)
    rows = np.array([7, 0, 7, 3])
    got = store.read_rows("features", "shard-00000", "image_ids", rows)
    np.testing.assert_array_equal(got, arrays["image_ids"][rows])
    assert store.read_rows("features", "shard-00000", "tokens", np.zeros(0, np.int64)).shape == (0, 6, 3, 4)


def test_iter_shards_order_and_missing_shard(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path))
    for index in (2, 0, 1):
        store.write_shard("features", f"shard-0000{index}", sample_arrays(index, n=index + 1))
    order = ["shard-00001", "shard-00000", "shard-00002"]
    streamed = list(store.iter_shards("features", "image_ids", order))
    assert [name for name, _ in streamed] == order
    assert [ids.tolist() for _, ids in streamed] == [[100, 101], [0], [200, 201, 202]]
    stream = store.iter_shards("features", "image_ids", ["shard-00000", "shard-00007"])
    assert next(stream)[0] == "shard-00000"
    with pytest.raises(MissingShardError, match="shard-00007 is missing"):
        next(stream)
    with pytest.raises(MissingShardError, match="no array 'nope'"):
        store.read("features", "shard-00000", "nope")
    with pytest.raises(MissingShardError, match="cluster/centroids"):
        store.read_array("cluster", "centroids")
    store.delete_shard("features", "shard-00000")
    assert not store.has_shard("features", "shard-00000")
    assert store.has_shard("features", "shard-00001", ["image_ids"])
