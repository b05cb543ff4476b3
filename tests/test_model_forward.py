"""End-to-end inference of the random-weight K=300 model on a real photo at a reduced test size."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from u2seg_core.model import ModelConfig, build_model
from u2seg_core.model.box_head import fast_rcnn_inference_single_image
from u2seg_core.model.postprocess import paste_region
from u2seg_core.model.preprocess import prepare_input
from u2seg_core.model.structures import clip_boxes
from shared_paths import REAL_IMAGES_DIR

PHOTO = REAL_IMAGES_DIR / "demo1.jpg"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    cfg = ModelConfig.u2seg_eval_300()
    # fewer proposals and a smaller image keep the test fast; every other setting is U2Seg's
    cfg = cfg.model_copy(update={
        "rpn": cfg.rpn.model_copy(update={"post_nms_topk_test": 200}),
        "input": cfg.input.model_copy(update={"min_size_test": 192, "max_size_test": 320}),
    })
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # confident, varied class scores so that detections pass the 0.25 threshold
        for predictor in model.roi_heads.box_predictor:
            predictor.cls_score.weight.normal_(0.0, 0.08)
    return model


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    if not PHOTO.is_file():
        pytest.skip(f"{PHOTO} not available")
    image = Image.open(PHOTO).convert("RGB")
    return np.asarray(image.resize((image.width // 8, image.height // 8), Image.BILINEAR))


@pytest.fixture(scope="module")
def output(model, photo) -> dict:
    with torch.no_grad():
        return model([prepare_input(photo, model.cfg.input)])[0]


def test_outputs_are_well_formed(model, photo, output) -> None:
    height, width = photo.shape[:2]
    det = output["instances"]
    n = len(det)
    assert 0 < n <= 100 and det.image_size == (height, width)
    assert det.pred_boxes.shape == (n, 4) and det.pred_boxes.dtype == torch.float32
    assert (det.pred_boxes[:, 0::2] >= 0).all() and (det.pred_boxes[:, 0::2] <= width).all()
    assert (det.pred_boxes[:, 1::2] >= 0).all() and (det.pred_boxes[:, 1::2] <= height).all()
    assert (det.pred_boxes[:, 2:] > det.pred_boxes[:, :2]).all()
    assert (det.scores > 0.25).all() and (det.scores[:-1] >= det.scores[1:]).all()
    assert det.pred_classes.dtype == torch.int64 and ((det.pred_classes >= 0) & (det.pred_classes < 300)).all()
    assert det.pred_masks.shape == (n, height, width) and det.pred_masks.dtype == torch.bool
    region = paste_region(det.pred_boxes, height, width)
    for mask, (x0, y0, x1, y1) in zip(det.pred_masks, region.tolist()):
        outside = mask.clone()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()
    assert output["sem_seg"].shape == (28, height, width) and output["sem_seg"].dtype == torch.float32
    assert torch.equal(output["sem_seg_labels"], output["sem_seg"].argmax(dim=0))


def test_panoptic_map_agrees_with_instances_and_semantic_map(output) -> None:
    panoptic, segments = output["panoptic_seg"]
    det, semantic = output["instances"], output["sem_seg"].argmax(dim=0)
    assert panoptic.dtype == torch.int32 and panoptic.shape == semantic.shape
    assert set(torch.unique(panoptic).tolist()) - {0} == {s["id"] for s in segments}
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert any(s["isthing"] for s in segments) and any(not s["isthing"] for s in segments)
    for s in segments:
        pixels = panoptic == s["id"]
        if s["isthing"]:
            assert s["score"] >= 0.25 and s["category_id"] == det.pred_classes[s["instance_id"]].item()
            assert not (pixels & ~det.pred_masks[s["instance_id"]]).any()
        else:
            assert 1 <= s["category_id"] <= 27 and s["area"] == int(pixels.sum()) >= 4096
            assert (semantic[pixels] == s["category_id"]).all()


def test_cascade_scores_are_the_mean_of_the_three_stages(model, photo, output) -> None:
    inputs = prepare_input(photo, model.cfg.input)
    with torch.no_grad():
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        proposals = model.proposal_generator(features, images.image_sizes)
        level_features = [features[f] for f in ("p2", "p3", "p4", "p5")]
        boxes, probs = proposals[0].boxes, []
        for stage in range(3):
            logits, deltas = model.roi_heads.run_stage(level_features, [boxes], stage)
            probs.append(torch.softmax(logits, dim=1))
            decoded = model.roi_heads.box_predictor[stage].box2box_transform.apply_deltas(deltas, boxes)
            boxes = clip_boxes(decoded, images.image_sizes[0])  # next stage's proposals
        mean = (probs[0] + probs[1] + probs[2]) / 3
        det = fast_rcnn_inference_single_image(decoded, mean, images.image_sizes[0], 0.25, 0.5, 100)
    ours = output["instances"]
    assert len(det) >= len(ours)  # postprocess only drops boxes that became empty (none here)
    torch.testing.assert_close(det.scores[: len(ours)], ours.scores)
    assert torch.equal(det.pred_classes[: len(ours)], ours.pred_classes)
    scale = torch.tensor([photo.shape[1] / images.image_sizes[0][1], photo.shape[0] / images.image_sizes[0][0]] * 2)
    torch.testing.assert_close(det.pred_boxes[: len(ours)] * scale, ours.pred_boxes, rtol=1e-5, atol=1e-3)
