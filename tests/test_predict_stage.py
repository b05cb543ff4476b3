"""`u2seg predict` and the predict stage on the real photos with random-weight checkpoints in detectron2's layout:
every output exists and is well-formed, failures are recorded, a wrong checkpoint is one line, reruns are cached."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from tests.predict_checkpoints import write_detectron2_checkpoint
from u2seg_core import storage
from u2seg_core.coco import decode_rle, rgb2id
from u2seg_core.model import ModelConfig
from u2seg_core.model.prediction import RAW_KEYS
from u2seg_core.rundir import RunDir
from shared_paths import REAL_IMAGES_DIR

REAL = REAL_IMAGES_DIR
runner = CliRunner()


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory) -> Path:
    return write_detectron2_checkpoint(tmp_path_factory.mktemp("ckpt") / "demo_random.pth", ModelConfig.demo())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two real photos and one corrupt JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("demo1.jpg", "demo2.jpg"):
        shutil.copy(REAL / name, folder / name)
    (folder / "broken.jpg").write_bytes((REAL / "demo1.jpg").read_bytes()[:300])
    return folder


def small_config(tmp_path: Path, **predict) -> Path:
    """Few detections per image (full-resolution masks of random weights are many and large)."""
    path = tmp_path / "predict.yaml"
    path.write_text(yaml.safe_dump({"predict": {"detections_per_image": 6, "num_workers": 0, **predict}}))
    return path


def predict_args(weights: Path, image_input: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return ["predict", "--weights", str(weights), "--input", str(image_input), "--output", str(out),
            "--score-thresh", "0", "--min-size", "256", "--max-size", "512", "--config", str(config), "--local",
            *extra]


def check_run_outputs(run: RunDir, raw: bool) -> dict:
    """Every file of the predict layout exists and is well-formed; returns the one shard JSON."""
    manifest = run.stage_manifest("predict")
    shard_json = storage.read_json(run.url("predict", "shards", "shard-00000.json"))
    k, s = shard_json["model"]["num_things"], shard_json["model"]["num_stuff"]
    assert set(shard_json) == {"images", "panoptic", "instances", "model"}
    instances_by_image: dict[int, list] = {}
    for ann in shard_json["instances"]:
        instances_by_image.setdefault(ann["image_id"], []).append(ann)
    for image, pan in zip(shard_json["images"], shard_json["panoptic"]):
        image_id = image["id"]
        assert pan["image_id"] == image_id and pan["file_name"] == f"shard-00000/{image_id}.png"
        ids = rgb2id(storage.read_png(run.url("predict", "panoptic", pan["file_name"])))
        assert ids.shape == (image["height"], image["width"])
        assert {seg["id"] for seg in pan["segments_info"]} == set(np.unique(ids)) - {0}
        for seg in pan["segments_info"]:
            assert seg["area"] == int((ids == seg["id"]).sum())
            assert (1 <= seg["category_id"] <= k) if seg["isthing"] else (k < seg["category_id"] <= k + s)
        semantic = storage.read_png(run.image_output_url("predict", "semantic", "shard-00000", image_id))
        assert semantic.shape == ids.shape and semantic.dtype == np.uint8 and semantic.max() <= s
        overlay = storage.read_png(run.image_output_url("predict", "overlays", "shard-00000", image_id))
        assert overlay.shape == (*ids.shape, 3)
        anns = instances_by_image.get(image_id, [])
        assert 0 < len(anns) <= 6
        for ann in anns:
            mask = decode_rle(ann["segmentation"])
            assert mask.shape == ids.shape and ann["area"] == int(mask.sum()) and 0 <= ann["score"] <= 1
            assert 1 <= ann["category_id"] <= k
        if raw:
            npz_url = run.image_output_url("predict", "raw", "shard-00000", image_id, ".npz")
            with np.load(io.BytesIO(storage.read_bytes(npz_url))) as npz:
                assert set(npz.files) == set(RAW_KEYS)
                n = len(npz["scores"])
                assert npz["pred_boxes"].shape == (n, 4) and npz["pred_boxes"].dtype == np.float32
                assert npz["pred_masks"].shape == (n, *ids.shape) and npz["pred_masks"].dtype == bool
                assert npz["pred_classes"].dtype == np.int64 and npz["pred_classes"].max() < k
                assert npz["sem_seg"].shape == ids.shape and npz["panoptic_seg"].dtype == np.int32
                np.testing.assert_array_equal(npz["panoptic_seg"], ids)
                np.testing.assert_array_equal(npz["sem_seg"], semantic)
                for ann, mask in zip(anns, npz["pred_masks"]):
                    np.testing.assert_array_equal(decode_rle(ann["segmentation"]), mask)
            segments_url = run.image_output_url("predict", "raw", "shard-00000", image_id, ".segments.json")
            segments = storage.read_json(segments_url)
            assert [s["id"] for s in segments] == [s["id"] for s in pan["segments_info"]]
    dataset = storage.read_json(run.url(manifest.outputs["panoptic_json"]))
    assert len(dataset["categories"]) == k + s and dataset["annotations"] == shard_json["panoptic"]
    instances = storage.read_json(run.url(manifest.outputs["instances_json"]))
    assert len(instances["categories"]) == k and instances["annotations"] == shard_json["instances"]
    return shard_json


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> Path:
    """Two real photos shrunk to 96 px (fast), and one corrupt JPEG."""
    folder = tmp_path_factory.mktemp("small")
    for name in ("demo1.jpg", "demo5.jpg"):
        with Image.open(REAL / name) as photo:
            photo.convert("RGB").resize((96, round(96 * photo.height / photo.width))).save(folder / name)
    (folder / "broken.jpg").write_bytes((REAL / "demo1.jpg").read_bytes()[:300])
    return folder


def run_folder_and_rerun(weights: Path, folder: Path, out: Path, config: Path, *extra: str) -> RunDir:
    """`u2seg predict` on a folder with one corrupt image: exit 0, the failure reported and recorded; a second
    identical run recomputes nothing."""
    result = runner.invoke(app, predict_args(weights, folder, out, config, *extra))
    assert result.exit_code == 0, result.output
    assert "predicted 2/3 images" in result.output and "broken.jpg" in result.output
    run = RunDir(str(out))
    failures = run.stage_manifest("predict").failures
    assert [f.file_name for f in failures] == ["broken.jpg"] and "cannot decode" in failures[0].reason
    before = run.stage_manifest("predict")
    marker = out / "predict" / "_shards" / "shard-00000.json"
    stamp = marker.stat().st_mtime_ns
    again = runner.invoke(app, predict_args(weights, folder, out, config, *extra))
    assert again.exit_code == 0, again.output
    assert marker.stat().st_mtime_ns == stamp
    assert run.stage_manifest("predict").hash == before.hash
    return run


def test_predict_small_folder_outputs_failure_and_cache(tmp_path, demo_checkpoint, small_photos):
    config = small_config(tmp_path)
    run = run_folder_and_rerun(demo_checkpoint, small_photos, tmp_path / "out", config, "--raw", "--min-size", "64")
    shard = check_run_outputs(run, raw=True)
    assert sorted(im["file_name"] for im in shard["images"]) == ["demo1.jpg", "demo5.jpg"]
    # another threshold is another cache key: the shard is recomputed, fewer instances pass
    result = runner.invoke(app, predict_args(demo_checkpoint, small_photos, tmp_path / "out", config, "--raw",
                                             "--min-size", "64", "--score-thresh", "0.99"))
    assert result.exit_code == 0, result.output
    assert storage.read_json(run.url("predict", "shards", "shard-00000.json"))["instances"] == []


def test_an_image_the_model_fails_on_is_a_failure_record(tmp_path, demo_checkpoint, small_photos, monkeypatch):
    from u2seg_core.config import PipelineConfig, PredictConfig, SourceConfig
    from u2seg_core.local_runner import run_pipeline_local
    from u2seg_core.model.predictor import Predictor

    with Image.open(small_photos / "demo5.jpg") as photo:
        bad_size = (photo.height, photo.width)
    original = Predictor.predict_prepared

    def failing(self, pixels, sizes):
        if any(tuple(size) == bad_size for size in sizes):
            raise RuntimeError("simulated kernel failure")
        return original(self, pixels, sizes)

    monkeypatch.setattr(Predictor, "predict_prepared", failing)
    settings = PredictConfig(weights=str(demo_checkpoint), score_thresh=0.0, min_size_test=64, max_size_test=128,
                             detections_per_image=3, num_workers=0, overlays=False)
    cfg = PipelineConfig(source=SourceConfig(uri=str(small_photos)), orchestration={"max_failure_rate": 0.9},
                         predict=settings)
    manifest = run_pipeline_local(cfg, str(tmp_path / "run"), stages=["plan", "predict"])["predict"]
    reasons = {f.file_name: f.reason for f in manifest.failures}
    assert set(reasons) == {"broken.jpg", "demo5.jpg"} and "simulated kernel failure" in reasons["demo5.jpg"]
    shard = storage.read_json(str(tmp_path / "run" / "predict" / "shards" / "shard-00000.json"))
    assert [im["file_name"] for im in shard["images"]] == ["demo1.jpg"]
    assert not (tmp_path / "run" / "predict" / "overlays").exists()


@pytest.mark.slow
def test_predict_real_photos_folder(tmp_path, demo_checkpoint, photos):
    run = run_folder_and_rerun(demo_checkpoint, photos, tmp_path / "out", small_config(tmp_path), "--raw")
    shard = check_run_outputs(run, raw=True)
    assert sorted(im["file_name"] for im in shard["images"]) == ["demo1.jpg", "demo2.jpg"]


@pytest.mark.slow
def test_predict_single_image_with_class_names(tmp_path, demo_checkpoint):
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"things": {str(c): f"thing{c}" for c in range(1, 13)}, "stuff": {}}))
    out = tmp_path / "single"
    result = runner.invoke(app, predict_args(demo_checkpoint, REAL / "demo1.jpg", out, small_config(tmp_path),
                                             "--mapping", str(mapping)))
    assert result.exit_code == 0, result.output
    assert "predicted 1/1 images" in result.output
    check_run_outputs(RunDir(str(out)), raw=False)


@pytest.mark.parametrize("case", ["vit", "missing", "mapping", "corrupt-single", "other-run", "device"])
def test_user_mistakes_are_one_line_exit_2(tmp_path, demo_checkpoint, case):
    weights, image_input, extra = demo_checkpoint, REAL / "demo1.jpg", []
    if case == "other-run":  # an existing run of other images is never re-planned
        from u2seg_core.config import PipelineConfig, SourceConfig
        from u2seg_core.stage_run import update_run_manifest

        update_run_manifest(RunDir(str(tmp_path / "out")), PipelineConfig(source=SourceConfig(uri="/data/other")))
    if case == "vit":
        weights = tmp_path / "dino_vitbase8_pretrain.pth"
        torch.save({"cls_token": torch.zeros(1, 1, 8), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, weights)
    elif case == "missing":
        weights = tmp_path / "nope" / "model.pth"
    elif case == "mapping":
        extra = ["--mapping", str(tmp_path / "absent.json")]
    elif case == "device":
        extra = ["--device", "nodevice" if torch.cuda.is_available() else "cuda"]
    else:
        image_input = tmp_path / "broken.jpg"
        image_input.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = runner.invoke(app, predict_args(weights, image_input, tmp_path / "out", small_config(tmp_path), *extra))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    expected = {"vit": "ViT (DINO) checkpoint", "missing": "does not exist", "mapping": "absent.json",
                "corrupt-single": "cannot decode", "other-run": "run of other images", "device": "--device"}[case]
    assert expected in result.output


@pytest.mark.slow
def test_predict_k300_released_layout_at_reduced_size(tmp_path):
    weights = write_detectron2_checkpoint(tmp_path / "cocotrain_300_random.pth", ModelConfig.u2seg_eval_300())
    out = tmp_path / "k300"
    args = predict_args(weights, REAL / "demo1.jpg", out, small_config(tmp_path), "--raw")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    shard = check_run_outputs(RunDir(str(out)), raw=True)
    assert shard["model"] == {"num_things": 300, "num_stuff": 27}


@pytest.mark.slow
def test_predict_stage_from_s3_to_s3(tmp_path, s3_bucket, demo_checkpoint, small_photos):
    """Images, weights and the run directory on S3 (moto); the remote checkpoint is fetched once."""
    from u2seg_core.config import PipelineConfig, PredictConfig, SourceConfig
    from u2seg_core.local_runner import run_pipeline_local

    fs, _ = storage.get_fs(s3_bucket)
    fs.put(str(small_photos) + "/", f"{s3_bucket}/photos/", recursive=True)
    fs.put(str(demo_checkpoint), f"{s3_bucket}/weights/demo.pth")
    cfg = PipelineConfig(
        source=SourceConfig(uri=f"{s3_bucket}/photos"),
        predict=PredictConfig(weights=f"{s3_bucket}/weights/demo.pth", score_thresh=0.0, min_size_test=64,
                              max_size_test=128, detections_per_image=3, num_workers=0),
    )
    run_dir = f"{s3_bucket}/pred"
    manifests = run_pipeline_local(cfg, run_dir, stages=["plan", "predict"])
    assert manifests["predict"].summary["n_failed"] == 1
    shard = storage.read_json(f"{run_dir}/predict/shards/shard-00000.json")
    assert sorted(im["file_name"] for im in shard["images"]) == ["demo1.jpg", "demo5.jpg"]
    for pan in shard["panoptic"]:
        assert storage.exists(f"{run_dir}/predict/panoptic/{pan['file_name']}")
        assert storage.exists(f"{run_dir}/predict/overlays/{pan['file_name']}")
    assert storage.read_json(f"{run_dir}/predict/panoptic.json")["annotations"] == shard["panoptic"]


@pytest.mark.slow
def test_predict_output_is_evaluated_and_its_mapping_read_back(tmp_path, demo_checkpoint):
    """`u2seg evaluate` reads a `u2seg predict --output DIR` directly; its report.json feeds `--mapping`."""
    from u2seg_core.config import SynthConfig
    from u2seg_core.synth import generate_dataset

    generate_dataset(str(tmp_path / "syn"), SynthConfig(n=3, size=64, seed=0))
    out = tmp_path / "pred"
    config = small_config(tmp_path)
    images = tmp_path / "syn" / "images"
    result = runner.invoke(app, predict_args(demo_checkpoint, images, out, config, "--min-size", "64"))
    assert result.exit_code == 0, result.output
    evaluated = runner.invoke(app, ["evaluate", "--predictions", str(out), "--gt", str(tmp_path / "syn")])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(next((out / "evaluate-synthetic").glob("report.json")).read_text())
    assert report["rows"] and {row["set"] for row in report["rows"]} == {"model"}
    assert all(row["summary"]["mIoU"] is not None for row in report["rows"])
    mapped = runner.invoke(app, predict_args(demo_checkpoint, tmp_path / "syn" / "images" / "000001.png",
                                             tmp_path / "one", config, "--min-size", "64",
                                             "--mapping", str(out / "evaluate-synthetic" / "report.json")))
    assert mapped.exit_code == 0, mapped.output


def test_a_single_image_is_a_one_image_source():
    from u2seg_core.config import SourceConfig
    from u2seg_core.io.sources import list_source

    (record,) = list_source(SourceConfig(uri=str(REAL / "demo3.jpg"))).records
    assert record.file_name == "demo3.jpg" and record.url == str(REAL / "demo3.jpg")
    assert record.size_bytes == (REAL / "demo3.jpg").stat().st_size
