"""What the Prefect UI shows: per-stage shard tables and the per-run markdown summary."""

from __future__ import annotations

import re
from typing import Any

from u2seg_core.manifest import ShardResult, StageManifest
from u2seg_core.rundir import RunDir


def artifact_key(run: RunDir, *parts: str) -> str:
    """Artifact key (lowercase letters, digits, dashes) naming the run directory, e.g. "demo-maskcut-shards"."""
    name = run.root.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9]+", "-", "-".join([name, *parts]).lower()).strip("-")[:100]


def typed(value: Any) -> Any:
    """A table cell: whole numbers as int, other floats to 4 significant digits (counts arrive as floats)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else float(f"{value:.4g}")
    return value


MAX_FAILURES_IN_ROW = 5


def shard_row(result: ShardResult, state: str) -> dict[str, Any]:
    """One row of a stage's shard table: state, counts, seconds, failures (the first few, and how many more)."""
    failures = "; ".join(f"{f.image_id}: {f.reason}" for f in result.failures[:MAX_FAILURES_IN_ROW])
    if len(result.failures) > MAX_FAILURES_IN_ROW:
        failures += f"; ... and {len(result.failures) - MAX_FAILURES_IN_ROW} more"
    return {
        "shard": result.shard, "state": state, "images": result.n_images, "failed": result.n_failed,
        "seconds": round(result.seconds, 2), **{name: typed(value) for name, value in result.counts.items()},
        "failures": failures,
    }


def failed_row(shard: str, message: str) -> dict[str, Any]:
    return {"shard": shard, "state": "Failed", "images": 0, "failed": 0, "seconds": 0.0, "failures": message[:300]}


MAX_FAILURES_LISTED = 50


def _scalars(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) and not isinstance(v, list)}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_markdown(run: RunDir, manifests: dict[str, StageManifest], failed: str | None = None) -> str:
    """Key numbers of a run: images, masks, clusters, failures per stage, and the evaluation metrics."""
    lines = [f"# u2seg run `{run.root}`", ""]
    if failed:
        lines += [f"**Failed:** {failed}", ""]
    lines += ["| stage | shards | images | failed images | seconds | key numbers |", "|---|---|---|---|---|---|"]
    for name, m in manifests.items():
        seconds = sum(s.seconds for s in m.shards) + (m.global_result.seconds if m.global_result else 0.0)
        numbers = ", ".join(
            f"{k}={_fmt(v)}" for k, v in _scalars(m.summary).items() if k not in ("n_shards", "n_images", "n_failed")
        )
        lines.append(
            f"| {name} | {m.summary.get('n_shards', '')} | {m.summary.get('n_images', '')} | {len(m.failures)} "
            f"| {seconds:.1f} | {numbers} |"
        )
    if "evaluate" in manifests:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _scalars(manifests["evaluate"].summary).items()]
    failures = [f for m in manifests.values() for f in m.failures]
    if failures:
        lines += ["", f"## Per-image failures ({len(failures)})", ""]
        lines += [f"- {f.stage} image {f.image_id} `{f.file_name}`: {f.reason}" for f in failures[:MAX_FAILURES_LISTED]]
        if len(failures) > MAX_FAILURES_LISTED:
            lines.append(f"- ... and {len(failures) - MAX_FAILURES_LISTED} more (see each stage's manifest.json)")
    return "\n".join(lines) + "\n"
