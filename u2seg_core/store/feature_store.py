"""The zarr v3 feature store: one group per stage, one group per shard, arrays inside.

Layout under the store root (a local folder or an fsspec URL such as s3://bucket/run/store.zarr):

    <group>/<shard>/zarr.json   shard group metadata: attributes (`complete` last) and the consolidated
                                metadata of its arrays, so one GET opens a shard with all its arrays
    <group>/<shard>/<name>/     per-shard arrays, e.g. features/shard-00000/tokens
    <group>/<name>/             global arrays, e.g. cluster/centroids

Object layout, sized for object stores with a million rows: an inner chunk (the unit of reading)
holds whole rows, about CHUNK_BYTES of them (one row when a row is larger, e.g. a 768 x 56 x 56
token grid), and the chunks are packed by the sharding codec into zarr shard objects of about
SHARD_BYTES (the unit of writing). An array that fits in one chunk is stored as that one chunk.
So a shard array is its `zarr.json` plus ceil(bytes / SHARD_BYTES) objects, whatever its row count.

Dtype rule: `write_shard` stores floating-point arrays as float16 (features are compared by cosine,
half precision is plenty and halves the store), except names listed in its `float32` argument;
integer and bool arrays keep their dtype. `write_array` (global arrays: centroids...) keeps every
dtype as given.

Safety: each shard group has exactly one writer (the task that owns the image shard). A writer
first deletes the shard group, spills the rows it is given to local temporary files, and on a
clean exit writes every array once, whole zarr shard by whole zarr shard (never a partial shard,
so never a read-modify-write), each array's metadata once, and the shard group's metadata LAST
(with `complete`); a killed writer leaves a shard that `has_shard` reports as missing and readers
refuse. Nothing outside `<group>/<shard>/` is rewritten (parent groups are created only if absent).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Collection, Iterator
from typing import IO, Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import ConsolidatedMetadata, GroupMetadata
from zarr.errors import NodeNotFoundError

from .. import storage

CHUNK_BYTES = 2**20
SHARD_BYTES = 128 * 2**20
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
        """Replace `<group>/<shard>` with `arrays` (rows along axis 0), then mark it complete.

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
        """A context manager that takes rows batch by batch and writes `<group>/<shard>` on exit (`ShardWriter`)."""
        return ShardWriter(self, group, shard, attrs, float32)

    def has_shard(self, group: str, shard: str, names: Collection[str] = ()) -> bool:
        """True when `<group>/<shard>` was completed and holds every array in `names`."""
        node = self._open_group(group, shard)
        if node is None or not node.attrs.get(COMPLETE, False):
            return False
        present = set(node.array_keys())
        return all(name in present for name in names)

    def open_array(self, group: str, shard: str, name: str) -> zarr.Array:
        """Handle on `<group>/<shard>/<name>` (metadata only; read rows with `handle[lo:hi]` or `.oindex`)."""
        node = self._complete_group(group, shard)
        if name not in set(node.array_keys()):
            raise MissingShardError(
                f"{self.url}/{group}/{shard} has no array '{name}' (it has {sorted(node.array_keys())})"
            )
        return node[name]

    def read(self, group: str, shard: str, name: str) -> np.ndarray:
        """The whole array `<group>/<shard>/<name>` (as stored: float16 features stay float16)."""
        return self.open_array(group, shard, name)[...]

    def read_rows(self, group: str, shard: str, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (1-d int indices, any order) of `<group>/<shard>/<name>`; only their chunks are read."""
        return read_rows(self.open_array(group, shard, name), rows)

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
        stored = zarr.create_array(
            self.store, name=f"{group}/{name}", data=array, overwrite=True, zarr_format=3,
            **(array_layout(array.shape, array.dtype) if array.ndim else {}),
        )
        stored.attrs.update({**(attrs or {}), COMPLETE: True})

    def read_array(self, group: str, name: str) -> np.ndarray:
        """The global array `<group>/<name>`; MissingShardError if absent or incomplete."""
        try:
            stored = zarr.open_array(self.store, path=f"{group}/{name}", mode="r", zarr_format=3)
        except (NodeNotFoundError, FileNotFoundError):
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

    def _open_group(self, group: str, shard: str) -> zarr.Group | None:
        try:
            return zarr.open_group(self.store, path=f"{group}/{shard}", mode="r", zarr_format=3)
        except (NodeNotFoundError, FileNotFoundError):
            return None

    def _complete_group(self, group: str, shard: str) -> zarr.Group:
        node = self._open_group(group, shard)
        if node is None or not node.attrs.get(COMPLETE, False):
            state = "missing" if node is None else "incomplete (its writer did not finish)"
            raise MissingShardError(
                f"{self.url}/{group}/{shard} is {state}; run the '{group}' stage for {shard} first"
            )
        return node


class ShardWriter:
    """Collects rows of one shard group; writes and marks it complete on a clean exit, never after an error.

    Entering deletes the group (an earlier, possibly half-written version must not be read). Each
    `append` adds rows along axis 0 to every named array (the same names on every call; arrays may
    get different row counts); rows go to local temporary files, so memory holds one batch. On exit
    each array is written once, one whole zarr shard at a time, then the group metadata (consolidated,
    with `attrs` and `complete`). `attrs` may be updated until the exit. Float arrays follow the
    float16 rule of `FeatureStore.write_shard`.
    """

    def __init__(
        self, store: FeatureStore, group: str, shard: str, attrs: dict[str, Any] | None, float32: Collection[str]
    ):
        self.store, self.group, self.shard = store, group, shard
        self.attrs = dict(attrs or {})
        self.float32 = set(float32)
        self._spills: dict[str, _Spill] = {}
        self._entered = False

    def __enter__(self) -> "ShardWriter":
        self.store.delete_shard(self.group, self.shard)
        self._entered = True
        return self

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Add rows to every array in `arrays`."""
        if not self._entered:
            raise RuntimeError("use ShardWriter as a context manager (`with store.shard_writer(...) as w:`)")
        if self._spills and set(arrays) != set(self._spills):
            raise ValueError(f"append got arrays {sorted(arrays)}, the shard has {sorted(self._spills)}")
        for name, array in arrays.items():
            array = np.asarray(array)
            if array.dtype.kind == "f":
                array = array.astype(np.float32 if name in self.float32 else np.float16, copy=False)
            if array.ndim == 0:
                raise ValueError(f"'{name}': shard arrays need a row axis, got a scalar")
            if name not in self._spills:
                self._spills[name] = _Spill(array.dtype, array.shape[1:])
            self._spills[name].add(name, array)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self._write()
        finally:
            for spill in self._spills.values():
                spill.file.close()

    def _write(self) -> None:
        path = f"{self.group}/{self.shard}"
        members = {}
        for name, spill in self._spills.items():
            shape = (spill.rows, *spill.row_shape)
            array = zarr.create_array(
                self.store.store, name=f"{path}/{name}", shape=shape, dtype=spill.dtype, fill_value=0,
                zarr_format=3, **array_layout(shape, spill.dtype),
            )
            step = array.shards[0] if array.shards else array.chunks[0]
            for lo in range(0, spill.rows, step):
                array[lo : lo + step] = spill.read(lo, min(lo + step, spill.rows))
            members[name] = array.metadata
        metadata = GroupMetadata(
            attributes={**self.attrs, COMPLETE: True}, consolidated_metadata=ConsolidatedMetadata(metadata=members)
        )
        document = metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
        storage.atomic_write_bytes(storage.join(self.store.url, self.group, self.shard, "zarr.json"), document)


class _Spill:
    """Rows of one array in a local temporary file (C order, fixed dtype and row shape)."""

    def __init__(self, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.dtype, self.row_shape = np.dtype(dtype), tuple(row_shape)
        self.row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        self.rows = 0
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="u2seg-shard-")

    def add(self, name: str, array: np.ndarray) -> None:
        if array.dtype != self.dtype or array.shape[1:] != self.row_shape:
            raise ValueError(
                f"'{name}': rows of {array.dtype} {array.shape[1:]} after rows of {self.dtype} {self.row_shape}"
            )
        self.file.write(np.ascontiguousarray(array).tobytes())
        self.rows += len(array)

    def read(self, lo: int, hi: int) -> np.ndarray:
        self.file.seek(lo * self.row_bytes)
        data = self.file.read((hi - lo) * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((hi - lo, *self.row_shape))


def array_layout(shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    """`chunks` (whole rows, about CHUNK_BYTES) and `shards` (about SHARD_BYTES, or None when the array
    fits in one chunk) for `zarr.create_array`; see the module docstring."""
    row_shape = tuple(max(1, s) for s in shape[1:])
    row_bytes = max(1, np.dtype(dtype).itemsize * math.prod(row_shape))
    rows = max(1, shape[0])
    chunk_rows = min(rows, max(1, CHUNK_BYTES // row_bytes))
    if chunk_rows >= rows:
        return {"chunks": (rows, *row_shape), "shards": None}
    chunks_per_shard = max(1, SHARD_BYTES // (chunk_rows * row_bytes))
    shard_rows = min(chunks_per_shard, math.ceil(rows / chunk_rows)) * chunk_rows
    return {"chunks": (chunk_rows, *row_shape), "shards": (shard_rows, *row_shape)}


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` for 1-d integer `rows` in any order (duplicates allowed), reading each needed chunk once.

    Chunk by chunk with basic slices: zarr's orthogonal selection on a sharded array decodes into buffers
    of the whole zarr shard (hundreds of MB for token grids), a slice only touches its chunks."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    chunk = array.chunks[0]
    blocks = rows // chunk
    for block in np.unique(blocks).tolist():
        where = np.flatnonzero(blocks == block)
        data = array[block * chunk : min((block + 1) * chunk, array.shape[0])]
        out[where] = data[rows[where] - block * chunk]
    return out

