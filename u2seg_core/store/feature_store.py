"""The zarr v3 feature store: one group per stage, one group per shard, arrays inside.

Layout under the store root (a local folder or an fsspec URL such as s3://bucket/run/store.zarr):

    <group>/<shard>/<name>    per-shard arrays, e.g. features/shard-00000/tokens
    <group>/<name>            global arrays, e.g. cluster/centroids

Dtype rule: `write_shard` stores floating-point arrays as float16 (features are compared by cosine,
half precision is plenty and halves the store), except names listed in its `float32` argument;
integer and bool arrays keep their dtype. `write_array` (global arrays: centroids...) keeps every
dtype as given.

Safety: each shard group has exactly one writer (the task that owns the image shard), so no two
tasks ever touch one chunk. A write first replaces the whole shard group, then writes the arrays,
and sets the `complete` attribute LAST; a killed writer leaves a shard that `has_shard` reports as
missing and readers refuse.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import numpy as np
import zarr
from zarr.errors import NodeNotFoundError

from .. import storage

CHUNK_BYTES = 8 * 2**20
COMPLETE = "complete"


class MissingShardError(FileNotFoundError):
    """A shard (or global array) that a reader needs is absent or was never completed."""


class FeatureStore:
    """zarr v3 arrays under `url` (local path or fsspec URL; S3 options from `storage_options_for`)."""

    def __init__(self, url: str):
        self.url = url
        if storage.is_remote(url):
            self.store = zarr.storage.FsspecStore.from_url(url, storage_options=storage.storage_options_for(url))
        else:
            self.store = zarr.storage.LocalStore(url.removeprefix("file://"))

    def __repr__(self) -> str:
        return f"FeatureStore({self.url!r})"

    # ---- per-shard arrays ------------------------------------------------------------------

    def write_shard(
        self,
        group: str,
        shard: str,
        arrays: dict[str, np.ndarray],
        attrs: dict[str, Any] | None = None,
        float32: Collection[str] = (),
    ) -> None:
        """Replace `<group>/<shard>` with `arrays` (chunked along axis 0), then mark it complete.

        attrs: JSON metadata to record (backbone, input size, code version...). float32: names of
        float arrays to keep in float32 instead of the default float16.
        """
        with self.shard_writer(group, shard, attrs, float32) as writer:
            writer.append(arrays)

    def shard_writer(
        self,
        group: str,
        shard: str,
        attrs: dict[str, Any] | None = None,
        float32: Collection[str] = (),
    ) -> "ShardWriter":
        """A context manager that streams rows into `<group>/<shard>` batch by batch (see `ShardWriter`)."""
        return ShardWriter(self, group, shard, attrs, float32)

    def has_shard(self, group: str, shard: str, names: Collection[str] = ()) -> bool:
        """True when `<group>/<shard>` was completed and holds every array in `names`."""
        try:
            node = zarr.open_group(self.store, path=f"{group}/{shard}", mode="r")
        except NodeNotFoundError:
            return False
        if not node.attrs.get(COMPLETE, False):
            return False
        present = set(node.array_keys())
        return all(name in present for name in names)

    def read(self, group: str, shard: str, name: str) -> np.ndarray:
        """The whole array `<group>/<shard>/<name>` (as stored: float16 features stay float16)."""
        node = self._complete_group(group, shard)
        if name not in set(node.array_keys()):
            raise MissingShardError(
                f"{self.url}/{group}/{shard} has no array '{name}' (it has {sorted(node.array_keys())})"
            )
        return node[name][...]

    def shard_attrs(self, group: str, shard: str) -> dict[str, Any]:
        """Attributes recorded by `write_shard` (including `complete`)."""
        return dict(self._complete_group(group, shard).attrs.asdict())

    def iter_shards(self, group: str, name: str, shards: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Stream (shard, array) for each shard in order; raises MissingShardError naming a missing one."""
        for shard in shards:
            yield shard, self.read(group, shard, name)

    def delete_shard(self, group: str, shard: str) -> None:
        """Remove `<group>/<shard>` and everything in it (no error if absent)."""
        storage.remove(storage.join(self.url, group, shard), recursive=True)

    # ---- global arrays ---------------------------------------------------------------------

    def write_array(self, group: str, name: str, array: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Replace the global array `<group>/<name>` (dtype kept as given), then mark it complete."""
        array = np.asarray(array)
        node = zarr.open_group(self.store, path=group, mode="a")
        chunks = row_chunks(array.shape, array.dtype, max_rows=len(array)) if array.ndim else ()
        stored = node.create_array(name, data=array, chunks=chunks or "auto", overwrite=True)
        stored.attrs.update({**(attrs or {}), COMPLETE: True})

    def read_array(self, group: str, name: str) -> np.ndarray:
        """The global array `<group>/<name>`; MissingShardError if absent or incomplete."""
        try:
            stored = zarr.open_array(self.store, path=f"{group}/{name}", mode="r")
        except NodeNotFoundError:
            stored = None
        if stored is None or not stored.attrs.get(COMPLETE, False):
            raise MissingShardError(
                f"{self.url}/{group}/{name} is missing or incomplete; run the stage that writes it ('{group}') first"
            )
        return stored[...]

    def array_attrs(self, group: str, name: str) -> dict[str, Any]:
        """Attributes of the global array `<group>/<name>`."""
        self.read_array(group, name)
        return dict(zarr.open_array(self.store, path=f"{group}/{name}", mode="r").attrs.asdict())

    # ---- helpers ---------------------------------------------------------------------------

    def _complete_group(self, group: str, shard: str) -> zarr.Group:
        try:
            node = zarr.open_group(self.store, path=f"{group}/{shard}", mode="r")
        except NodeNotFoundError:
            node = None
        if node is None or not node.attrs.get(COMPLETE, False):
            state = "missing" if node is None else "incomplete (its writer did not finish)"
            raise MissingShardError(
                f"{self.url}/{group}/{shard} is {state}; run the '{group}' stage for {shard} first"
            )
        return node


class ShardWriter:
    """Streams rows into one shard group; marks it complete on a clean exit, never after an error.

    Entering replaces the group (an earlier, possibly half-written version is deleted). Each
    `append` adds rows along axis 0 to every named array, creating the arrays on the first call
    (append zero-row arrays to create empty ones). Float arrays follow the float16 rule of
    `FeatureStore.write_shard`.
    """

    def __init__(
        self, store: FeatureStore, group: str, shard: str, attrs: dict[str, Any] | None, float32: Collection[str]
    ):
        self.store, self.group, self.shard = store, group, shard
        self.attrs = dict(attrs or {})
        self.float32 = set(float32)
        self.node: zarr.Group | None = None
        self.arrays: dict[str, zarr.Array] = {}

    def __enter__(self) -> "ShardWriter":
        self.node = zarr.create_group(store=self.store.store, path=f"{self.group}/{self.shard}", overwrite=True)
        return self

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Add rows to every array in `arrays` (the same names on every call)."""
        if self.node is None:
            raise RuntimeError("use ShardWriter as a context manager (`with store.shard_writer(...) as w:`)")
        if self.arrays and set(arrays) != set(self.arrays):
            raise ValueError(f"append got arrays {sorted(arrays)}, the shard has {sorted(self.arrays)}")
        for name, array in arrays.items():
            array = np.asarray(array)
            if array.dtype.kind == "f":
                array = array.astype(np.float32 if name in self.float32 else np.float16, copy=False)
            if array.ndim == 0:
                raise ValueError(f"'{name}': shard arrays need a row axis, got a scalar")
            if name not in self.arrays:
                chunks = row_chunks(array.shape, array.dtype)
                self.arrays[name] = self.node.create_array(name, data=array, chunks=chunks)
            elif len(array):
                self.arrays[name].append(array, axis=0)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.node.attrs.update({**self.attrs, COMPLETE: True})


def row_chunks(shape: tuple[int, ...], dtype: np.dtype, max_rows: int | None = None) -> tuple[int, ...]:
    """Chunks splitting axis 0 into blocks of about CHUNK_BYTES (at least 1 row, at most `max_rows`)."""
    row_bytes = max(1, np.dtype(dtype).itemsize * int(np.prod(shape[1:])))
    rows = CHUNK_BYTES // row_bytes if max_rows is None else min(max_rows, CHUNK_BYTES // row_bytes)
    return (max(1, rows),) + tuple(max(1, s) for s in shape[1:])
