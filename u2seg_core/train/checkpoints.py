"""Resumable training state: `RUN/train/checkpoints/iter-NNNNNNN.pt`, written atomically.

Each holds everything an uninterrupted run would carry on with: model, optimiser (momentum buffers), LR
scheduler, AMP grad scaler, the sampler position (= the iteration: batches are a function of it, sampler.py),
the RNG states, the loss history, and the training identity (config + dataset), so a checkpoint of another
training is never resumed. Read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import re
from typing import Any

import torch

from .. import storage

STATE_FORMAT = "u2seg-train-state/1"
_NAME = re.compile(r"iter-(\d{7})\.pt$")


def checkpoint_url(out_dir: str, iteration: int) -> str:
    return storage.join(out_dir, "checkpoints", f"iter-{iteration:07d}.pt")


def latest_checkpoint(out_dir: str) -> tuple[int, str] | None:
    """(iteration, url) of the newest checkpoint under `out_dir`/checkpoints, if any."""
    found = [
        (int(m.group(1)), checkpoint_url(out_dir, int(m.group(1))))
        for name in storage.listdir(storage.join(out_dir, "checkpoints")) if (m := _NAME.search(name))
    ]
    return max(found) if found else None


def rng_states(device: torch.device) -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def save_state(url: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buffer)
    storage.atomic_write_bytes(url, buffer.getvalue())


def load_state(url: str) -> dict[str, Any]:
    state = torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{url} is not a u2seg training checkpoint ({STATE_FORMAT})")
    return state
