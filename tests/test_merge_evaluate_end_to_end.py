"""Merge -> evaluate on synthetic ground truth fed back as perfect upstream outputs.

The ground-truth things play the MaskCut instances (their class, possibly relabelled, plays the
cluster id) and the ground-truth stuff plays the STEGO map; merging and evaluating must then give
PQ = AP = mIoU = 100, and the matching must undo any relabelling of the clusters.
"""

import numpy as np
import pytest

from u2seg_core import storage
from u2seg_core.config import ClusterConfig, EvaluateConfig, PipelineConfig, StegoConfig, SynthConfig
from u2seg_core.evaluate.stage import evaluate_predictions, evaluate_run
from u2seg_core.manifest import FailureRecord, ImageRecord, ShardResult
from u2seg_core.merge.stage import finalize, merge_shard
from u2seg_core.synth import STUFF_CLASSES, THING_CLASSES, generate_dataset

N_IMAGES, SIZE = 4, 64
T, S = len(THING_CLASSES), len(STUFF_CLASSES)


@pytest.fixture(scope="module")
def synthetic_gt(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    generate_dataset(out, SynthConfig(n=N_IMAGES, size=SIZE, seed=0))
    return out


def fake_upstream(planned_run, gt_dir, cluster_of):
    """A run whose maskcut / cluster / stego outputs are the ground truth; cluster_of(ann) -> id."""
    records = [
        ImageRecord(image_id=i, file_name=f"{i:06d}.png", url=storage.join(gt_dir, "images", f"{i:06d}.png"))
        for i in range(1, N_IMAGES + 1)
    ]
    run = planned_run([records[:2], records[2:]])
    instances = storage.read_json(storage.join(gt_dir, "annotations", "instances.json"))
    for shard in run.shards():
        ids = {im.image_id for im in shard.images}
        anns = [
            {**a, "category_id": 1, "score": 1.0} for a in instances["annotations"] if a["image_id"] in ids
        ]
        images = [im for im in instances["images"] if im["id"] in ids]
        maskcut = {"images": images, "annotations": anns}
        storage.write_json(run.url("maskcut", "instances", f"{shard.name}.json"), maskcut)
        cluster = {str(a["id"]): cluster_of(a) for a in instances["annotations"] if a["image_id"] in ids}
        storage.write_json(run.url("cluster", "assignments", f"{shard.name}.json"), cluster)
        for image_id in ids:
            semantic = storage.read_png(storage.join(gt_dir, "semantic", f"{image_id:06d}.png"))
            stego = np.where((semantic >= 1) & (semantic <= S), semantic - 1, 255).astype(np.uint8)
            storage.write_png(run.url("stego", "maps", f"{image_id}.png"), stego)
    return run


def config(k, matching="hungarian", overlays=0):
    return PipelineConfig.demo(
        cluster=ClusterConfig(k=k),
        stego=StegoConfig(n_classes=S),
        evaluate=EvaluateConfig(matching=matching, overlays=overlays),
    )


def merge_all(run, cfg):
    results = [merge_shard(run, shard, cfg) for shard in run.shards()]
    finalize(run, cfg)
    return results


def test_perfect_upstream_gives_perfect_scores(planned_run, synthetic_gt):
    import shutil

    run = fake_upstream(planned_run, synthetic_gt, lambda a: a["category_id"])
    shutil.copytree(synthetic_gt, run.url("synthetic"))  # the run's own ground truth, as on the synthetic source
    cfg = config(T, overlays=2)
    results = merge_all(run, cfg)
    assert all(r.n_failed == 0 for r in results)
    for image_id in range(1, N_IMAGES + 1):  # the pseudo semantic PNG is the ground-truth one
        ours = storage.read_png(run.url("merge", "semantic", f"{image_id}.png"))
        truth = storage.read_png(storage.join(synthetic_gt, "semantic", f"{image_id:06d}.png"))
        np.testing.assert_array_equal(ours, truth)
    panoptic = storage.read_json(run.url("merge", "panoptic.json"))
    assert [c["id"] for c in panoptic["categories"]] == list(range(1, T + S + 1))
    assert [c["isthing"] for c in panoptic["categories"]] == [1] * T + [0] * S
    for ann in panoptic["annotations"]:
        ids = [s["id"] for s in ann["segments_info"]]
        assert len(ids) == len(set(ids))

    result = evaluate_run(run, cfg)
    summary = result.summary
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "pixel_accuracy", "AP_box", "AP_mask"):
        assert summary[key] == pytest.approx(100.0), key
    for name in ("report_json", "report_md", "confusion_png"):
        assert storage.exists(run.url(result.outputs[name]))
    assert len(storage.listdir(run.url("evaluate", "overlays"))) == 2
    assert "| all | 100.0 | 100.0 | 100.0 |" in storage.read_bytes(run.url("evaluate", "report.md")).decode()


@pytest.mark.parametrize("matching", ["hungarian", "majority"])
def test_matching_undoes_a_cluster_permutation(planned_run, synthetic_gt, tmp_path, matching):
    k = T + 3  # more clusters than classes; three never used
    permutation = np.random.default_rng(0).permutation(k) + 1
    run = fake_upstream(planned_run, synthetic_gt, lambda a: int(permutation[a["category_id"] - 1]))
    cfg = config(k, matching)
    merge_all(run, cfg)
    report = evaluate_predictions(
        run.url("merge", "panoptic.json"), run.url("merge", "panoptic"), run.url("merge", "instances.json"),
        synthetic_gt, cfg.evaluate, str(tmp_path / "eval"),
    )
    assert report["summary"]["PQ"] == pytest.approx(100.0)
    assert report["summary"]["AP_box"] == pytest.approx(100.0)
    instances = storage.read_json(storage.join(synthetic_gt, "annotations", "instances.json"))
    present = {a["category_id"] for a in instances["annotations"]}
    assert report["mapping"]["things"] == {str(int(permutation[c - 1])): c for c in present}


def test_split_class_needs_majority_vote(planned_run, synthetic_gt, tmp_path):
    # every class is split over two clusters (by annotation id parity): many-to-one recovers it all,
    # one-to-one keeps only one cluster per class
    run = fake_upstream(planned_run, synthetic_gt, lambda a: 2 * a["category_id"] - a["id"] % 2)
    scores = {}
    for matching in ("hungarian", "majority"):
        cfg = config(2 * T, matching)
        merge_all(run, cfg)
        report = evaluate_predictions(
            run.url("merge", "panoptic.json"), run.url("merge", "panoptic"), run.url("merge", "instances.json"),
            synthetic_gt, cfg.evaluate, str(tmp_path / matching),
        )
        scores[matching] = report["summary"]["PQ_th"]
    assert scores["majority"] == pytest.approx(100.0)
    assert scores["hungarian"] < 90


def test_missing_inputs_become_failures_and_count_as_misses(planned_run, synthetic_gt, tmp_path):
    run = fake_upstream(planned_run, synthetic_gt, lambda a: a["category_id"])
    storage.remove(run.url("stego", "maps", "2.png"))
    failed = ShardResult(
        stage="maskcut", shard="shard-00001", n_images=2, n_failed=1,
        failures=[FailureRecord(image_id=3, file_name="000003.png", stage="maskcut", reason="decode error")],
    )
    storage.write_json(run.shard_result_url("maskcut", "shard-00001"), failed.model_dump(mode="json"))
    cfg = config(T)
    first, second = merge_all(run, cfg)
    assert [(f.image_id, "STEGO map" in f.reason) for f in first.failures] == [(2, True)]
    assert [(f.image_id, "maskcut" in f.reason) for f in second.failures] == [(3, True)]
    report = evaluate_predictions(
        run.url("merge", "panoptic.json"), run.url("merge", "panoptic"), run.url("merge", "instances.json"),
        synthetic_gt, cfg.evaluate, str(tmp_path / "eval"),
    )
    assert report["n_missing_predictions"] == 2
    assert report["summary"]["PQ"] < 100 and report["summary"]["pixel_accuracy"] < 100
    assert report["summary"]["AP_box"] < 100
    subset = evaluate_predictions(  # only the images that were processed are scored
        run.url("merge", "panoptic.json"), run.url("merge", "panoptic"), run.url("merge", "instances.json"),
        synthetic_gt, cfg.evaluate, str(tmp_path / "subset"), image_ids={1, 4},
    )
    assert subset["n_images"] == 2 and subset["n_missing_predictions"] == 0
    assert subset["summary"]["PQ"] == pytest.approx(100.0) and subset["summary"]["AP_box"] == pytest.approx(100.0)
    with pytest.raises(FileNotFoundError, match="evaluate.ground_truth"):
        evaluate_run(run, cfg)  # this run has no synthetic/ folder and no configured ground truth


def test_ground_truth_scored_against_itself_as_a_prediction_folder(synthetic_gt, tmp_path):
    from u2seg_core.evaluate.stage import evaluate_folder

    report = evaluate_folder(synthetic_gt, synthetic_gt, EvaluateConfig(matching="majority", overlays=0), str(tmp_path))
    for key in ("PQ", "AP_mask", "mIoU"):
        assert report["summary"][key] == pytest.approx(100.0), key
    assert storage.exists(str(tmp_path / "report.md"))
