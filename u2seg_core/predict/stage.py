"""Predict stage: a U2Seg checkpoint over every planned image -> panoptic / instance / semantic predictions.

Per shard (`predict_shard`), for every image (files under CONTRACTS C1, see `writers.py`):
    predict/panoptic/<shard>/<image_id>.png    COCO panoptic PNG (id2rgb)
    predict/semantic/<shard>/<image_id>.png    uint8 semantic head argmax: 0 things, 1..S stuff
    predict/overlays/<shard>/<image_id>.png    masks, boxes and "id 273" labels (predict.overlays)
    predict/raw/<shard>/<image_id>.npz         raw outputs + <image_id>.segments.json (predict.raw)
and `predict/shards/<shard>.json` = {images, panoptic, instances (with "score"), model: {num_things, num_stuff}},
the layout evaluate reads (CONTRACTS C2). Category ids are cluster ids: things 1..K, stuff K+1..K+S, VOID 0
(`u2seg_core.model.prediction`). Unreadable images become FailureRecords. `finalize` streams the shard JSONs into
`predict/panoptic.json` and `predict/instances.json`.

Weights: `predict.weights` (a path or name, searched like the DINO weights), else the train stage's
`checkpoint` output; the stage then depends on the train stage (`upstream_stages`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from .. import storage
from ..coco import image_entry, write_dataset_json_streaming
from ..config import PipelineConfig, PredictConfig
from ..io.loader import ImageBatch, iter_batches
from ..manifest import FailureRecord, GlobalResult, ImageRecord, ShardManifest, ShardResult, shard_name
from ..merge.stage import categories
from ..model.prediction import PanopticPrediction
from ..model.predictor import Predictor, checkpoint_version, resolve_checkpoint
from ..rundir import RunDir
from ..train.holdout import is_held_out
from .mapping import load_class_names
from .writers import ImageOutputs, write_image

STAGE = "predict"
TRAIN_CHECKPOINT_OUTPUT = "checkpoint"  # the train stage's manifest output naming its final checkpoint

_PREDICTORS: dict[tuple[str, str], Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def upstream_stages(cfg: PipelineConfig) -> tuple[str, ...]:
    """plan, plus train when the weights come from the train stage (so retraining invalidates predictions)."""
    return ("plan",) if cfg.predict.weights else ("plan", "train")


def shard_json_url(run: RunDir, shard: str) -> str:
    return run.url(STAGE, "shards", f"{shard}.json")


def weights_source(run: RunDir, cfg: PipelineConfig) -> str:
    """`predict.weights`, else the URL of the train stage's final checkpoint."""
    if cfg.predict.weights:
        return cfg.predict.weights
    if not run.has_stage("train"):
        raise FileNotFoundError(
            f"predict: predict.weights is not set and {run.root} has no completed train stage; "
            "pass --weights or run `u2seg stage train` first"
        )
    outputs = run.stage_manifest("train").outputs
    if TRAIN_CHECKPOINT_OUTPUT not in outputs:
        raise KeyError(f"the train stage's manifest has no '{TRAIN_CHECKPOINT_OUTPUT}' output (has {sorted(outputs)})")
    return run.url(outputs[TRAIN_CHECKPOINT_OUTPUT])


def predictor_for(weights: str | None, settings: PredictConfig) -> Predictor:
    """The Predictor of (weights file and its version, settings), kept per process and shared by the shards it
    runs (a checkpoint rewritten in place, e.g. by retraining, is loaded again)."""
    source = weights if weights and storage.is_remote(weights) else str(resolve_checkpoint(weights))
    key = (source, checkpoint_version(source), settings.config_hash())
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS.clear()  # one model held per process: a new checkpoint or setting replaces it
            _PREDICTORS[key] = Predictor.from_checkpoint(
                source, device=settings.device, amp=settings.amp, score_thresh=settings.score_thresh,
                min_size_test=settings.min_size_test, max_size_test=settings.max_size_test,
                roi_heads={"detections_per_image": settings.detections_per_image},
            )
        return _PREDICTORS[key]


def predict_shard(run: RunDir, shard: ShardManifest, cfg: PipelineConfig) -> ShardResult:
    """Predict every image of one shard (outputs in the module docstring)."""
    start = time.perf_counter()
    settings = cfg.predict
    if settings.images == "held_out":
        fraction = cfg.train.data.holdout_fraction
        shard = shard.model_copy(update={"images": [r for r in shard.images if is_held_out(r.file_name, fraction)]})
    predictor = predictor_for(weights_source(run, cfg), settings)
    outputs = ImageOutputs(
        overlay=settings.overlays, raw=settings.raw,
        class_names=load_class_names(settings.mapping) if settings.mapping else None,
    )
    images: list[dict[str, Any]] = []
    panoptic: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    failures: list[FailureRecord] = []
    counts = {"instances": 0.0, "thing_segments": 0.0, "stuff_segments": 0.0}

    def collect(entries: ImageEntries) -> None:
        image, pan, anns = entries
        images.append(image)
        panoptic.append(pan)
        instances.extend(anns)
        n_things = sum(1 for s in pan["segments_info"] if s["isthing"])
        counts["instances"] += len(anns)
        counts["thing_segments"] += n_things
        counts["stuff_segments"] += len(pan["segments_info"]) - n_things

    batches = iter_batches(
        shard, 0, settings.batch_size, settings.num_workers, stage=STAGE, keep_original=settings.overlays,
        max_pixels=cfg.source.max_pixels, transform=predictor.transform,
    )
    # The files are encoded on threads while the model predicts the next batch; at most `write_threads` images
    # wait (each holds its full-size masks), and results are collected in image order.
    pending: deque[Future[ImageEntries]] = deque()
    with ThreadPoolExecutor(settings.write_threads, thread_name_prefix="predict-write") as writers:
        for batch in batches:
            failures.extend(batch.failures)
            for i, (record, pred) in enumerate(zip(batch.records, predict_isolating(predictor, batch))):
                if isinstance(pred, str):
                    failures.append(FailureRecord(image_id=record.image_id, file_name=record.file_name,
                                                  stage=STAGE, reason=pred))
                    continue
                rgb = batch.originals[i] if batch.originals is not None else None
                pending.append(writers.submit(image_entries, run, shard.name, record, pred, rgb, outputs))
                while len(pending) > settings.write_threads:
                    collect(pending.popleft().result())
        while pending:
            collect(pending.popleft().result())

    url = shard_json_url(run, shard.name)
    model = {"num_things": predictor.num_things, "num_stuff": predictor.num_stuff}
    storage.write_json(url, {"images": images, "panoptic": panoptic, "instances": instances, "model": model})
    return ShardResult(
        stage=STAGE, shard=shard.name, n_images=len(shard.images), n_failed=len(failures), failures=failures,
        outputs={"shard": run.rel(url)}, counts=counts, seconds=time.perf_counter() - start,
    )


ImageEntries = tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]


def image_entries(
    run: RunDir, shard: str, record: ImageRecord, pred: PanopticPrediction, rgb: np.ndarray | None,
    outputs: ImageOutputs,
) -> ImageEntries:
    """Write one image's files; returns its COCO image entry, panoptic annotation and instance annotations."""
    panoptic = write_image(run, STAGE, shard, record.image_id, pred, rgb, outputs)
    image = image_entry(record.image_id, record.file_name, *pred.image_size)
    return image, panoptic, pred.instance_annotations(record.image_id)


def predict_isolating(predictor: Predictor, batch: ImageBatch) -> list[PanopticPrediction | str]:
    """The batch's predictions in one forward pass; if that raises (an image the model cannot take, memory),
    image by image, where an image that fails gets the reason instead of a prediction."""
    if len(batch.records) > 1:
        try:
            return predictor.predict_prepared(batch.pixels, batch.original_sizes)
        except Exception:  # noqa: BLE001 - isolate the failing image(s) below
            pass
    results: list[PanopticPrediction | str] = []
    for record, pixels, size in zip(batch.records, batch.pixels, batch.original_sizes):
        try:
            results.append(predictor.predict_prepared([pixels], [size])[0])
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the shard
            results.append(f"the model failed on {record.url} ({size[1]}x{size[0]}): {type(exc).__name__}: {exc}")
    return results


def finalize(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """Stream every shard's entries into predict/panoptic.json and predict/instances.json (one shard JSON in
    memory at a time)."""
    start = time.perf_counter()
    urls = [shard_json_url(run, shard_name(index)) for index, _ in run.plan_shards()]
    for url in urls:
        if not storage.exists(url):
            raise FileNotFoundError(f"predict finalize: {url} is missing; run predict for its shard first")
    model = next((storage.read_json(url)["model"] for url in urls), {"num_things": 0, "num_stuff": 0})
    k, n_stuff = model["num_things"], model["num_stuff"]
    all_categories = categories(k, n_stuff)
    description = f"u2seg predictions: {k} thing clusters, {n_stuff} stuff classes"
    panoptic_url = run.url(STAGE, "panoptic.json")
    instances_url = run.url(STAGE, "instances.json")
    counts = {"panoptic": 0, "instances": 0}

    def parts(key: str) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        for url in urls:
            part = storage.read_json(url)
            counts[key] += len(part[key])
            yield part["images"], part[key]

    n_images = write_dataset_json_streaming(panoptic_url, parts("panoptic"), all_categories, description)
    write_dataset_json_streaming(instances_url, parts("instances"), all_categories[:k], description)
    return GlobalResult(
        stage=STAGE,
        outputs={"panoptic_json": run.rel(panoptic_url), "instances_json": run.rel(instances_url)},
        summary={"n_predicted": n_images, "n_instances": counts["instances"], "num_things": k, "num_stuff": n_stuff},
        seconds=time.perf_counter() - start,
    )
