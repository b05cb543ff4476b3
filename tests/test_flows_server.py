"""A real `prefect server start` (own PREFECT_HOME, free port, analytics off): `u2seg run` against it records the
flow run, its stage subflows, task runs and artifacts; `prefect deploy --all` registers prefect.yaml."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from u2seg_core.registry import STAGES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """(api_url, env) of a fresh server process, stopped (whole process group) afterwards."""
    tmp_path = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")
    } | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",  # the API is what the test reads; skips building the UI bundle
        "PREFECT_API_URL": api,
    }
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield api, env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def api_post(api: str, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{api}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_run_against_a_real_server(tmp_path, prefect_server, tiny_pipeline_config):
    api, env = prefect_server
    config = tmp_path / "tiny.json"
    config.write_text(tiny_pipeline_config.model_dump_json())
    run_dir = tmp_path / "demo"
    cli = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--out", str(run_dir)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]
    assert "complete" in cli.stdout

    flow_runs = api_post(api, "/flow_runs/filter", {})
    parent = [r for r in flow_runs if r["parent_task_run_id"] is None]
    assert [(r["name"], r["state_type"]) for r in parent] == [("demo-all", "COMPLETED")]
    stage_runs = {r["name"]: r["state_type"] for r in flow_runs if r["parent_task_run_id"] is not None}
    assert stage_runs == {f"{stage}-demo": "COMPLETED" for stage in
                          ("plan", "features", "maskcut", "cluster", "stego", "merge", "evaluate")}

    deadline = time.monotonic() + 30
    while True:  # task-run states arrive as events: wait until they are all recorded
        task_runs = {r["name"]: r["state_type"] for r in api_post(api, "/task_runs/filter", {})}
        if "merge-finalize" in task_runs and set(task_runs.values()) == {"COMPLETED"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    shards = [f"shard-{index:05d}" for index, _ in json.loads((run_dir / "plan" / "manifest.json").read_text())["summary"]["shards"]]
    for name in ("plan-plan_step", f"features-{shards[-1]}", f"maskcut-{shards[0]}", "cluster-fit_centroids",
                 "stego-train_head", "merge-finalize", "evaluate-evaluate_run"):
        assert task_runs.get(name) == "COMPLETED", (name, task_runs)

    # the run graph shows only real dependencies: a stage's global step -> its shards -> its finalize step
    runs = api_post(api, "/task_runs/filter", {})
    names = {r["id"]: r["name"] for r in runs}
    edges = {r["name"]: sorted({names.get(i["id"], "?") for inputs in r["task_inputs"].values() for i in inputs
                                if i.get("input_type") == "task_run"}) for r in runs}
    checked = 0
    for stage, spec in STAGES.items():
        step = f"{stage}-{spec.global_step_name}"
        for shard in shards if f"{stage}-{shards[0]}" in edges else []:
            assert edges[f"{stage}-{shard}"] == ([step] if spec.global_step and spec.global_first else []), stage
            checked += 1
        if step in edges:
            after = spec.global_step and not spec.global_first and f"{stage}-{shards[0]}" in edges
            assert edges[step] == (sorted(f"{stage}-{shard}" for shard in shards) if after else []), step
    assert edges["merge-finalize"] == sorted(f"merge-{shard}" for shard in shards)
    assert edges[f"stego-{shards[0]}"] == ["stego-train_head"] and checked >= 6 * len(shards)

    artifacts = {a["key"]: a for a in api_post(api, "/artifacts/filter", {}) if a["key"]}
    assert artifacts["demo-maskcut-progress"]["type"] == "progress"
    assert artifacts["demo-maskcut-progress"]["data"] == 100.0
    table = artifacts["demo-maskcut-shards"]
    assert table["type"] == "table"
    rows = json.loads(table["data"])
    assert [row["shard"] for row in rows] == shards
    assert all(row["state"] == "Completed" for row in rows) and sum(row["images"] for row in rows) == 6
    assert all(isinstance(row["masks"], int) and isinstance(row["seconds"], float) for row in rows)  # typed
    summary = artifacts["demo-summary"]
    assert summary["type"] == "markdown" and f"| maskcut | {len(shards)} | 6 |" in summary["data"]
    assert "PQ" in summary["data"]


def test_prefect_yaml_deploys_the_pipeline_and_every_stage(prefect_server):
    api, env = prefect_server
    env = env | {"U2SEG_REPO": str(REPO)}
    for command in (["prefect", "work-pool", "create", "u2seg-process", "--type", "process"],
                    ["prefect", "--no-prompt", "deploy", "--all"]):
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    deployments = {d["name"]: d for d in api_post(api, "/deployments/filter", {})}
    assert sorted(deployments) == sorted(
        ["pipeline", "plan", "features", "maskcut", "cluster", "stego", "merge", "evaluate"]
    )
    assert deployments["maskcut"]["parameters"] == {"stages": ["maskcut"]}
    assert deployments["pipeline"]["work_pool_name"] == "u2seg-process"
    assert deployments["pipeline"]["entrypoint"] == "flows/pipeline.py:pipeline_flow"
