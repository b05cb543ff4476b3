"""Where STEGO training reads the sample's token grids from: memory (or the GPU), or the store row by row.

Both sources hand out the same float16 rows, so training computes the same thing from either; the
stored one keeps memory bounded by a batch whatever the sample size (`stego.preload_bytes` decides).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ..features.stage import GROUP, TOKENS, SampleShard
from ..store import FeatureStore
from ..store.feature_store import read_rows

READ_THREADS = 8  # concurrent shard reads per batch (object stores answer each in tens of ms)


class TokenRows(Protocol):
    """n token grids, indexed 0..n-1."""

    @property
    def shape(self) -> tuple[int, int, int, int]:  # (n, C, h, w)
        ...

    def rows(self, images: np.ndarray) -> Tensor:
        """(len(images), C, h, w) grids of `images` (int indices, any order, repeats allowed)."""
        ...


class TensorRows:
    """Token grids held in one tensor (CPU or GPU)."""

    def __init__(self, tokens: np.ndarray | Tensor):
        self.tokens = torch.as_tensor(tokens)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.tokens.shape)  # type: ignore[return-value]

    def rows(self, images: np.ndarray) -> Tensor:
        return self.tokens[torch.as_tensor(np.asarray(images, np.int64), device=self.tokens.device)]


class StoredRows:
    """The sample's grids in `store.zarr/features/<shard>/tokens`, read on demand (only the needed chunks)."""

    def __init__(self, store: FeatureStore, sample: list[SampleShard]):
        if not sample:
            raise ValueError("the STEGO training sample is empty: no stored token grids to train on")
        self.sample = sample
        self.arrays = [store.open_array(GROUP, part.shard, TOKENS) for part in sample]
        self.offsets = np.cumsum([0] + [len(part.rows) for part in sample])
        first = self.arrays[0]
        self._shape = (int(self.offsets[-1]), *(int(s) for s in first.shape[1:]))
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="u2seg-tokens")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return math.prod(self._shape) * np.dtype(np.float16).itemsize

    @property
    def image_ids(self) -> np.ndarray:
        """(n,) image id of each row."""
        return np.concatenate([part.image_ids for part in self.sample])

    def rows(self, images: np.ndarray) -> Tensor:
        images = np.asarray(images, np.int64)
        parts = np.searchsorted(self.offsets, images, side="right") - 1
        out = np.empty((len(images), *self._shape[1:]), np.float16)

        def read(part: int) -> None:
            where = np.flatnonzero(parts == part)
            local = self.sample[part].rows[images[where] - self.offsets[part]]
            out[where] = read_rows(self.arrays[part], local)

        list(self._pool.map(read, np.unique(parts).tolist()))
        return torch.from_numpy(out)

    def load(self) -> TensorRows:
        """Every row in memory (shard by shard)."""
        return TensorRows(
            np.concatenate([read_rows(array, part.rows) for array, part in zip(self.arrays, self.sample)])
        )
