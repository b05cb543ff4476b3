"""A temporary Prefect API server that never outlives the CLI process that started it.

Prefect starts its own temporary server when no `PREFECT_API_URL` is set, as a plain child process: a SIGKILL of
the CLI leaves it running (re-parented to PID 1). This starts the same server (Prefect's API app under uvicorn,
its default database) with the parent-death signal set (Linux `prctl(PR_SET_PDEATHSIG, SIGTERM)`), so the kernel
stops it when the CLI dies however it dies; a normal exit stops it explicitly.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import prefect
from prefect.settings import PREFECT_API_URL, temporary_settings

PR_SET_PDEATHSIG = 1
STARTUP_TIMEOUT_S = 120.0


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn of the server process: SIGTERM when the parent dies (no-op outside Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int) -> list[str]:
    """Prefect's API app under uvicorn on 127.0.0.1:`port` (what Prefect's own temporary server runs)."""
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
        "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
        "--lifespan", "on",
    ]


@contextmanager
def temporary_server() -> Iterator[str | None]:
    """Yield the API URL of a temporary server bound to this process, or None when PREFECT_API_URL is set."""
    if PREFECT_API_URL.value():
        yield None
        return
    port, parent = _free_port(), os.getpid()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    process = subprocess.Popen(server_command(port), env=env, preexec_fn=lambda: _die_with_parent(parent))
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(process, url)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            _flush_api_logs()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _flush_api_logs() -> None:
    """Send the log records still queued for the API before the server stops (else Prefect's exit-time flush
    prints "Error logging to API")."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


def _wait_healthy(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {process.returncode}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the temporary Prefect server did not answer on {url} within {STARTUP_TIMEOUT_S:.0f} s")
