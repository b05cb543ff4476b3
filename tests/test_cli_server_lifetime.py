"""The temporary Prefect server of `u2seg run` never outlives the command, even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_sigkill_of_u2seg_run_leaves_no_server(tmp_path, tiny_pipeline_config):
    config = tmp_path / "tiny.json"
    config.write_text(tiny_pipeline_config.model_dump_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    cli = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--out", str(tmp_path / "run")],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline, server = time.monotonic() + 120, None
        while server is None and time.monotonic() < deadline and cli.poll() is None:
            server = next((p for p in children(cli.pid) if "uvicorn" in cmdline(p)), None)
            time.sleep(0.2)
        assert server is not None, "the temporary server did not start"
        while not (tmp_path / "run" / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the flow is running against the server
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 30
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(server), f"server {server} outlived its CLI: {cmdline(server)}"
    finally:
        if cli.poll() is None:
            cli.kill()
