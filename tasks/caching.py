"""Where stage tasks persist their (small) results, and the cache keys that make new flow runs resume.

Prefect's result records live under the run directory, `RUN/.prefect/results/<cache key>`:
* local run directory: a plain `Path` (Prefect wraps it in a `LocalFileSystem`, no saved block needed);
* `s3://` run directory: a `RemoteFileSystem` block with the run's fsspec options, saved on the Prefect server
  as `remote-file-system/u2seg-results-<hash of the URL>` (Prefect only accepts saved blocks as task storage),
  so every Dask worker writes to and reads from the same bucket.

The cache key is `u2seg_core.cache_keys`' content key (computed once per shard in the flow and passed in as the
`key` parameter; no flow-run id, so a new flow run re-uses finished shards). A record only counts while the
shard's done-marker carries the same key and its outputs exist; otherwise the stale record is deleted before
the key is returned, so Prefect runs the task instead of reporting "Cached".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext
from prefect.filesystems import RemoteFileSystem

from u2seg_core import storage
from u2seg_core.config import StorageConfig
from u2seg_core.manifest import shard_name
from u2seg_core.registry import STAGES
from u2seg_core.steps import completed_global, completed_shard
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


def _prepare(params: dict[str, Any]) -> tuple[dict[str, Any], RunDir, str]:
    storage_cfg = StorageConfig.model_validate(json.loads(params["config"])["storage"])
    storage.configure(storage_cfg.fsspec_options())  # the marker may be on S3: this worker needs the options
    return params, RunDir(params["run_root"]), params["key"]


def shard_task_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    params, run, key = _prepare(parameters)
    if completed_shard(run, params["stage"], shard_name(params["shard_index"]), key) is None:
        storage.remove(result_record_url(run, key))
    return key


def global_task_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    params, run, key = _prepare(parameters)
    if STAGES[params["stage"]].relist or completed_global(run, params["stage"], key) is None:
        storage.remove(result_record_url(run, key))
    return key
