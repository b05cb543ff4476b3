"""Cache keys: when a shard or a global step must be recomputed.

A shard key covers exactly what the shard's outputs depend on:

    stage name + stage version + stage code version + stage config hash
    + without an upstream shard stage (plan): the shard manifest hash (its images: names, sizes, mtimes/ETags)
    + per upstream stage: the result hash of the SAME shard there (for an upstream without shard steps, e.g. a
      trained model: its global result hash)
    (+ the stage's own global result, e.g. the cluster centroids, when it runs first)
    + the stage's `key_material` (registry.py), if any: a dataset-level figure the outputs depend on that the
      per-shard upstream results do not carry (features: the stored-grid fraction, a function of the planned N)

A result hash includes the result's own cache key (plan: the content digest of its images instead), so the keys
chain: a changed image changes its shard's keys in every stage, and only that shard's. A global step keys on the
whole upstream stage manifests (K-means reads every shard), and one that runs after the shards also on
their result hashes. Result hashes exclude timings and training metrics (`manifest.py`).
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from . import storage
from .config import PipelineConfig
from .manifest import StageManifest
from .registry import StageSpec


PACKAGE = __name__.rpartition(".")[0]
PACKAGE_ROOT = Path(__file__).resolve().parent
# pipeline machinery: how a stage is run and recorded, never what it computes (config values enter the keys
# through the section's config hash); the import scan stops at these
INFRASTRUCTURE = frozenset(
    f"{PACKAGE}.{name}"
    for name in ("cache_keys", "config", "local_runner", "manifest", "registry", "rundir", "stage_run", "status",
                 "steps", "storage")
)


def _module_file(module: str) -> Path | None:
    """The source file of a module of this package (a package: its __init__.py); None outside it."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    path = PACKAGE_ROOT.joinpath(*module.split(".")[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(module: str, path: Path) -> set[str]:
    """Modules of this package that `module` imports anywhere in its source (also inside functions and
    `if TYPE_CHECKING:` blocks), relative or absolute; `from pkg import name` counts `pkg.name` when that is
    a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if _module_file(name) is not None}


@lru_cache(maxsize=None)
def stage_source_files(modules: tuple[str, ...]) -> tuple[Path, ...]:
    """The source files of `modules` and of every module of this package they import, transitively, up to
    the pipeline machinery (`INFRASTRUCTURE`); a package module's file is its __init__.py."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or module in INFRASTRUCTURE or path is None:
            continue
        seen[module] = path
        todo.extend(_imported_modules(module, path))
    return tuple(sorted(set(seen.values())))


@lru_cache(maxsize=None)
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def code_version(spec: StageSpec) -> str:
    """Stage version + hash of the stage's source: its step modules with every module of this package they
    import (`stage_source_files`). Editing any of them invalidates the stage's cache."""
    files = [[p.relative_to(PACKAGE_ROOT).as_posix(), _file_digest(p)] for p in stage_source_files(spec.step_modules)]
    return f"{spec.version}-{storage.hash_json(files)}"


def upstream_hashes(manifests: dict[str, StageManifest]) -> dict[str, str]:
    """stage -> StageManifest hash of each upstream stage."""
    return {name: m.hash for name, m in manifests.items()}


def _key(spec: StageSpec, cfg: PipelineConfig, part: str, payload: list[Any], extra: Any) -> str:
    digest = storage.hash_json([spec.name, code_version(spec), spec.section(cfg).config_hash(), *payload, extra])
    return f"{spec.name}-{part}-{digest}"


def shard_cache_key(
    spec: StageSpec, cfg: PipelineConfig, shard: str, shard_hash: str, upstream: dict[str, str | None],
    global_hash: str | None = None, extra: Any = None,
) -> str:
    """Key of one shard step (see the module docstring); `upstream`: stage -> what this shard sees of it;
    `extra`: the stage's `key_material` (`StageSpec.extra_key_material`)."""
    return _key(spec, cfg, shard, [shard_hash, upstream, global_hash], extra)


def global_cache_key(
    spec: StageSpec, cfg: PipelineConfig, upstream: dict[str, str], shard_hashes: Iterable[str] = (),
    extra: Any = None,
) -> str:
    """Key of a global step: upstream manifest hashes (+ this stage's shard results when it runs after them)."""
    return _key(spec, cfg, "global", [upstream, list(shard_hashes)], extra)
