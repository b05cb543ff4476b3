"""The held-out validation split: images the model never trains on, chosen by a hash of their `file_name`
(the image identity, stable across re-plans and independent of sharding)."""

from __future__ import annotations

import hashlib


def is_held_out(file_name: str, fraction: float) -> bool:
    """True for about `fraction` of all file names (the same ones in every run)."""
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(file_name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction

