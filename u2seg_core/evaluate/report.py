"""Evaluation report files: report.json, report.md (one row per prediction set and protocol),
confusion.png, and overlays/<shard>/<image_id>.png (ground truth | each prediction set, titled panels)."""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np

from .. import storage
from ..io.decode import load_rgb
from ..viz import overlay_panoptic, side_by_side
from .datasets import GroundTruth, identity
from .datasets.coco import read_segment_ids
from .predictions import PredictionSet

AP_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PROTOCOL_TEXT = {
    "u2seg": "U2Seg's released COCO evaluation: many-to-one majority votes (instances: score >= {score}, box IoU "
             "> {box}; stuff: per-image IoU > {sem}); PQ with panopticapi's rules; semantic scores leave "
             "unmapped predictions out, as U2Seg's SemSegEvaluator",
    "hungarian": "one-to-one Hungarian matching (things: segment matches at IoU > 0.5; stuff: pixel confusion); "
                 "unmapped and VOID pixels count as errors",
    "stego27": "STEGO's protocol: one Hungarian assignment on the dataset-level confusion of predicted vs "
               "ground-truth categories; unsupervised mIoU and pixel accuracy (semantic only)",
}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _problems(entry: dict[str, Any]) -> list[str]:
    lines = []
    for kind, text in (
        ("missing_prediction", "ground-truth images without a prediction (scored as empty predictions)"),
        ("missing_ground_truth", "predicted images without ground truth (not scored)"),
        ("unreadable_prediction", "unreadable predictions (scored as empty predictions)"),
        ("unreadable_ground_truth", "unreadable ground truth (not scored)"),
    ):
        n = entry["counts"].get(kind, 0)
        if n:
            listed = entry["problems"].get(kind, [])
            more = f", and {n - len(listed)} more" if n > len(listed) else ""
            lines.append(f"- {n} {text}: " + ", ".join(f"`{x}`" for x in listed) + more)
    return lines


def markdown(report: dict[str, Any], settings: dict[str, float]) -> str:
    """The report as markdown: one table row per (set, protocol), then details per row."""
    gt = report["ground_truth"]
    lines = ["# u2seg evaluation", ""]
    sets = ", ".join(f"**{name}** (`{root}`)" for name, root in report["prediction_sets"].items())
    lines += [f"Prediction sets: {sets}.", ""]
    if gt is None:
        lines += ["**No ground truth was given**: this report holds pseudo-label statistics and overlays only. "
                  "Set `evaluate.ground_truth` (and `evaluate.gt_format`) or pass `u2seg evaluate --gt` to score.", ""]
    else:
        lines += [
            f"Ground truth: `{gt['root']}` ({gt['format']}), {gt['n_images']} images, {gt['n_not_evaluated']} of "
            "them in no prediction set (not evaluated). " + (f"Category tables: {gt['tables']}." if gt["tables"] else ""),
            "",
            "The cluster-to-class mappings are fitted on the evaluated images themselves (transductive, as U2Seg "
            "and STEGO publish their numbers).",
            "",
        ]
        for protocol in report["protocols"]:
            lines.append(f"- `{protocol}`: " + PROTOCOL_TEXT[protocol].format(**settings) + ".")
        lines += ["", "| set | protocol | PQ | SQ | RQ | PQ_th | PQ_st | AP box | AP mask | mIoU | pixel acc. | "
                  "mapped things | mapped stuff | images |", "|---|---|" + "---:|" * 12]
        for row in report["rows"]:
            s, m = row["summary"], row["mapping"]
            counts = report["sets"][row["set"]]["counts"]
            lines.append(
                f"| {row['set']} | {row['protocol']} | " + " | ".join(
                    _fmt(s[k]) for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP_box", "AP_mask", "mIoU",
                                         "pixel_accuracy")
                ) + f" | {m['n_mapped_things']}/{m['n_pred_things']} | {m['n_mapped_stuff']}/{m['n_pred_stuff']} | "
                f"{counts['n_scored']} |"
            )
    lines += ["", "## Prediction sets", ""]
    for name, entry in report["sets"].items():
        st = entry["statistics"]
        lines += [
            f"### {name}", "",
            f"{st['n_images']} images; {st['thing_segments_per_image']:.2f} thing and "
            f"{st['stuff_segments_per_image']:.2f} stuff segments per image; {st['images_without_things']} images "
            f"without things; {st['n_clusters']} thing clusters, {st['n_empty_clusters']} never used, the largest "
            f"has {st['cluster_sizes']['max']} segments (median {st['cluster_sizes']['median']:.1f}); "
            f"things cover {100 * st['thing_coverage']:.1f}% of the labelled pixels.",
            "",
            "| stuff class | coverage % |", "|---|---:|",
            *(f"| {k} | {100 * v:.1f} |" for k, v in st["stuff_coverage"].items()),
            "",
            *_problems(entry),
        ]
    for row in report["rows"]:
        lines += _row_details(row)
    if report.get("overlays"):
        caption = ("Left: ground truth; then each prediction set with its class names through the first protocol's "
                   "mapping ('?' marks an unmapped cluster)." if gt else "Each prediction set over the image.")
        lines += ["", "## Overlays", "", caption, ""]
        lines += [f"- [{rel}]({rel})" for rel in report["overlays"]]
    if report.get("overlay_failures"):
        lines += ["", "Overlays not drawn:", *(f"- {text}" for text in report["overlay_failures"])]
    return "\n".join(lines) + "\n"


def _row_details(row: dict[str, Any]) -> list[str]:
    lines = ["", f"## {row['set']} — {row['protocol']}", ""]
    pan = row.get("panoptic")
    if pan:
        lines += ["| | PQ | SQ | RQ | categories |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {g} | {_fmt(pan[g]['pq'])} | {_fmt(pan[g]['sq'])} | {_fmt(pan[g]['rq'])} | {pan[g]['n']} |"
                  for g in ("all", "things", "stuff")]
    if row.get("instances"):
        lines += ["", "| task | " + " | ".join(AP_COLUMNS) + " |", "|---|" + "---:|" * len(AP_COLUMNS)]
        for task, scores in row["instances"].items():
            lines.append(f"| {task} | " + " | ".join(_fmt(scores[c]) for c in AP_COLUMNS) + " |")
    elif row["protocol"] != "stego27":
        lines += ["", "AP not computed (no instance predictions or no ground-truth instance masks)."]
    sem = row["semantic"]
    lines += ["", f"Semantic: mIoU **{_fmt(sem['miou'])}**, pixel accuracy **{_fmt(sem['pixel_accuracy'])}**"
              + (f", {sem['n_pixels_unmapped']} pixels of unmapped predictions left out" if "n_pixels_unmapped" in sem
                 else ""), "", "| class | IoU |", "|---|---:|"]
    lines += [f"| {n} | {_fmt(v)} |" for n, v in zip(sem["class_names"], sem["per_class_iou"])]
    if pan:
        lines += ["", "| category | thing | PQ | SQ | RQ | TP | FP | FN |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {'yes' if r['isthing'] else 'no'} | {_fmt(r['pq'])} | {_fmt(r['sq'])} | "
                  f"{_fmt(r['rq'])} | {r['tp']} | {r['fp']} | {r['fn']} |" for r in pan["per_class"].values()]
    return lines


def confusion_png(confusion: np.ndarray, class_names: list[str], title: str) -> bytes:
    """Heat map of ground-truth label vs mapped prediction, rows normalised; last column unmapped/VOID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 7), dpi=100)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = axis.imshow(rows, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axis.set_title(title)
    axis.set_ylabel("ground truth")
    axis.set_xlabel("mapped prediction (last column: unmapped / VOID)")
    if len(class_names) <= 40:
        axis.set_yticks(range(len(class_names)), class_names, fontsize=7)
        axis.set_xticks(range(len(class_names) + 1), [*class_names, "unmapped"], fontsize=7, rotation=90)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def write_report(out_dir: str, report: dict[str, Any], settings: dict[str, float]) -> dict[str, Any]:
    """Write report.md and confusion.png (first row) under `out_dir`; returns name -> URL (report.json is
    written by the caller once the outputs are known)."""
    urls: dict[str, Any] = {"report_json": storage.join(out_dir, "report.json"),
                            "report_md": storage.join(out_dir, "report.md")}
    if report["rows"]:
        row = report["rows"][0]
        urls["confusion_png"] = storage.join(out_dir, "confusion.png")
        storage.atomic_write_bytes(urls["confusion_png"], confusion_png(
            np.asarray(row["semantic"]["mapped_confusion"]), row["semantic"]["class_names"],
            f"{row['set']}, {row['protocol']}: ground truth vs mapped prediction"))
    storage.atomic_write_bytes(urls["report_md"], markdown(report, settings).encode())
    return urls


# ---- overlays ---------------------------------------------------------------------------------------


OVERLAY_MAX_SIDE = 1024  # larger images are drawn downscaled


def _downscale(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of an (H, W, ...) array to `shape` (labels stay labels)."""
    ys = (np.arange(shape[0]) * array.shape[0] // shape[0]).astype(np.int64)
    xs = (np.arange(shape[1]) * array.shape[1] // shape[1]).astype(np.int64)
    return array[ys][:, xs]


def _mapped_segments(segments: list[dict[str, Any]], pset: PredictionSet, gt: GroundTruth | None,
                     mapping: Any) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Segments with display names: the mapped ground-truth class, or the cluster name + '?' if unmapped."""
    names: dict[int, str] = {}
    index = {int(c["id"]): i for i, c in enumerate(pset.categories)}
    out = []
    for s in segments:
        i = index.get(int(s["category_id"]))
        if i is None:
            continue
        category = pset.categories[i]
        label = str(category.get("name", category["id"]))
        if gt is not None and mapping is not None:
            j = int(mapping.pred_to_gt[i])
            label = gt.categories[j]["name"] if j >= 0 else f"{label}?"
        names[int(s["category_id"])] = label
        out.append({**s, "isthing": bool(category.get("isthing"))})
    return out, names


def write_overlays(
    out_dir: str, n: int, gt: GroundTruth | None, sets: list[PredictionSet], shards: list[str],
    mappings: dict[str, dict[str, Any]], protocol: str, image_urls: dict[str, str] | None,
) -> tuple[list[str], list[str]]:
    """overlays/<shard>/<image_id>.png for the first `n` images that every set has: titled panels (ground
    truth | each set, named through `protocol`'s mapping), or the pseudo-labels alone without ground truth.
    Returns the written paths relative to `out_dir` and the reasons of overlays not drawn."""
    written: list[str] = []
    failed: list[str] = []
    for shard in shards:
        if len(written) + len(failed) >= n:
            break
        docs = [pset.read_shard(shard) or {"images": [], "panoptic": []} for pset in sets]
        by_set = [{int(a["image_id"]): a for a in doc["panoptic"]} for doc in docs]
        keyed = [{identity(im["file_name"]): im for im in doc["images"]} for doc in docs]
        for entry in docs[0]["images"]:
            if len(written) + len(failed) >= n:
                break
            key = identity(entry["file_name"])
            gt_image = gt.lookup(entry["file_name"]) if gt else None
            if (gt is not None and gt_image is None) or any(key not in images for images in keyed):
                continue  # overlays compare every set on the same image
            url = (image_urls or {}).get(entry["file_name"]) or (gt_image.image_url if gt_image else None)
            try:
                if url is None:
                    raise FileNotFoundError("the image file is unknown outside a run without ground truth")
                rgb = load_rgb(url)
                scale = min(1.0, OVERLAY_MAX_SIDE / max(rgb.shape[:2]))
                shape = (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale)))
                fit = (lambda a: _downscale(a, shape)) if scale < 1 else (lambda a: a)
                rgb = fit(rgb)
                panels = []
                if gt_image is not None:
                    sample = gt.read(gt_image)
                    if sample.segment_ids is not None:
                        segs = [{**s, "isthing": s["category_id"] in set(gt.thing_ids)} for s in sample.segments]
                        panels.append(("ground truth",
                                       overlay_panoptic(rgb, fit(sample.segment_ids), segs, gt.category_names)))
                for pset, anns, images in zip(sets, by_set, keyed):
                    image = images.get(key)
                    ann = anns.get(int(image["id"])) if image else None
                    if ann is None:
                        panels.append((f"{pset.name}: no prediction", rgb))
                        continue
                    segments, names = _mapped_segments(ann["segments_info"], pset, gt,
                                                       mappings.get(pset.name, {}).get(protocol))
                    title = f"{pset.name} ({protocol} mapping)" if gt else f"{pset.name} (no ground truth)"
                    ids = fit(read_segment_ids(pset.png_url(ann)))
                    panels.append((title, overlay_panoptic(rgb, ids, segments, names)))
                picture = side_by_side(panels)
            except (OSError, ValueError) as exc:  # a missing or unreadable image only costs its overlay
                failed.append(f"{entry['file_name']}: {exc}")
                continue
            rel = posixpath.join("overlays", shard, f"{entry['id']}.png")
            storage.write_png(storage.join(out_dir, rel), picture)
            written.append(rel)
    return written, failed
