"""Evaluate stage: prediction sets against ground truth, as a fan-out over shards then a small reduce.

    evaluate_shard (per shard)   evidence.shard_evidence -> RUN/evaluate/shards/<shard>.npz
    evaluate_run   (global)      reduce.* over those files -> RUN/evaluate/report.{json,md}, confusion.png,
                                 overlays/<shard>/<image_id>.png

`evaluate.predictions` names the prediction sets (default {"pseudo-labels": "merge"}); each gets one report
row per protocol. Ground truth: `evaluate.ground_truth` in `evaluate.gt_format`, else the run's synthetic
dataset, else none: then the report holds pseudo-label statistics (segments per image, cluster sizes, stuff
coverage) and overlays, and says that no ground truth was given.

`evaluate_predictions` is the same two steps outside a run (`u2seg evaluate --predictions DIR`), with the
shards spread over worker processes.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

import numpy as np

from .. import storage
from ..config import EvaluateConfig, PipelineConfig
from ..manifest import GlobalResult, ShardManifest, ShardResult, shard_name
from ..rundir import RunDir
from ..train.holdout import is_held_out
from .datasets import GroundTruth, load_ground_truth
from .evidence import LabelSpace, SetEvidence, read_evidence, shard_evidence, write_evidence
from .predictions import PredictionSet, open_prediction_set
from .reduce import fit, instance_result, mapping_summary, panoptic_result, semantic_result, sum_evidence
from .report import write_overlays, write_report

STAGE = "evaluate"


def evaluate_upstream(cfg: PipelineConfig) -> tuple[str, ...]:
    """The run stages the configured prediction sets read (folders outside the run are no upstream)."""
    from ..registry import STAGES

    return tuple(dict.fromkeys(w for w in cfg.evaluate.predictions.values() if w in STAGES))


def evidence_url(out_dir: str, shard: str) -> str:
    return storage.join(out_dir, "shards", f"{shard}.npz")


def run_ground_truth(run: RunDir | None, cfg: EvaluateConfig) -> GroundTruth | None:
    """The configured ground truth, else the run's synthetic dataset, else None (statistics only)."""
    if cfg.ground_truth is not None:
        return load_ground_truth(cfg.gt_format, cfg.ground_truth, cfg.split)
    if run is not None and storage.exists(run.url("synthetic", "annotations", "panoptic.json")):
        return load_ground_truth("synthetic", run.url("synthetic"), None)
    return None


def open_sets(predictions: dict[str, str], run: RunDir | None, cfg: PipelineConfig | None) -> list[PredictionSet]:
    return [open_prediction_set(name, where, run, cfg) for name, where in predictions.items()]


def compute_shard(
    gt: GroundTruth | None, sets: list[PredictionSet], shard: str, planned: list[str] | None, cfg: EvaluateConfig,
    out_dir: str, only_planned: bool = False,
) -> list[SetEvidence]:
    """Evidence of one shard, written to `evidence_url(out_dir, shard)` (`only_planned`: images of the sets
    outside `planned` are not evaluated)."""
    evidence, _ = shard_evidence(
        gt, sets, shard, planned, cfg.u2seg_score_min, cfg.u2seg_box_iou, cfg.u2seg_semantic_iou,
        only_planned=only_planned,
    )
    write_evidence(evidence_url(out_dir, shard), evidence)
    return evidence


def evaluated_images(shard: ShardManifest, cfg: PipelineConfig) -> ShardManifest:
    """The shard's images that are evaluated: all, or the held-out split the detector never trained on."""
    if cfg.evaluate.images != "held_out":
        return shard
    fraction = cfg.train.data.holdout_fraction
    return shard.model_copy(update={"images": [r for r in shard.images if is_held_out(r.file_name, fraction)]})


def evaluate_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """The evaluate stage's shard step."""
    start = time.perf_counter()
    gt = run_ground_truth(run, cfg.evaluate)
    sets = open_sets(cfg.evaluate.predictions, run, cfg)
    shard = evaluated_images(shard, cfg)
    evidence = compute_shard(
        gt, sets, shard.name, [r.file_name for r in shard.images], cfg.evaluate, run.url(STAGE),
        only_planned=cfg.evaluate.images == "held_out",
    )
    first = evidence[0].counts if evidence else {}
    return ShardResult(
        stage=STAGE, shard=shard.name, n_images=len(shard.images),
        outputs={"evidence": run.rel(evidence_url(run.url(STAGE), shard.name))},
        counts={key: float(first.get(key, 0)) for key in ("n_scored", "missing_prediction", "missing_ground_truth")},
        seconds=time.perf_counter() - start,
    )


def evaluate_run(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """The evaluate stage's global step (after the shards): reduce and report."""
    start = time.perf_counter()
    gt = run_ground_truth(run, cfg.evaluate)
    sets = open_sets(cfg.evaluate.predictions, run, cfg)
    image_urls: dict[str, str] = {}  # image files of the first shards, enough for the overlays
    for shard in run.iter_shards() if cfg.evaluate.overlays > 0 else ():
        image_urls.update({r.file_name: r.url for r in evaluated_images(shard, cfg).images})
        if len(image_urls) >= cfg.evaluate.overlays:
            break
    shard_names = [shard_name(index) for index, _ in run.plan_shards()]
    report = reduce_and_report(gt, sets, shard_names, cfg.evaluate, run.url(STAGE), image_urls)
    outputs = {name: run.rel(url) for name, url in report["outputs"].items() if isinstance(url, str)}
    return GlobalResult(stage=STAGE, outputs=outputs, summary=report["summary"], seconds=time.perf_counter() - start)


def _shard_task(args: tuple) -> None:
    gt_spec, sets, shard, cfg, out_dir = args
    gt = load_ground_truth(*gt_spec) if gt_spec else None
    compute_shard(gt, sets, shard, None, cfg, out_dir)


def evaluate_predictions(
    predictions: dict[str, str],
    cfg: EvaluateConfig,
    out_dir: str,
    run: RunDir | None = None,
    pipeline: PipelineConfig | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Evaluate N named prediction sets (stage names of `run`, or folders in the merge layout) against
    `cfg.ground_truth` in one report under `out_dir`; shards run in `workers` processes. Returns the report."""
    gt = run_ground_truth(run, cfg)
    sets = open_sets(predictions, run, pipeline)
    shards = sorted({name for pset in sets for name in pset.shard_names()})
    if not shards:
        raise FileNotFoundError(f"the prediction sets {list(predictions.values())} have no shards/*.json")
    gt_spec = (gt.format, gt.root, cfg.split) if gt else None
    tasks = [(gt_spec, sets, shard, cfg, out_dir) for shard in shards]
    if workers > 1 and len(shards) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(shards))) as pool:
            list(pool.map(_shard_task, tasks))
    else:
        for task in tasks:
            _shard_task(task)
    return reduce_and_report(gt, sets, shards, cfg, out_dir, None)


def reduce_and_report(
    gt: GroundTruth | None,
    sets: list[PredictionSet],
    shards: list[str],
    cfg: EvaluateConfig,
    out_dir: str,
    image_urls: dict[str, str] | None,
) -> dict[str, Any]:
    """Sum the shards' evidence, score every (set, protocol) and write the report; returns it."""
    start = time.perf_counter()

    def evidence() -> Iterator[list[SetEvidence]]:
        for shard in shards:
            url = evidence_url(out_dir, shard)
            if not storage.exists(url):
                raise FileNotFoundError(f"evaluate: {url} is missing; run the evaluate shard step for {shard}")
            yield read_evidence(url)

    totals = sum_evidence(evidence(), len(sets))
    scored = set().union(*(t.scored for t in totals))
    report: dict[str, Any] = {
        "ground_truth": None if gt is None else {
            "format": gt.format, "root": gt.root, "tables": gt.table_source, "n_images": len(gt.images),
            "n_not_evaluated": len(gt.images) - len(scored),
        },
        "prediction_sets": {pset.name: pset.root for pset in sets},
        "protocols": list(cfg.protocols) if gt else [],
        "transductive": gt is not None,
        "sets": {},
        "rows": [],
    }
    mappings: dict[str, dict[str, Any]] = {}
    for index, (pset, total) in enumerate(zip(sets, totals)):
        entry: dict[str, Any] = {"counts": total.counts, "problems": total.problems,
                                 "statistics": statistics(pset, total)}
        report["sets"][pset.name] = entry
        if gt is None:
            continue
        space = LabelSpace.of(gt, pset)
        fitted = [fit(protocol, total, space) for protocol in cfg.protocols]
        panoptic_protocols = [m for m in fitted if m.protocol != "stego27"] if gt.has_panoptic else []

        def tables(i: int = index) -> Iterator[Any]:
            for shard_sets in evidence():  # one SetEvidence per set of each shard
                yield from shard_sets[i].tables

        pq = dict(zip([m.protocol for m in panoptic_protocols], panoptic_result(panoptic_protocols, tables, gt)))
        mappings[pset.name] = {m.protocol: m for m in fitted}
        for mapping in fitted:
            row: dict[str, Any] = {"set": pset.name, "protocol": mapping.protocol,
                                   "mapping": mapping_summary(mapping, pset, gt),
                                   "semantic": semantic_result(mapping.protocol, total, space, mapping, gt)}
            if mapping.protocol in pq:
                row["panoptic"] = pq[mapping.protocol]
                row["instances"], row["n_detections"] = instance_result(
                    gt, pset, mapping, lambda p=pset: (d for d in (p.read_shard(s) for s in shards) if d), total.scored
                )
            row["summary"] = row_summary(row)
            report["rows"].append(row)
    report["summary"] = summary(report, sets)
    if report["rows"]:  # the first row's mapping, where `u2seg predict --mapping report.json` finds it
        report["mapping"] = {k: report["rows"][0]["mapping"][k] for k in ("things", "stuff")}
    report["overlays"], report["overlay_failures"] = write_overlays(
        out_dir, cfg.overlays, gt, sets, shards, mappings, cfg.protocols[0], image_urls
    )
    settings = {"score": cfg.u2seg_score_min, "box": cfg.u2seg_box_iou, "sem": cfg.u2seg_semantic_iou}
    report["outputs"] = write_report(out_dir, report, settings)
    report["outputs"]["overlays"] = [storage.join(out_dir, rel) for rel in report["overlays"]]
    report["seconds"] = time.perf_counter() - start
    storage.write_json(report["outputs"]["report_json"], report)
    return report


def statistics(pset: PredictionSet, total: Any) -> dict[str, Any]:
    """Pseudo-label statistics of a set: segments per image, cluster sizes, stuff coverage."""
    n_images = max(total.counts["n_images"], 1)
    things = [i for i, c in enumerate(pset.categories) if c.get("isthing")]
    stuff = [i for i, c in enumerate(pset.categories) if not c.get("isthing")]
    thing_segments = total.segments[things]
    total_pixels = max(int(total.pixels.sum()), 1)
    return {
        "n_images": total.counts["n_images"],
        "thing_segments_per_image": total.counts["n_thing_segments"] / n_images,
        "stuff_segments_per_image": total.counts["n_stuff_segments"] / n_images,
        "images_without_things": total.counts["images_without_things"],
        "n_clusters": len(things),
        "n_empty_clusters": int((thing_segments == 0).sum()),
        "cluster_sizes": {  # segments per cluster
            "max": int(thing_segments.max(initial=0)), "median": float(np.median(thing_segments)) if things else 0.0,
            "largest": {str(pset.categories[things[i]]["id"]): int(thing_segments[i])
                        for i in np.argsort(-thing_segments, kind="stable")[:10] if thing_segments[i] > 0},
        },
        "stuff_coverage": {  # share of labelled pixels per stuff class
            str(pset.categories[i]["name"]): float(total.pixels[i] / total_pixels) for i in stuff
        },
        "thing_coverage": float(total.pixels[things].sum() / total_pixels),
    }


SUMMARY_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "AP_box", "AP50_box",
                "AP_mask", "AP50_mask", "mIoU", "pixel_accuracy")


def row_summary(row: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of one (set, protocol) row (x100; None where not computed)."""
    out: dict[str, Any] = {key: None for key in SUMMARY_KEYS}
    pan = row.get("panoptic")
    if pan:
        for group, suffix in (("all", ""), ("things", "_th"), ("stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                out[f"{metric.upper()}{suffix}"] = pan[group][metric]
    for task, suffix in (("bbox", "box"), ("segm", "mask")):
        scores = (row.get("instances") or {}).get(task, {})
        out[f"AP_{suffix}"], out[f"AP50_{suffix}"] = scores.get("AP"), scores.get("AP50")
    out["mIoU"] = row["semantic"]["miou"]
    out["pixel_accuracy"] = row["semantic"]["pixel_accuracy"]
    return out


def summary(report: dict[str, Any], sets: list[PredictionSet]) -> dict[str, Any]:
    """The stage manifest's summary: the first row's headline numbers at the top level, every row under
    `rows` ("<set>/<protocol>" -> numbers), or the first set's statistics without ground truth."""
    first = sets[0].name
    counts = report["sets"][first]["counts"]
    out: dict[str, Any] = {
        "ground_truth": report["ground_truth"]["format"] if report["ground_truth"] else None,
        "n_images": counts["n_scored"] if report["ground_truth"] else counts["n_images"],
        "missing_prediction": counts["missing_prediction"],
        "missing_ground_truth": counts["missing_ground_truth"],
    }
    if not report["rows"]:
        stats = report["sets"][first]["statistics"]
        out.update({k: stats[k] for k in ("thing_segments_per_image", "stuff_segments_per_image", "n_empty_clusters")})
        return out
    out.update({k: v for k, v in report["rows"][0]["summary"].items() if v is not None})
    out["protocol"] = report["rows"][0]["protocol"]
    out["rows"] = {f"{r['set']}/{r['protocol']}": {k: v for k, v in r["summary"].items() if v is not None}
                   for r in report["rows"]}
    return out
