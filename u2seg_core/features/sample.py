"""The STEGO training sample: which images get their full token grid stored and trained on.

Each image gets a key u in [0, 1) from a seeded hash of its `file_name` (the image identity), so
membership depends neither on the shard layout nor on the other images. With N planned images and a
sample of k (`features.stego_sample`):

    trained:  u < min(1, k / N)                    (about k images; every image when N <= k)
    stored:   u < the power of two >= min(1, k / N)  (a superset, at most about 2k images)

The stored threshold changes only when N crosses k * 2^j, so adding or removing a few images leaves
every features shard's output as it was; the trained threshold follows N exactly. The stored threshold enters
the features stage's cache keys (`store_key_material`), so crossing a boundary recomputes every features shard.
"""

from __future__ import annotations

import hashlib
import math

from ..config import PipelineConfig
from ..manifest import StageManifest
from ..rundir import RunDir

KEY_BITS = 64


def image_key(file_name: str, seed: int) -> float:
    """u in [0, 1): the first 64 bits of sha256("<seed>:<file_name>") / 2^64 (exact in float64 up to 2^-53)."""
    digest = hashlib.sha256(f"{seed}:{file_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**KEY_BITS


def train_fraction(n_images: int, sample: int) -> float:
    """Key threshold of the trained sample: min(1, sample / n_images)."""
    return 1.0 if n_images <= sample else sample / n_images


def store_fraction(n_images: int, sample: int) -> float:
    """Key threshold of the stored grids: the smallest power of two >= `train_fraction` (at most 1)."""
    return 2.0 ** math.ceil(math.log2(train_fraction(n_images, sample)))


def planned_images(run: RunDir) -> int:
    """Number of images in the run's plan (the N above)."""
    return int(run.stage_manifest("plan").summary["n_images"])


def store_key_material(cfg: PipelineConfig, upstream: dict[str, StageManifest]) -> dict[str, float]:
    """The features stage's extra cache-key material: the stored threshold for the plan's N images."""
    n_images = int(upstream["plan"].summary["n_images"])
    return {"store_fraction": store_fraction(n_images, cfg.features.stego_sample)}
