"""Batched image loading for one shard: decode + square resize in DataLoader worker processes.

Workers use the "spawn" start method (s3fs holds event-loop threads that do not survive a fork). A bad
image never stops the shard: it comes back as a `FailureRecord` in the batch where it would have been.
For a CUDA consumer the batches arrive in pinned (page-locked) memory, the pixels and the kept
originals both, so `.to("cuda", non_blocking=True)` copies them without a staging copy.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .. import storage
from ..manifest import FailureRecord, ImageRecord, ShardManifest
from .decode import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image

Resample = Literal["lanczos", "bilinear", "nearest"]
Transform = Callable[[Image.Image], torch.Tensor]  # decoded RGB image -> (3, h, w) tensor of any size; picklable

RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass
class ImageBatch:
    """Up to `batch_size` consecutive images of a shard.

    `pixels[i]` belongs to `records[i]`; images that failed are only in `failures` (a batch may hold
    no loaded image at all, then `pixels` is (0, 3, S, S)).
    """

    records: list[ImageRecord]
    pixels: torch.Tensor | list[torch.Tensor]  # (B, 3, S, S) uint8 RGB resized to S x S (aspect ratio not
    # kept); with a `transform`, the list of its (3, h, w) outputs
    original_sizes: list[tuple[int, int]]  # (H, W) of each decoded image
    originals: list[np.ndarray] | None  # (H, W, 3) uint8 full-size images when keep_original=True
    failures: list[FailureRecord]


@dataclass
class _Item:
    index: int
    pixels: torch.Tensor | None  # (3, S, S) uint8, or the transform's output
    size: tuple[int, int] | None
    original: torch.Tensor | None  # (H, W, 3) uint8; a tensor so that it crosses processes in shared memory
    reason: str | None


@dataclass
class _Collated:
    """What a worker sends back; `pin_memory` pins the pixels and the originals."""

    indices: list[int]
    pixels: torch.Tensor | list[torch.Tensor]
    sizes: list[tuple[int, int]]
    originals: list[torch.Tensor] | None
    failed: list[tuple[int, str]]

    def pin_memory(self) -> "_Collated":
        if isinstance(self.pixels, list):
            self.pixels = [p.pin_memory() for p in self.pixels]
        else:
            self.pixels = self.pixels.pin_memory()
        if self.originals is not None:
            self.originals = [original.pin_memory() for original in self.originals]
        return self


class _ShardImages(Dataset):
    """Item i = image i of the shard, decoded and resized, or the reason it failed."""

    def __init__(
        self,
        images: list[ImageRecord],
        resolution: int,
        resample: Resample,
        keep_original: bool,
        max_pixels: int,
        transform: Transform | None = None,
    ) -> None:
        self.urls = [im.url for im in images]
        self.resolution = resolution
        self.resample = RESAMPLE_FILTERS[resample]
        self.keep_original = keep_original
        self.max_pixels = max_pixels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, index: int) -> _Item:
        url = self.urls[index]
        try:
            im = load_image(url, self.max_pixels)
            if self.transform is not None:
                pixels = self.transform(im)
            else:
                side = self.resolution
                resized = im if im.size == (side, side) else im.resize((side, side), self.resample)
                pixels = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()
            original = torch.from_numpy(np.array(im, dtype=np.uint8)) if self.keep_original else None
            return _Item(index, pixels, (im.height, im.width), original, None)
        except ImageDecodeError as exc:
            return _Item(index, None, None, None, str(exc))
        except Exception as exc:  # one bad image (or one failed read) must not stop the shard
            return _Item(index, None, None, None, f"cannot load {url}: {type(exc).__name__}: {exc}")


def _collate(items: list[_Item], resolution: int, keep_original: bool, stack: bool = True) -> _Collated:
    loaded = [it for it in items if it.reason is None]
    if not stack:
        pixels = [it.pixels for it in loaded]
    elif loaded:
        pixels = torch.stack([it.pixels for it in loaded])
    else:
        pixels = torch.empty((0, 3, resolution, resolution), dtype=torch.uint8)
    return _Collated(
        indices=[it.index for it in loaded],
        pixels=pixels,
        sizes=[it.size for it in loaded],
        originals=[it.original for it in loaded] if keep_original else None,
        failed=[(it.index, it.reason) for it in items if it.reason is not None],
    )


def _register_storage_options(options: dict[str, dict], worker_id: int) -> None:
    """Worker init: spawned processes start without the parent's registered storage options."""
    for prefix, opts in options.items():
        storage.register_storage_options(prefix, opts)


def _remote_storage_options(images: list[ImageRecord]) -> dict[str, dict]:
    """Storage options the parent resolves for each remote image folder."""
    folders = {posixpath.dirname(im.url) for im in images if storage.is_remote(im.url)}
    return {f: opts for f in sorted(folders) if (opts := storage.storage_options_for(f))}


def iter_batches(
    shard: ShardManifest,
    resolution: int,
    batch_size: int,
    num_workers: int = 0,
    stage: str = "decode",
    resample: Resample = "lanczos",
    keep_original: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    transform: Transform | None = None,
    pin_memory: bool | None = None,
) -> Iterator[ImageBatch]:
    """Decode the shard's images in order, `batch_size` at a time, resized to `resolution` x `resolution`
    (or, given a `transform`, passed through it in the workers instead; `pixels` is then a list).

    Every image of the shard appears exactly once, in `records` or in `failures` (stage=`stage`).
    `num_workers` > 0 decodes in that many spawned worker processes. `pin_memory` (default: whether
    CUDA is available) returns page-locked tensors, for asynchronous host-to-GPU copies.
    """
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample={resample!r}; use one of {sorted(RESAMPLE_FILTERS)}")
    dataset = _ShardImages(shard.images, resolution, resample, keep_original, max_pixels, transform)
    workers = {}
    if num_workers > 0:
        workers = {
            "multiprocessing_context": "spawn",
            "worker_init_fn": partial(_register_storage_options, _remote_storage_options(shard.images)),
        }
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=partial(_collate, resolution=resolution, keep_original=keep_original, stack=transform is None),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        **workers,
    )
    for collated in loader:
        yield ImageBatch(
            records=[shard.images[i] for i in collated.indices],
            pixels=collated.pixels,
            original_sizes=list(collated.sizes),
            originals=[t.numpy() for t in collated.originals] if collated.originals is not None else None,
            failures=[
                FailureRecord(
                    image_id=shard.images[i].image_id,
                    file_name=shard.images[i].file_name,
                    stage=stage,
                    reason=reason,
                )
                for i, reason in collated.failed
            ],
        )
