"""Evaluation report files: report.json, report.md (tables), confusion.png and overlay PNGs."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .. import storage

AP_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables: PQ/SQ/RQ, AP, semantic scores, per-class PQ."""
    pan = report["panoptic"]
    lines = [
        "# u2seg evaluation",
        "",
        f"Ground truth: `{report['ground_truth']}`; predictions: `{report['predictions']}`; "
        f"{report['n_images']} images ({report['n_missing_predictions']} without a prediction, "
        f"{len(report['failures'])} unreadable); cluster-to-class matching: **{report['matching']}** "
        f"({report['mapping']['n_mapped_things']}/{report['mapping']['n_pred_things']} thing clusters and "
        f"{report['mapping']['n_mapped_stuff']}/{report['mapping']['n_pred_stuff']} stuff classes mapped).",
        "",
        "## Panoptic",
        "",
        "| | PQ | SQ | RQ | categories |",
        "|---|---:|---:|---:|---:|",
    ]
    for group in ("all", "things", "stuff"):
        row = pan[group]
        lines.append(f"| {group} | {_fmt(row['pq'])} | {_fmt(row['sq'])} | {_fmt(row['rq'])} | {row['n']} |")
    lines += ["", "## Instances (COCO AP)", ""]
    if report["instances"]:
        lines += ["| task | " + " | ".join(AP_COLUMNS) + " |", "|---|" + "---:|" * len(AP_COLUMNS)]
        for task, scores in report["instances"].items():
            lines.append(f"| {task} | " + " | ".join(_fmt(scores[c]) for c in AP_COLUMNS) + " |")
    else:
        lines.append("No instance predictions or no ground-truth instances: AP not computed.")
    sem = report["semantic"]
    lines += [
        "",
        "## Semantic (things as one class + stuff)",
        "",
        f"mIoU **{_fmt(sem['miou'])}**, pixel accuracy **{_fmt(sem['pixel_accuracy'])}**",
        "",
        "| class | IoU |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {_fmt(iou)} |" for name, iou in zip(sem["class_names"], sem["per_class_iou"])]
    lines += [
        "",
        "## Per-category PQ",
        "",
        "| category | thing | PQ | SQ | RQ | TP | FP | FN |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in pan["per_class"].values():
        lines.append(
            f"| {row['name']} | {'yes' if row['isthing'] else 'no'} | {_fmt(row['pq'])} | {_fmt(row['sq'])} | "
            f"{_fmt(row['rq'])} | {row['tp']} | {row['fp']} | {row['fn']} |"
        )
    if report["failures"]:
        lines += ["", "## Images that could not be evaluated (scored as empty predictions)", ""]
        lines += [f"- image {f['image_id']}: {f['reason']}" for f in report["failures"]]
    if report.get("overlay_failures"):
        lines += ["", "## Overlays not drawn", ""]
        lines += [f"- image {f['image_id']}: {f['reason']}" for f in report["overlay_failures"]]
    return "\n".join(lines) + "\n"


def confusion_png(
    semantic_confusion: np.ndarray,
    class_names: list[str],
    thing_evidence: np.ndarray,
    thing_mapping: np.ndarray,
    thing_class_names: list[str],
) -> bytes:
    """Two heat maps: (left) ground-truth class vs mapped semantic prediction, rows normalised, last
    column = unmapped/VOID predictions; (right) thing-cluster vs ground-truth-class evidence used by
    the matching, clusters ordered by the class they were mapped to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 6), dpi=100)
    rows = semantic_confusion / np.maximum(semantic_confusion.sum(axis=1, keepdims=True), 1)
    image = left.imshow(rows, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    left.set_title("semantic: ground truth vs mapped prediction")
    left.set_ylabel("ground truth")
    left.set_xlabel("prediction (last column: unmapped / VOID)")
    if len(class_names) <= 40:
        left.set_yticks(range(len(class_names)), class_names, fontsize=7)
        left.set_xticks(range(len(class_names) + 1), [*class_names, "unmapped"], fontsize=7, rotation=90)
    figure.colorbar(image, ax=left, fraction=0.046)

    unmapped_last = np.where(thing_mapping < 0, np.iinfo(np.int64).max, thing_mapping)
    order = np.lexsort((np.arange(len(thing_mapping)), unmapped_last))
    evidence = thing_evidence[order] if thing_evidence.size else np.zeros((1, max(1, len(thing_class_names))))
    image = right.imshow(evidence.T, cmap="magma", aspect="auto", interpolation="nearest")
    right.set_title("things: cluster vs class evidence")
    right.set_xlabel("predicted cluster (sorted by mapped class)")
    right.set_ylabel("ground-truth thing class")
    if len(thing_class_names) <= 40:
        right.set_yticks(range(len(thing_class_names)), thing_class_names, fontsize=7)
    figure.colorbar(image, ax=right, fraction=0.046)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def write_report(
    out_dir: str,
    report: dict[str, Any],
    semantic_confusion: np.ndarray,
    thing_evidence: np.ndarray,
    thing_mapping: np.ndarray,
    thing_class_names: list[str],
) -> dict[str, str]:
    """Write report.json, report.md and confusion.png under `out_dir`; returns name -> URL."""
    urls = {
        "report_json": storage.join(out_dir, "report.json"),
        "report_md": storage.join(out_dir, "report.md"),
        "confusion_png": storage.join(out_dir, "confusion.png"),
    }
    storage.write_json(urls["report_json"], report)
    storage.atomic_write_bytes(urls["report_md"], markdown(report).encode())
    storage.atomic_write_bytes(
        urls["confusion_png"],
        confusion_png(
            semantic_confusion, report["semantic"]["class_names"], thing_evidence, thing_mapping, thing_class_names
        ),
    )
    return urls


def overlay_pair(
    rgb: np.ndarray,
    gt_ids: np.ndarray,
    gt_segments: list[dict[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: list[dict[str, Any]],
    category_names: dict[int, str],
) -> np.ndarray:
    """(H, 2W + 8, 3) uint8: ground truth (left) and mapped prediction (right) over the image."""
    from ..viz import overlay_panoptic

    left = overlay_panoptic(rgb, gt_ids, gt_segments, category_names)
    right = overlay_panoptic(rgb, pred_ids, pred_segments, category_names)
    gap = np.full((rgb.shape[0], 8, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)
