"""Where DINO checkpoints come from, and how their state dicts are read.

Search order of `resolve_weights` (and of `find_weights`, used for every other weights file): the explicit
path, `$U2SEG_WEIGHTS/<file>` (for detector checkpoints also `$U2SEG_WEIGHTS` naming the file), the torch hub cache
(`torch.hub.get_dir()/checkpoints/<file>`), then a download into the hub cache from
`https://dl.fbaipublicfiles.com/dino/<folder>/<file>` -- only when the server answers a short probe
and `U2SEG_OFFLINE` is not set (the test suite sets it).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

DINO_URL = "https://dl.fbaipublicfiles.com/dino"
DINO_FILES: dict[str, str] = {
    "vit_small_patch16": "dino_deitsmall16_pretrain.pth",
    "vit_small_patch8": "dino_deitsmall8_pretrain.pth",
    "vit_base_patch16": "dino_vitbase16_pretrain.pth",
    "vit_base_patch8": "dino_vitbase8_pretrain.pth",
}
PROBE_TIMEOUT_S = 5.0


class WeightsNotFoundError(FileNotFoundError):
    """No checkpoint for the requested architecture on disk and no way to download it."""


def weights_file(arch: str) -> str:
    """Official DINO checkpoint file name of a ViT architecture."""
    if arch not in DINO_FILES:
        raise ValueError(f"no DINO checkpoint for arch '{arch}'; known: {sorted(DINO_FILES)}")
    return DINO_FILES[arch]


def weights_url(arch: str) -> str:
    file = weights_file(arch)
    return f"{DINO_URL}/{file.removesuffix('.pth')}/{file}"


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(arch: str, explicit: str | None = None) -> Path:
    """Local path of the DINO checkpoint for `arch` (downloading it only when online)."""
    return find_weights(
        weights_file(arch),
        explicit,
        setting="BackboneConfig.weights (features.backbone.weights / maskcut.backbone.weights)",
        what=f"DINO weights for {arch}",
        download_url=weights_url(arch),
    )


def find_weights(
    file: str, explicit: str | None, *, setting: str, what: str, download_url: str | None = None,
    where_to_get: str | None = None, env_may_be_file: bool = False,
) -> Path:
    """Local path of the weights file `file`: `explicit`, then `$U2SEG_WEIGHTS/<file>` (or `$U2SEG_WEIGHTS`
    itself when `env_may_be_file` and it is a file), then the torch hub cache, then (if `download_url` and
    online) a download into the hub cache.

    The error names every place looked in, where to get the file and the config `setting` to point at it.
    """
    source = where_to_get or download_url or "its publisher"
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{setting} = '{explicit}' does not exist; point it at {file} "
                f"(from {source}) or leave it unset to search $U2SEG_WEIGHTS and {hub_checkpoint_dir()}"
            )
        return path
    candidates = []
    if os.environ.get("U2SEG_WEIGHTS"):
        env = Path(os.environ["U2SEG_WEIGHTS"]).expanduser()
        candidates.append(env if env_may_be_file and env.is_file() else env / file)
    candidates.append(hub_checkpoint_dir() / file)
    for path in candidates:
        if path.is_file():
            return path
    target = hub_checkpoint_dir() / file
    if download_url is not None and _download(download_url, target):
        return target
    raise WeightsNotFoundError(
        f"{what} '{file}' not found (looked in: {', '.join(str(p) for p in candidates)})"
        + (" and could not be downloaded (offline, or $U2SEG_OFFLINE is set)" if download_url else "")
        + f". Download it from {source} and put it in the folder named by $U2SEG_WEIGHTS or in "
        f"{hub_checkpoint_dir()}, or set {setting} to its path."
    )


def _download(url: str, target: Path) -> bool:
    """Download `url` to `target` if the server is reachable; False when offline."""
    if os.environ.get("U2SEG_OFFLINE", "") not in ("", "0"):
        return False
    try:
        probe = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(probe, timeout=PROBE_TIMEOUT_S) as response:
            if response.status != 200:
                return False
    except (urllib.error.URLError, OSError):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(target), progress=False)
    return True


def load_dino_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Backbone state dict from a plain DINO backbone checkpoint or a full training checkpoint.

    A full checkpoint is a dict with "teacher"; its "module." / "backbone." prefixes are stripped
    and the projection "head.*" dropped.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    if "teacher" in state:
        state = state["teacher"]
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith("head."):
            cleaned[key] = value
    return cleaned
