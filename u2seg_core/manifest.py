"""Small manifests passed between stages and tasks (never arrays).

All are pydantic models serialised as JSON in the run directory; `hash` fields are content
hashes used in cache keys (docs/architecture.md, "Manifest schema").
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .storage import hash_json


class ImageRecord(BaseModel):
    """One input image, as listed by the source."""

    image_id: int = Field(description="global id, 1-based, in sorted source order")
    file_name: str = Field(description="path relative to the source root (COCO `file_name`)")
    url: str = Field(description="full local path or URL the image is read from")
    size_bytes: int = -1
    content_hash: str = Field("", description="sha256 prefix of the file bytes")
    width: int | None = None
    height: int | None = None


class ShardManifest(BaseModel):
    """A fixed, deterministic slice of the sorted image list."""

    shard_index: int
    source: str
    images: list[ImageRecord]

    @property
    def name(self) -> str:
        return shard_name(self.shard_index)

    @property
    def hash(self) -> str:
        return hash_json([self.source, [im.model_dump(mode="json") for im in self.images]])


class FailureRecord(BaseModel):
    """A per-image failure: recorded, reported, never silently skipped."""

    image_id: int
    file_name: str
    stage: str
    reason: str


class ShardResult(BaseModel):
    """What a stage task returns for one shard; also written as the shard's done-marker."""

    stage: str
    shard: str
    cache_key: str = ""
    n_images: int = 0
    n_failed: int = 0
    failures: list[FailureRecord] = Field(default_factory=list)
    outputs: dict[str, str] = Field(
        default_factory=dict, description="name -> path relative to the run directory"
    )
    counts: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failure_rate(self) -> float:
        return self.n_failed / self.n_images if self.n_images else 0.0

    @property
    def hash(self) -> str:
        """Identity of the outputs for downstream cache keys (timings and counts excluded, so a
        recomputed shard with the same outputs keeps its hash)."""
        data = self.model_dump(mode="json", exclude={"seconds", "cache_key", "counts"})
        return hash_json(data)


class GlobalResult(BaseModel):
    """What a global (reduce) step returns: K-means fit, STEGO training, merge finalize, evaluation."""

    stage: str
    outputs: dict[str, str] = Field(
        default_factory=dict, description="name -> path relative to the run directory"
    )
    summary: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0

    @property
    def hash(self) -> str:
        return hash_json(self.model_dump(mode="json", exclude={"seconds"}))


class StageManifest(BaseModel):
    """Written once a stage has finished all its shards (or its global step)."""

    stage: str
    stage_version: str
    code_version: str
    config: dict[str, Any]
    config_hash: str
    upstream: dict[str, str] = Field(default_factory=dict, description="stage -> manifest hash")
    shards: list[ShardResult] = Field(default_factory=list)
    outputs: dict[str, str] = Field(default_factory=dict)
    summary: dict[str, Any] = Field(default_factory=dict)
    global_result: GlobalResult | None = None

    @property
    def failures(self) -> list[FailureRecord]:
        return [f for s in self.shards for f in s.failures]

    @property
    def hash(self) -> str:
        return hash_json(
            [
                self.stage,
                self.stage_version,
                self.config_hash,
                self.upstream,
                [s.hash for s in self.shards],
                self.outputs,
                self.global_result.hash if self.global_result else None,
            ]
        )


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"
