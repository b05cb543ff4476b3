"""Stage tasks retry transient I/O errors (with backoff) and nothing else."""

from __future__ import annotations

import errno
import operator

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.stages import run_stage
from tasks.retry import is_transient_error
from u2seg_core import storage
from u2seg_core.config import PipelineConfig
from u2seg_core.manifest import ImageRecord, ShardManifest, ShardResult, StageManifest
from u2seg_core.registry import STAGES, StageSpec
from u2seg_core.steps import ShardFailedError
from u2seg_core.rundir import RunDir

CALLS: list[str] = []
ERRORS: dict[str, list[BaseException]] = {}


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def _wrapped(cause: BaseException) -> OSError:
    error = OSError(errno.EIO, "wrapped")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "error, transient",
    [
        (OSError(errno.EBUSY, "SlowDown"), True),  # s3fs's translation of S3 throttling
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset"), True),
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (EndpointConnectionError(endpoint_url="http://s3"), True),
        (_wrapped(_client_error("Throttling", 400)), True),
        (FileNotFoundError("upstream output missing"), False),
        (PermissionError("denied"), False),
        (_client_error("AccessDenied", 403), False),
        (ValueError("bad config"), False),
        (ShardFailedError(ShardResult(stage="s", shard="shard-00000", n_images=2, n_failed=2), 0.5), False),
    ],
)
def test_transient_errors_are_told_apart(error, transient):
    assert is_transient_error(error) is transient


def failing_step(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Raises the errors queued for this shard, one per call, then succeeds."""
    CALLS.append(shard.name)
    if ERRORS.get(shard.name):
        raise ERRORS[shard.name].pop(0)
    return ShardResult(stage="features", shard=shard.name, n_images=len(shard.images))


@pytest.fixture
def toy_run(tmp_path, monkeypatch):
    """A planned run of 2 one-image shards whose features stage is `failing_step`."""
    monkeypatch.setitem(STAGES, "features", StageSpec(
        "features", "test", ("plan",), operator.attrgetter("features"), shard_step=f"{__name__}:failing_step"))
    run = RunDir(str(tmp_path / "run"))
    shards = [ShardManifest(shard_index=i, source="test", images=[ImageRecord(image_id=i + 1, file_name="x", url="x")])
              for i in range(2)]
    for shard in shards:
        storage.write_json(run.shard_manifest_url(shard.shard_index), shard.model_dump(mode="json"))
    plan = StageManifest(stage="plan", stage_version="1", code_version="test", config={}, config_hash="",
                         summary={"n_shards": 2, "shards": [[s.shard_index, s.hash] for s in shards]})
    storage.write_json(run.stage_manifest_url("plan"), plan.model_dump(mode="json"))
    CALLS.clear()
    ERRORS.clear()
    return run


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def features_only(run_dir: str, cfg: PipelineConfig):
    return run_stage("features", run_dir, cfg)


def test_transient_error_is_retried_and_a_permanent_one_is_not(toy_run, prefect_api):
    cfg = PipelineConfig.demo()
    cfg = cfg.model_copy(update={"orchestration": cfg.orchestration.model_copy(
        update={"retries": 2, "retry_delay_seconds": 0.01})})
    ERRORS["shard-00000"] = [OSError(errno.EBUSY, "SlowDown"), TimeoutError("read timed out")]
    ERRORS["shard-00001"] = [FileNotFoundError("upstream output missing")]

    state = features_only(toy_run.root, cfg, return_state=True)
    assert state.is_failed() and "shard-00001" in state.message and "upstream output missing" in state.message
    assert CALLS.count("shard-00000") == 3  # two transient failures, then success
    assert CALLS.count("shard-00001") == 1  # not retried
    assert toy_run.shard_result("features", "shard-00000") is not None
    assert toy_run.shard_result("features", "shard-00001") is None

    state = features_only(toy_run.root, cfg, return_state=True)  # the error is gone: the next run completes
    assert state.is_completed()
    assert CALLS.count("shard-00000") == 3 and CALLS.count("shard-00001") == 2
