"""Storage options are part of the run configuration: the S3 endpoint and credentials profile reach every Dask
worker process and a later `u2seg stage` command on the run directory, and no secret is written anywhere in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from u2seg_core import storage
from u2seg_core.config import PipelineConfig, SourceConfig, StorageConfig
from shared_paths import REAL_IMAGES_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
REAL = REAL_IMAGES_DIR
KEY_ID, SECRET = "AKIAU2SEGTESTKEY0001", "u2seg-secret-value-that-must-not-leak"
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_DEFAULT_PROFILE", "U2SEG_S3_ENDPOINT_URL")


def test_config_refuses_secrets_and_records_only_names():
    with pytest.raises(ValueError, match="credential"):
        StorageConfig(options={"client_kwargs": {"aws_secret_access_key": "x"}})
    with pytest.raises(ValueError, match="credential"):
        StorageConfig(options={"key": "x"})
    cfg = StorageConfig(endpoint_url="http://127.0.0.1:9", profile="p", region="eu-west-1")
    assert cfg.fsspec_options() == {
        "s3": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}, "profile": "p"}
    }
    assert StorageConfig().fsspec_options() == {}


@pytest.fixture
def private_s3(tmp_path, monkeypatch):
    """A moto server on a non-default port, reachable only with the endpoint; credentials only in a profile."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[u2seg-test]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    (tmp_path / "aws-config").write_text("")
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    s3 = boto3.session.Session(profile_name="u2seg-test").client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="photos")
    for path in sorted(REAL.glob("demo[1-4].jpg")):
        with Image.open(path) as im:
            small = tmp_path / path.name
            im.convert("RGB").resize((128, 96)).save(small, quality=90)
        s3.upload_file(str(small), "photos", f"own/{path.name}")
    yield endpoint
    storage.configure({})
    server.stop()


def test_storage_options_reach_dask_workers_and_a_later_command(
    tmp_path, private_s3, tiny_pipeline_config, prefect_api
):
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import pipeline_flow

    orch = tiny_pipeline_config.orchestration.model_copy(update={"runner": "dask", "max_workers": 2})
    cfg = tiny_pipeline_config.model_copy(update={
        "source": SourceConfig(uri="s3://photos/own", shard_size=2),
        "storage": StorageConfig(endpoint_url=private_s3, profile="u2seg-test", region="us-east-1"),
        "orchestration": orch,
    })
    run_dir = tmp_path / "run"
    state = pipeline_flow(run_dir=str(run_dir), config=cfg, stages=["plan", "features"], return_state=True)
    assert state.is_completed(), state.message  # plan and features read S3 inside the worker processes
    shards = sorted(p.name for p in (run_dir / "features" / "_shards").iterdir())
    assert len(shards) == 2 and sum(
        len(s["images"]) for s in map(storage.read_json, sorted(map(str, (run_dir / "plan" / "shards").iterdir())))
    ) == 4

    storage.configure({})  # a later command is a new process that knows only the run directory
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")} | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    later = subprocess.run(
        [sys.executable, "-m", "flows.cli", "stage", "maskcut", "--run", str(run_dir), "--runner", "threads"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert later.returncode == 0, later.stdout[-3000:] + later.stderr[-3000:]
    assert (run_dir / "maskcut" / "manifest.json").exists()

    recorded = storage.read_json(str(run_dir / "run.json"))["config"]["storage"]
    assert recorded["endpoint_url"] == private_s3 and recorded["profile"] == "u2seg-test"
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and (SECRET.encode() in p.read_bytes()
                                                                 or KEY_ID.encode() in p.read_bytes())]
    assert leaks == []
    assert PipelineConfig.model_validate(storage.read_json(str(run_dir / "run.json"))["config"]).storage == cfg.storage
