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

    image_id: int = Field(
        description="stable id: the COCO id for COCO sources, else derived from `file_name` (io/plan.py)"
    )
    file_name: str = Field(description="path relative to the source root (COCO `file_name`): the image identity")
    url: str = Field(description="full local path or URL the image is read from")
    size_bytes: int = -1
    version: str = Field("", description="what the listing says changes with the bytes: mtime (ns) or ETag")
    width: int | None = None
    height: int | None = None


class ShardManifest(BaseModel):
    """The images of one hash bucket of the source (io/plan.py), sorted by file name."""

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
        default_factory=dict, description="name -> file or folder relative to the run directory (this shard's only)"
    )
    files: dict[str, int] = Field(
        default_factory=dict,
        description="every file under `outputs` -> its size in bytes; filled by the step runner, checked on reuse",
    )
    digest: str = Field("", description="content hash of the outputs, when the step computes one (plan)")
    counts: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failure_rate(self) -> float:
        return self.n_failed / self.n_images if self.n_images else 0.0

    @property
    def hash(self) -> str:
        """What downstream cache keys see of this shard: its cache key (which covers every input) and result,
        or, when the step computes a content `digest`, that digest instead of the key (so a touched but
        unchanged image recomputes nothing downstream). Timings, counts and file sizes are excluded."""
        exclude = {"seconds", "counts", "files"} | ({"cache_key"} if self.digest else set())
        return hash_json(self.model_dump(mode="json", exclude=exclude))


class GlobalResult(BaseModel):
    """What a global (reduce) step returns: K-means fit, STEGO training, merge finalize, evaluation."""

    stage: str
    cache_key: str = ""
    outputs: dict[str, str] = Field(
        default_factory=dict, description="name -> file or folder relative to the run directory"
    )
    files: dict[str, int] = Field(default_factory=dict, description="as ShardResult.files")
    summary: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="numbers that vary between identical runs (losses under non-deterministic GPU kernels): "
        "shown with the summary, never hashed",
    )
    warnings: list[str] = Field(default_factory=list, description="what the user should know (e.g. K > masks)")
    digest: str = Field("", description="as ShardResult.digest (plan: which shards exist)")
    seconds: float = 0.0

    @property
    def hash(self) -> str:
        """Cache key + outputs + summary (not timings, file sizes, `metrics` or warnings); with a `digest`, the
        digest and outputs only."""
        if self.digest:
            return hash_json([self.stage, self.digest, self.outputs])
        return hash_json(self.model_dump(mode="json", exclude={"seconds", "files", "metrics", "warnings"}))


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

    def shard_hashes(self) -> dict[str, str]:
        """shard name -> ShardResult hash."""
        return {s.shard: s.hash for s in self.shards}

    @property
    def hash(self) -> str:
        """What downstream keys and staleness checks see of the stage. `upstream` is left out: it reaches the
        hash through the shard and global results' cache keys (except where a content digest replaces them)."""
        return hash_json(
            [
                self.stage,
                self.stage_version,
                self.config_hash,
                [s.hash for s in self.shards],
                self.outputs,
                self.global_result.hash if self.global_result else None,
            ]
        )


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"
