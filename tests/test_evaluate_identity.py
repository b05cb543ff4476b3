"""Evaluation joins predictions and ground truth on image identity (file name), counts what is missing
on either side, evaluates N named prediction sets in one report, and is driven by `u2seg evaluate`."""

import pytest
from typer.testing import CliRunner

from evaluate_fixtures import write_prediction_set
from flows.cli import app
from u2seg_core import storage
from u2seg_core.config import EvaluateConfig, SynthConfig
from u2seg_core.evaluate.stage import evaluate_predictions
from u2seg_core.synth import generate_dataset


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    generate_dataset(out, SynthConfig(n=5, size=48, seed=4))
    return out


def scores(report):
    return {(r["set"], r["protocol"]): r["summary"] for r in report["rows"]}


def test_join_by_file_name_survives_new_ids_regrouped_shards_and_extra_images(gt, tmp_path):
    cfg = EvaluateConfig(ground_truth=gt, overlays=0)
    # a prediction that is not perfect: categories of things shifted, so scores are informative (< 100)
    shifted = lambda c: c % 6 + 1 if c <= 6 else c  # noqa: E731
    clean_dir = write_prediction_set(gt, str(tmp_path / "clean"), [[1, 2], [3, 4, 5]], category_of=shifted)
    clean = evaluate_predictions({"p": clean_dir}, cfg, str(tmp_path / "ev-clean"))
    # the same images after a re-plan: other ids, other shards, one image renamed to a sub-folder path with
    # another extension (same identity by base name), plus two images the ground truth does not have
    changed_dir = write_prediction_set(
        gt, str(tmp_path / "changed"), [[5, 3], [1], [4, 2]], id_offset=70, category_of=shifted,
        rename={"000003.png": "sub/000003.jpg"}, extra=["new_a.png", "new_b.png"],
    )
    changed = evaluate_predictions({"p": changed_dir}, cfg, str(tmp_path / "ev-changed"), workers=2)
    assert scores(changed) == scores(clean)
    counts = changed["sets"]["p"]["counts"]
    assert counts["n_scored"] == 5 and counts["missing_ground_truth"] == 2 and counts["missing_prediction"] == 0
    assert changed["sets"]["p"]["problems"]["missing_ground_truth"] == ["new_a.png", "new_b.png"]
    assert "2 predicted images without ground truth (not scored): `new_a.png`, `new_b.png`" in \
        storage.read_bytes(changed["outputs"]["report_md"]).decode()
    # removing images from the prediction: only the listed ones are scored, the rest is reported
    fewer_dir = write_prediction_set(gt, str(tmp_path / "fewer"), [[1, 2]], category_of=shifted)
    fewer = evaluate_predictions({"p": fewer_dir}, cfg, str(tmp_path / "ev-fewer"))
    assert fewer["ground_truth"]["n_not_evaluated"] == 3
    subset_gt_scored = fewer["sets"]["p"]["counts"]["n_scored"]
    assert subset_gt_scored == 2


def test_several_prediction_sets_in_one_report(gt, tmp_path):
    perfect = write_prediction_set(gt, str(tmp_path / "perfect"), [[1, 2, 3], [4, 5]])
    partial = write_prediction_set(gt, str(tmp_path / "partial"), [[1, 2, 3]])  # shard-00001 missing
    cfg = EvaluateConfig(ground_truth=gt, overlays=2)
    report = evaluate_predictions({"pseudo-labels": perfect, "model": partial}, cfg, str(tmp_path / "ev"))
    assert [(r["set"], r["protocol"]) for r in report["rows"]] == [
        ("pseudo-labels", "u2seg"), ("pseudo-labels", "hungarian"), ("model", "u2seg"), ("model", "hungarian")]
    table = scores(report)
    assert table[("pseudo-labels", "u2seg")]["PQ"] == pytest.approx(100.0)
    # the same five images are scored for both sets: the two the model lacks count as empty predictions
    assert report["sets"]["model"]["counts"]["missing_prediction"] == 2
    assert report["sets"]["model"]["counts"]["n_scored"] == 5
    assert table[("model", "hungarian")]["PQ"] < 100
    overlay = storage.read_png(storage.join(str(tmp_path / "ev"), report["overlays"][0]))
    assert overlay.shape[1] == 3 * 48 + 2 * 8  # ground truth | pseudo-labels | model


def test_cli_evaluates_folders_and_reports_rows(gt, tmp_path):
    pred = write_prediction_set(gt, str(tmp_path / "pred"), [[1, 2], [3, 4, 5]])
    result = CliRunner().invoke(app, ["evaluate", "--predictions", f"mine={pred}", "--gt", gt, "--gt-format",
                                      "synthetic", "--protocol", "u2seg", "--protocol", "stego27", "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = storage.read_json(storage.join(pred, "evaluate", "report.json"))
    assert [(r["set"], r["protocol"]) for r in report["rows"]] == [("mine", "u2seg"), ("mine", "stego27")]
    assert report["rows"][1]["summary"]["mIoU"] == pytest.approx(100.0) and "panoptic" not in report["rows"][1]
    missing = CliRunner().invoke(app, ["evaluate", "--predictions", str(tmp_path / "nowhere"), "--gt", gt])
    assert missing.exit_code != 0 and "shards does not exist" in f"{missing.output}{missing.exception}"
    bad_gt = CliRunner().invoke(app, ["evaluate", "--predictions", pred, "--gt", str(tmp_path), "--gt-format", "coco"])
    assert bad_gt.exit_code != 0 and "panoptic_val2017.json" in f"{bad_gt.output}{bad_gt.exception}"
    no_gt = CliRunner().invoke(app, ["evaluate", "--predictions", pred, "--out", str(tmp_path / "stats")])
    assert no_gt.exit_code == 0 and "no ground truth" in no_gt.output


def test_a_model_set_is_scored_semantically_on_its_semantic_head(gt, tmp_path):
    stuff = [c["id"] for c in storage.read_json(storage.join(gt, "annotations", "panoptic.json"))["categories"]
             if not c["isthing"]]
    one_stuff = lambda c: stuff[0] if c in stuff else c  # noqa: E731  (panoptic: all stuff as one class)
    cfg = EvaluateConfig(ground_truth=gt, overlays=0, protocols=["hungarian"])
    pseudo = write_prediction_set(gt, str(tmp_path / "pseudo"), [[1, 2, 3, 4, 5]], category_of=one_stuff)
    model = write_prediction_set(gt, str(tmp_path / "model"), [[1, 2, 3, 4, 5]], category_of=one_stuff)
    doc = storage.read_json(storage.join(model, "shards", "shard-00000.json"))
    storage.write_json(storage.join(model, "shards", "shard-00000.json"), {**doc, "model": {"num_things": 6,
                                                                                            "num_stuff": 5}})
    for ann in doc["panoptic"]:  # the semantic head is right: the ground truth's semantic PNG
        name = next(im["file_name"] for im in doc["images"] if im["id"] == ann["image_id"])
        storage.atomic_write_bytes(storage.join(model, "semantic", ann["file_name"]),
                                   storage.read_bytes(storage.join(gt, "semantic", name)))
    report = evaluate_predictions({"pseudo": pseudo, "model": model}, cfg, str(tmp_path / "ev"))
    table = scores(report)
    assert table[("model", "hungarian")]["mIoU"] == pytest.approx(100.0)
    assert table[("pseudo", "hungarian")]["mIoU"] < 90
    assert table[("model", "hungarian")]["PQ"] == pytest.approx(table[("pseudo", "hungarian")]["PQ"])
