"""Cluster -> class names for prediction overlays, read from the mapping `u2seg evaluate` fits.

Accepted JSON: `u2seg evaluate`'s `report.json` (its top-level `mapping`: cluster id -> class name, from the
first report row), or a file holding just that object:

    {"things": {"273": <class>, ...}, "stuff": {"305": <class>, ...}}      (keys: predicted cluster ids)

where <class> is a name ("person"), an object with a "name" ({"id": 1, "name": "person"}), or a ground-truth
category id (1), which is named through a "categories" list ([{"id": 1, "name": "person"}, ...]) next to
"things"/"stuff" or at the top level, else shown as "class 1".
"""

from __future__ import annotations

from typing import Any

from .. import storage


class MappingFileError(ValueError):
    """A mapping file that cannot be read; the message names the file and the expected format."""


def load_class_names(url: str) -> dict[int, str]:
    """cluster id -> class name from a mapping JSON (module docstring)."""
    if not storage.exists(url):
        raise MappingFileError(f"mapping file {url} does not exist (write one with `u2seg evaluate`)")
    try:
        doc = storage.read_json(url)
    except ValueError as exc:
        raise MappingFileError(f"mapping file {url} is not JSON ({exc})") from exc
    return class_names(doc, url)


def class_names(doc: Any, source: str = "mapping") -> dict[int, str]:
    """cluster id -> class name from a parsed mapping document (module docstring)."""
    mapping = doc.get("mapping", doc) if isinstance(doc, dict) else None
    if not isinstance(mapping, dict) or not any(isinstance(mapping.get(k), dict) for k in ("things", "stuff")):
        raise MappingFileError(
            f"{source} has no 'things'/'stuff' objects; expected {{\"things\": {{\"273\": \"person\"}}, "
            "\"stuff\": {...}} or an evaluate report.json"
        )
    categories = mapping.get("categories") or doc.get("categories") or []
    gt_names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    names: dict[int, str] = {}
    for group in ("things", "stuff"):
        for cluster, target in (mapping.get(group) or {}).items():
            try:
                names[int(cluster)] = _name(target, gt_names)
            except (TypeError, ValueError, KeyError) as exc:
                raise MappingFileError(f"{source}: {group} entry {cluster!r}: {target!r} is not a class") from exc
    return names


def _name(target: Any, gt_names: dict[int, str]) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, dict):
        return str(target["name"]) if "name" in target else _name(int(target["id"]), gt_names)
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(type(target).__name__)
    return gt_names.get(target, f"class {target}")
