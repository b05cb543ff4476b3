"""PanopticPrediction and its writers: shapes and dtypes, cluster ids, COCO forms against brute force, the test
transform against the model's reference preprocessing, batched against one-by-one, label placement, mapping files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from u2seg_core.coco import decode_rle, mask_bbox, rgb2id
from u2seg_core.config import PredictConfig
from u2seg_core.io.decode import load_rgb
from u2seg_core.model import ModelConfig, build_model
from u2seg_core.model.prediction import RAW_KEYS, PanopticPrediction
from u2seg_core.model.predictor import Predictor, InputTransform, configure
from u2seg_core.model.preprocess import prepare_input
from u2seg_core.predict.mapping import MappingFileError, class_names, load_class_names
from u2seg_core.coco import encode_rle, encode_rles
from u2seg_core.predict.overlay import blend_segments, label_spots, overlay_png, segment_edges, segment_text
from u2seg_core.predict.writers import panoptic_png, semantic_png
from shared_paths import REAL_IMAGES_DIR

REAL = str(REAL_IMAGES_DIR / "demo1.jpg")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The small demo model with random weights, thresholds 0 so that it keeps detections."""
    torch.manual_seed(0)
    cfg = configure(ModelConfig.demo(num_things=12, num_stuff=8), score_thresh=0.0, min_size_test=160,
                    max_size_test=256)
    return Predictor.from_model(build_model(cfg), cfg, device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rgb = Image.fromarray(load_rgb(REAL))
    return np.asarray(rgb.resize((200, 150), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def prediction(predictor, image):
    return predictor(image)


def test_raw_outputs_have_the_documented_shapes_and_dtypes(prediction, image):
    h, w = image.shape[:2]
    n = len(prediction.scores)
    assert n > 0
    assert prediction.pred_boxes.shape == (n, 4) and prediction.pred_boxes.dtype == np.float32
    assert prediction.scores.dtype == np.float32 and prediction.pred_classes.dtype == np.int64
    assert prediction.pred_masks.shape == (n, h, w) and prediction.pred_masks.dtype == bool
    assert prediction.sem_seg.shape == (h, w) and prediction.sem_seg.dtype == np.uint8
    assert prediction.panoptic_seg.shape == (h, w) and prediction.panoptic_seg.dtype == np.int32
    assert prediction.sem_seg.max() <= 8
    assert (prediction.pred_boxes[:, 2:] <= [w, h]).all() and (prediction.pred_boxes >= 0).all()
    assert set(prediction.raw_arrays()) == set(RAW_KEYS)
    with np.load(io.BytesIO(prediction.npz_bytes())) as raw:
        for key in RAW_KEYS:
            np.testing.assert_array_equal(raw[key], getattr(prediction, key))
            assert raw[key].dtype == getattr(prediction, key).dtype


def test_cluster_ids_things_from_1_stuff_from_k_plus_1(prediction):
    k = prediction.n_things
    segments = prediction.coco_segments
    assert any(s["isthing"] for s in segments) and any(not s["isthing"] for s in segments)
    for seg, raw in zip(segments, prediction.segments_info):
        if raw["isthing"]:
            assert seg["category_id"] == raw["category_id"] + 1 == prediction.cluster_ids[raw["instance_id"]]
            assert 1 <= seg["category_id"] <= k
        else:  # detectron2's stuff category_id is the semantic label 1..S; cluster id K + label
            assert seg["category_id"] == k + raw["category_id"]
            assert k + 1 <= seg["category_id"] <= k + prediction.n_stuff


def test_coco_segments_match_brute_force(prediction):
    ids = prediction.panoptic_seg
    for seg in prediction.coco_segments:
        mask = ids == seg["id"]
        assert seg["area"] == int(mask.sum()) and seg["area"] > 0
        assert seg["bbox"] == mask_bbox(mask)


def test_instances_rle_decodes_to_the_masks(prediction):
    anns = prediction.instance_annotations(image_id=7)
    assert len(anns) == len(prediction.scores)
    for i, ann in enumerate(anns):
        assert ann["id"] == 700 + i and ann["image_id"] == 7 and ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str)
        np.testing.assert_array_equal(decode_rle(ann["segmentation"]), prediction.pred_masks[i])
        assert ann["category_id"] == prediction.pred_classes[i] + 1
        assert ann["score"] == pytest.approx(float(prediction.scores[i]))
        x0, y0, x1, y1 = prediction.pred_boxes[i].tolist()
        assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
        assert ann["area"] == int(prediction.pred_masks[i].sum())
    json.dumps(anns)


def test_no_instances_is_stuff_only(image):
    torch.manual_seed(0)
    cfg = configure(ModelConfig.demo(), score_thresh=1.0, min_size_test=96, max_size_test=128)
    empty = Predictor.from_model(build_model(cfg), cfg, device="cpu")(image)
    assert empty.pred_boxes.shape == (0, 4) and empty.pred_masks.shape == (0, *image.shape[:2])
    assert empty.instance_annotations(3) == []
    assert all(not s["isthing"] for s in empty.coco_segments)
    assert overlay_png(empty, image).shape == image.shape


def test_pngs_round_trip(prediction):
    np.testing.assert_array_equal(rgb2id(panoptic_png(prediction)), prediction.panoptic_seg)
    assert semantic_png(prediction).dtype == np.uint8


def test_semantic_map_is_the_models_argmax_with_or_without_its_labels(predictor, image):
    pixels = predictor.transform(image)
    with torch.inference_mode():
        output = predictor.model([{"image": pixels, "height": image.shape[0], "width": image.shape[1]}])[0]
    with_labels = PanopticPrediction.from_output(output, predictor.num_things, predictor.num_stuff)
    del output["sem_seg_labels"]
    recomputed = PanopticPrediction.from_output(output, predictor.num_things, predictor.num_stuff)
    np.testing.assert_array_equal(with_labels.sem_seg, recomputed.sem_seg)
    np.testing.assert_array_equal(with_labels.sem_seg, output["sem_seg"].argmax(dim=0).numpy())


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_test_transform_equals_the_reference_preprocessing(image, fmt):
    cfg = ModelConfig().input.model_copy(update={"format": fmt, "min_size_test": 120, "max_size_test": 150})
    fast = InputTransform(fmt, 120, 150)(Image.fromarray(image))
    reference = prepare_input(image, cfg)["image"]
    assert fast.dtype == torch.uint8 and fast.shape == (3, 113, 150)
    torch.testing.assert_close(fast.float(), reference, rtol=0, atol=0)


def test_predict_batch_equals_one_by_one(predictor, image, prediction):
    other = image[::-1].copy()
    batched = predictor.predict_batch([image, other])
    for single, pred in ((prediction, batched[0]), (predictor(other), batched[1])):
        assert len(single.scores) == len(pred.scores)
        np.testing.assert_allclose(pred.pred_boxes, single.pred_boxes, atol=1e-3)
        assert (pred.panoptic_seg == single.panoptic_seg).mean() > 0.999


def test_predict_config_defaults_are_u2seg_eval_config():
    model, settings = ModelConfig.u2seg_eval_300(), PredictConfig()
    assert settings.score_thresh == model.roi_heads.score_thresh_test == model.combine.instances_confidence_thresh
    assert (settings.min_size_test, settings.max_size_test) == (model.input.min_size_test, model.input.max_size_test)
    assert settings.detections_per_image == model.roi_heads.detections_per_image
    cfg = configure(model, score_thresh=0.4, combine={"stuff_area_limit": 0})
    assert cfg.roi_heads.score_thresh_test == cfg.combine.instances_confidence_thresh == 0.4
    assert cfg.combine.stuff_area_limit == 0
    with pytest.raises(ValueError, match="unknown model config section"):
        configure(model, solver={"lr": 1})


def test_segment_edges_match_brute_force():
    ids = np.zeros((30, 40), np.int32)
    ids[2:20, 3:30] = 1
    ids[10:28, 20:38] = 2
    edges = segment_edges(ids)
    padded = np.pad(ids, 1, mode="edge")
    reference = np.zeros_like(edges)
    for y in range(30):
        for x in range(40):
            neighbours = [padded[y, x + 1], padded[y + 2, x + 1], padded[y + 1, x], padded[y + 1, x + 2]]
            reference[y, x] = ids[y, x] != 0 and any(n != ids[y, x] for n in neighbours)
    np.testing.assert_array_equal(edges, reference)


def test_blend_segments_equals_per_segment_reference():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    ids = np.zeros((30, 40), np.int32)
    ids[2:20, 3:30] = 1
    ids[10:28, 20:38] = 3
    table = np.array([[0, 0, 0], [200, 10, 10], [0, 0, 0], [10, 220, 30]], np.float32)
    reference = rgb.astype(np.float32)
    for sid in (1, 3):
        mask = ids == sid
        reference[mask] = 0.5 * reference[mask] + 0.5 * table[sid]
    edges = segment_edges(ids)
    reference[edges] = table[ids[edges]]
    np.testing.assert_array_equal(blend_segments(rgb, ids, table, 1), np.clip(reference, 0, 255).astype(np.uint8))


def test_batched_rle_equals_one_by_one():
    masks = np.random.default_rng(2).random((7, 33, 21)) > 0.6
    assert encode_rles(masks) == [encode_rle(m) for m in masks]
    assert encode_rles(np.zeros((0, 4, 4), bool)) == []


def test_labels_do_not_overlap_and_thing_labels_sit_at_their_box_corner(prediction):
    spots = label_spots(prediction, None, lambda text: (0, 0, 7 * len(text), 11))
    height, width = prediction.image_size
    assert len(spots) >= 3
    for i, (_, _, a, _) in enumerate(spots):
        assert 0 <= a[0] < a[2] <= width and 0 <= a[1] < a[3] <= height
        for _, _, b, _ in spots[:i]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    first_thing = next(s for s in prediction.coco_segments if s["isthing"])
    sid, text, spot, _ = spots[0]
    box = prediction.pred_boxes[prediction.segments_info[0]["instance_id"]]
    assert sid == first_thing["id"] and text == f"id {first_thing['category_id']}"
    assert spot[0] == min(int(box[0]), width - spot[2] + spot[0])


def test_overlay_is_drawn_with_labels(prediction, image):
    overlay = overlay_png(prediction, image, {1: "person"})
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert (overlay != image).mean() > 0.3  # every segment is blended
    assert segment_text(1, {1: "person"}) == "person" and segment_text(273, None) == "id 273"
    with pytest.raises(ValueError, match="image is"):
        overlay_png(prediction, image[:10], None)


def test_mapping_file_formats(tmp_path):
    report = {"rows": [], "mapping": {"things": {"3": "person", "4": "dog"}, "stuff": {"13": "sky"}}}  # evaluate's
    assert class_names(report) == {3: "person", 4: "dog", 13: "sky"}
    ids_only = {"mapping": {"things": {"3": 1, "4": 9}, "stuff": {"13": 92}}}
    assert class_names(ids_only) == {3: "class 1", 4: "class 9", 13: "class 92"}
    named = {"things": {"3": {"id": 1, "name": "person"}, "4": "dog"}, "stuff": {"13": 92},
             "categories": [{"id": 92, "name": "sky"}]}
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(named))
    assert load_class_names(str(path)) == {3: "person", 4: "dog", 13: "sky"}
    with pytest.raises(MappingFileError, match="does not exist"):
        load_class_names(str(tmp_path / "missing.json"))
    with pytest.raises(MappingFileError, match="no 'things'"):
        class_names({"a": 1})
    with pytest.raises(MappingFileError, match="is not a class"):
        class_names({"things": {"3": [1]}})
