"""Which images each iteration trains on: a deterministic, resumable stream of global batches.

Epoch e visits the index rows in the order of a permutation seeded by (seed, e) (detectron2's TrainingSampler
shuffles an infinite stream the same way); with aspect-ratio grouping, rows wait in a landscape or portrait
bucket until it holds a full global batch (detectron2's AspectRatioGroupedDataset). Every image of a batch gets
its own augmentation/sampling seed from (seed, iteration, slot). The batch of iteration i is therefore a
function of i alone: a resumed run replays the index stream (integers only) up to its iteration, and every DDP
process takes its own slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

Batch = list[tuple[int, int]]


class GlobalBatches:
    """Infinite sequence of global batches [(index row, item seed)] of `batch_size` images."""

    def __init__(self, groups: np.ndarray, batch_size: int, seed: int, grouping: bool = True) -> None:
        if len(groups) == 0:
            raise ValueError("no training images: every merged image is held out or the merge stage is empty")
        self.groups = np.asarray(groups) if grouping else np.zeros(len(groups), dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed

    def _rows(self) -> Iterator[int]:
        epoch = 0
        while True:
            yield from np.random.default_rng([self.seed, epoch]).permutation(len(self.groups)).tolist()
            epoch += 1

    def _item_seed(self, iteration: int, slot: int) -> int:
        return int(np.random.SeedSequence([self.seed, iteration, slot]).generate_state(1)[0])

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Global batches from iteration `start` on (the earlier ones are replayed, not loaded)."""
        buckets: dict[int, list[int]] = {}
        iteration = 0
        for row in self._rows():
            bucket = buckets.setdefault(int(self.groups[row]), [])
            bucket.append(row)
            if len(bucket) < self.batch_size:
                continue
            rows = bucket[:]
            bucket.clear()
            if iteration >= start:
                yield [(r, self._item_seed(iteration, slot)) for slot, r in enumerate(rows)]
            iteration += 1


class RankBatches:
    """The micro-batches of one process: iteration i's global batch cut into chunks of `ims_per_device`;
    process `rank` of `world_size` takes chunks rank*m .. rank*m + m-1 (m = chunks per process). Usable as a
    DataLoader `batch_sampler`; stops after iteration `max_iter - 1`."""

    def __init__(self, batches: GlobalBatches, rank: int, world_size: int, ims_per_device: int,
                 start: int, max_iter: int) -> None:
        per_process, rest = divmod(batches.batch_size, world_size * ims_per_device)
        if rest or per_process == 0:
            raise ValueError(
                f"ims_per_batch={batches.batch_size} must be a multiple of processes ({world_size}) x "
                f"ims_per_device ({ims_per_device})"
            )
        self.batches, self.rank, self.ims_per_device = batches, rank, ims_per_device
        self.micro_per_iter = per_process
        self.start, self.max_iter = start, max_iter

    def __len__(self) -> int:
        return max(self.max_iter - self.start, 0) * self.micro_per_iter

    def __iter__(self) -> Iterator[Batch]:
        first = self.rank * self.micro_per_iter * self.ims_per_device
        for _, batch in zip(range(self.start, self.max_iter), self.batches.batches(self.start)):
            mine = batch[first: first + self.micro_per_iter * self.ims_per_device]
            for k in range(0, len(mine), self.ims_per_device):
                yield mine[k: k + self.ims_per_device]
