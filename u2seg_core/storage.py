"""Storage on any fsspec URL (local folder or s3://) with atomic writes.

Every output file goes through `atomic_write_bytes`: locally a temporary sibling is written and
renamed over the target; on object stores a single PUT is atomic per object. So a killed worker
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

_STORAGE_OPTIONS: dict[str, dict[str, Any]] = {}
_PROTOCOL_OPTIONS: dict[str, dict[str, Any]] = {}


def register_storage_options(prefix: str, options: dict[str, Any]) -> None:
    """Remember fsspec options (e.g. an S3 endpoint) for every URL under `prefix` (library use and tests)."""
    _STORAGE_OPTIONS[prefix.rstrip("/")] = dict(options)


def configure(protocol_options: dict[str, dict[str, Any]]) -> None:
    """Options per protocol from the run's `StorageConfig.fsspec_options()`; every step runner calls this in
    its own process, so Dask workers and later commands use the run's endpoint and profile."""
    _PROTOCOL_OPTIONS.clear()
    _PROTOCOL_OPTIONS.update({protocol: dict(opts) for protocol, opts in protocol_options.items()})


def storage_options_for(url: str) -> dict[str, Any]:
    """Options registered for the longest matching prefix of `url`, else the configured ones of its protocol,
    else from the environment (U2SEG_S3_ENDPOINT_URL)."""
    best = ""
    for prefix in _STORAGE_OPTIONS:
        if url.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    if best:
        return dict(_STORAGE_OPTIONS[best])
    protocol = url.split("://", 1)[0] if "://" in url else ""
    if protocol in _PROTOCOL_OPTIONS:
        return dict(_PROTOCOL_OPTIONS[protocol])
    endpoint = os.environ.get("U2SEG_S3_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL or local path."""
    return url_to_fs(url, **storage_options_for(url))


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with '/' (works for s3:// and local paths)."""
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    if not is_remote(url):
        fs.makedirs(path, exist_ok=True)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return f.read()


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write `data` to `url` so that readers see either nothing or the whole file."""
    fs, path = get_fs(url)
    if is_remote(url):
        fs.pipe_file(path, data)
        return
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(url: str, obj: Any) -> None:
    atomic_write_bytes(url, json.dumps(obj, indent=1, sort_keys=False, default=str).encode())


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def write_png(url: str, array, mode: str | None = None) -> None:
    """Atomically write a uint8 (H,W) / (H,W,3) array as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    atomic_write_bytes(url, buf.getvalue())


def read_png(url: str):
    """Read a PNG written by `write_png` back as a numpy array."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(read_bytes(url))) as im:
        return np.asarray(im).copy()


def remove(url: str, recursive: bool = False) -> None:
    fs, path = get_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def listdir(url: str) -> list[str]:
    """Sorted base names directly under `url` (empty if it does not exist)."""
    fs, path = get_fs(url)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_json(obj: Any) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable object."""
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
