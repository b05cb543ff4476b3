"""Where stage tasks persist their (small) results, and the cache keys that make new flow runs resume.

Prefect's result records live under the run directory, `RUN/.prefect/results/<cache key>`:
* local run directory: a plain `Path` (Prefect wraps it in a `LocalFileSystem`, no saved block needed);
* `s3://` run directory: a `RemoteFileSystem` block with the run's fsspec options, saved on the Prefect server
  as `remote-file-system/u2seg-results-<hash of the URL>` (Prefect only accepts saved blocks as task storage),
  so every Dask worker writes to and reads from the same bucket.

The cache key is `u2seg_core.pipeline`'s content key (computed once per shard in the flow and passed in as the
`key` parameter; no flow-run id, so a new flow run re-uses finished shards). A record only counts while the
shard's done-marker carries the same key and its outputs exist; otherwise the stale record is deleted before
the key is returned, so Prefect runs the task instead of reporting "Cached".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext
from prefect.filesystems import RemoteFileSystem

from u2seg_core import storage
from u2seg_core.manifest import shard_name
from u2seg_core.pipeline import completed_global, completed_shard
from u2seg_core.rundir import RunDir


def result_record_url(run: RunDir, key: str) -> str:
    return run.url(".prefect", "results", key)


def result_storage_for(run: RunDir) -> Path | RemoteFileSystem:
    """Task result storage under the run directory (call inside a flow: S3 needs the Prefect API)."""
    base = run.url(".prefect", "results")
    if not storage.is_remote(base):
        return Path(base)
    block = RemoteFileSystem(basepath=base, settings=storage.storage_options_for(base))
    block.save(f"u2seg-results-{storage.hash_json(base)}", overwrite=True)
    return block


def shard_task_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    run, key = RunDir(parameters["run_root"]), parameters["key"]
    if completed_shard(run, parameters["stage"], shard_name(parameters["shard_index"]), key) is None:
        storage.remove(result_record_url(run, key))
    return key


def global_task_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    run, key = RunDir(parameters["run_root"]), parameters["key"]
    if completed_global(run, parameters["stage"], key) is None:
        storage.remove(result_record_url(run, key))
    return key
