"""Merge -> evaluate on synthetic ground truth fed back as perfect upstream outputs.

The ground-truth things play the MaskCut instances (their class, possibly relabelled, plays the
cluster id) and the ground-truth stuff plays the STEGO map; merging and evaluating must then give
PQ = AP = mIoU = 100 under both protocols, and the mappings must undo any relabelling of the clusters.
"""

import shutil

import numpy as np
import pytest

from u2seg_core import storage
from u2seg_core.config import ClusterConfig, EvaluateConfig, PipelineConfig, StegoConfig, SynthConfig
from u2seg_core.evaluate.stage import evaluate_predictions, evaluate_run, evaluate_shard
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
            storage.write_png(run.image_output_url("stego", "maps", shard.name, image_id), stego)
    return run


def config(k, overlays=0, ground_truth=None, protocols=("u2seg", "hungarian")):
    return PipelineConfig.demo(
        cluster=ClusterConfig(k=k),
        stego=StegoConfig(n_classes=S),
        evaluate=EvaluateConfig(overlays=overlays, ground_truth=ground_truth, protocols=list(protocols)),
    )


def merge_all(run, cfg):
    results = [merge_shard(run, shard, cfg) for shard in run.shards()]
    finalize(run, cfg)
    return results


def evaluate_stage(run, cfg):
    """The registry's evaluate stage: every shard step, then the global step."""
    results = [evaluate_shard(run, shard, cfg) for shard in run.shards()]
    return results, evaluate_run(run, cfg)


def rows(summary):
    return summary["rows"]


def test_perfect_upstream_gives_perfect_scores_under_both_protocols(planned_run, synthetic_gt):
    run = fake_upstream(planned_run, synthetic_gt, lambda a: a["category_id"])
    shutil.copytree(synthetic_gt, run.url("synthetic"))  # the run's own ground truth, as on the synthetic source
    cfg = config(T, overlays=3)
    results = merge_all(run, cfg)
    assert all(r.n_failed == 0 for r in results)
    shard_results, result = evaluate_stage(run, cfg)
    assert [r.outputs["evidence"] for r in shard_results] == [f"evaluate/shards/shard-0000{i}.npz" for i in (0, 1)]
    summary = result.summary
    assert set(rows(summary)) == {"pseudo-labels/u2seg", "pseudo-labels/hungarian"}
    for row in rows(summary).values():
        for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "pixel_accuracy", "AP_box", "AP_mask"):
            assert row[key] == pytest.approx(100.0), key
    assert summary["n_images"] == N_IMAGES and summary["missing_prediction"] == 0
    for name in ("report_json", "report_md", "confusion_png"):
        assert storage.exists(run.url(result.outputs[name]))
    assert storage.listdir(run.url("evaluate", "overlays")) == ["shard-00000", "shard-00001"]
    assert storage.listdir(run.url("evaluate", "overlays", "shard-00001")) == ["3.png"]
    md = storage.read_bytes(run.url("evaluate", "report.md")).decode()
    assert "| pseudo-labels | u2seg | 100.0 | 100.0 | 100.0 |" in md
    assert "| pseudo-labels | hungarian | 100.0 |" in md
    assert "transductive" in md and "](overlays/shard-00000/1.png)" in md
    overlay = storage.read_png(run.url("evaluate", "overlays", "shard-00000", "1.png"))
    assert overlay.shape[1] == 2 * SIZE + 8 and overlay.shape[0] > SIZE  # two titled panels


def test_mappings_undo_a_cluster_permutation(planned_run, synthetic_gt, tmp_path):
    k = T + 3  # more clusters than classes; three never used
    permutation = np.random.default_rng(0).permutation(k) + 1
    run = fake_upstream(planned_run, synthetic_gt, lambda a: int(permutation[a["category_id"] - 1]))
    cfg = config(k, ground_truth=synthetic_gt)
    merge_all(run, cfg)
    report = evaluate_predictions({"pseudo-labels": "merge"}, cfg.evaluate, str(tmp_path / "eval"), run, cfg)
    instances = storage.read_json(storage.join(synthetic_gt, "annotations", "instances.json"))
    present = {a["category_id"] for a in instances["annotations"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for row in report["rows"]:
        assert row["summary"]["PQ"] == pytest.approx(100.0) and row["summary"]["AP_box"] == pytest.approx(100.0)
        things = {p: g for p, g in row["mapping"]["pred_to_gt"].items() if int(p) <= k}
        assert things == {str(int(permutation[c - 1])): names[c] for c in present}, row["protocol"]


def test_split_class_needs_the_u2seg_majority_vote(planned_run, synthetic_gt, tmp_path):
    # every class is split over two clusters (by annotation id parity): many-to-one recovers it all,
    # one-to-one keeps only one cluster per class
    run = fake_upstream(planned_run, synthetic_gt, lambda a: 2 * a["category_id"] - a["id"] % 2)
    cfg = config(2 * T, ground_truth=synthetic_gt)
    merge_all(run, cfg)
    report = evaluate_predictions({"pseudo-labels": "merge"}, cfg.evaluate, str(tmp_path / "eval"), run, cfg)
    pq_th = {r["protocol"]: r["summary"]["PQ_th"] for r in report["rows"]}
    assert pq_th["u2seg"] == pytest.approx(100.0)
    assert pq_th["hungarian"] < 90


def test_missing_inputs_are_counted_and_scored_as_empty(planned_run, synthetic_gt, tmp_path):
    run = fake_upstream(planned_run, synthetic_gt, lambda a: a["category_id"])
    storage.remove(run.image_output_url("stego", "maps", "shard-00000", 2))
    failed = ShardResult(
        stage="maskcut", shard="shard-00001", n_images=2, n_failed=1,
        failures=[FailureRecord(image_id=3, file_name="000003.png", stage="maskcut", reason="decode error")],
    )
    storage.write_json(run.shard_result_url("maskcut", "shard-00001"), failed.model_dump(mode="json"))
    cfg = config(T, ground_truth=synthetic_gt)
    first, second = merge_all(run, cfg)
    assert [(f.image_id, "STEGO map" in f.reason) for f in first.failures] == [(2, True)]
    assert [(f.image_id, "maskcut" in f.reason) for f in second.failures] == [(3, True)]
    _, result = evaluate_stage(run, cfg)  # the run planned 4 images: 2 have no prediction
    assert result.summary["missing_prediction"] == 2 and result.summary["n_images"] == N_IMAGES
    assert result.summary["PQ"] < 100 and result.summary["AP_box"] < 100
    # U2Seg's semantic scores leave pixels without a (mapped) prediction out; Hungarian counts them as errors
    report = storage.read_json(run.url("evaluate", "report.json"))
    semantic = {row["protocol"]: row["semantic"] for row in report["rows"]}
    assert semantic["u2seg"]["pixel_accuracy"] == pytest.approx(100.0)
    assert semantic["u2seg"]["n_pixels_unmapped"] == 2 * SIZE * SIZE
    assert semantic["hungarian"]["pixel_accuracy"] == pytest.approx(50.0)
    md = storage.read_bytes(run.url("evaluate", "report.md")).decode()
    assert "2 ground-truth images without a prediction" in md and "`000002.png`, `000003.png`" in md
    # outside the run only what a set lists is scored: the two merged images are perfect
    subset = evaluate_predictions({"pseudo-labels": run.url("merge")}, cfg.evaluate, str(tmp_path / "subset"), None, cfg)
    counts = subset["sets"]["pseudo-labels"]["counts"]
    assert counts["n_scored"] == 2 and counts["missing_prediction"] == 0
    assert subset["summary"]["PQ"] == pytest.approx(100.0) and subset["summary"]["AP_box"] == pytest.approx(100.0)


def test_no_ground_truth_writes_statistics_and_overlays(planned_run, synthetic_gt):
    run = fake_upstream(planned_run, synthetic_gt, lambda a: a["category_id"])
    cfg = config(T, overlays=2)
    merge_all(run, cfg)
    _, result = evaluate_stage(run, cfg)  # no synthetic/ folder, no evaluate.ground_truth
    assert result.summary["ground_truth"] is None and result.summary["n_images"] == N_IMAGES
    instances = storage.read_json(storage.join(synthetic_gt, "annotations", "instances.json"))
    assert result.summary["thing_segments_per_image"] == pytest.approx(len(instances["annotations"]) / N_IMAGES)
    report = storage.read_json(run.url("evaluate", "report.json"))
    stats = report["sets"]["pseudo-labels"]["statistics"]
    assert stats["n_empty_clusters"] == T - len({a["category_id"] for a in instances["annotations"]})
    assert sum(stats["stuff_coverage"].values()) + stats["thing_coverage"] == pytest.approx(1.0)
    md = storage.read_bytes(run.url("evaluate", "report.md")).decode()
    assert "No ground truth was given" in md and "](overlays/shard-00000/2.png)" in md
    assert storage.exists(run.url("evaluate", "overlays", "shard-00000", "1.png"))
