"""Model parts against straightforward references written from the formulas (float64 / per-box loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align

from u2seg_core.model import ModelConfig, build_model
from u2seg_core.model.anchors import AnchorGenerator
from u2seg_core.model.box_coder import SCALE_CLAMP, Box2BoxTransform
from u2seg_core.model.box_head import fast_rcnn_inference_single_image
from u2seg_core.model.layers import FrozenBatchNorm2d
from u2seg_core.model.panoptic import combine_semantic_and_instance_outputs
from u2seg_core.model.poolers import ROIPooler, assign_boxes_to_levels
from u2seg_core.model.postprocess import detector_postprocess, paste_masks_in_image, sem_seg_postprocess
from u2seg_core.model.preprocess import prepare_input, resize_shortest_edge, resized_shape, sample_train_short_edge
from u2seg_core.model.rpn import find_top_proposals
from u2seg_core.model.structures import Detections


# ---- box coding ---------------------------------------------------------------------------------


def decode_reference(deltas: np.ndarray, boxes: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """R-CNN decoding in float64 with the log(1000/16) clamp."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    dx, dy, dw, dh = (deltas[:, i] / weights[i] for i in range(4))
    dw, dh = np.minimum(dw, math.log(1000 / 16)), np.minimum(dh, math.log(1000 / 16))
    pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, np.exp(dw) * w, np.exp(dh) * h
    return np.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], axis=1)


def test_box_decode_matches_float64_reference_and_clamps() -> None:
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(200, 2, generator=gen) * 500
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(200, 2, generator=gen) * 300], dim=1)
    deltas = torch.randn(200, 4, generator=gen) * 2
    deltas[:5, 2:] = 20.0  # beyond the clamp
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (30.0, 30.0, 15.0, 15.0)):
        coder = Box2BoxTransform(weights)
        ours = coder.apply_deltas(deltas, boxes)
        ref = decode_reference(deltas.double().numpy(), boxes.double().numpy(), weights)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-3)
        assert ours.dtype == torch.float32
        widths = (ours[:5, 2] - ours[:5, 0]) / (boxes[:5, 2] - boxes[:5, 0])
        torch.testing.assert_close(widths, torch.full((5,), math.exp(20.0 / weights[2]) if 20 / weights[2] < SCALE_CLAMP
                                                      else 1000 / 16))
        targets = ours[5:]
        torch.testing.assert_close(coder.apply_deltas(coder.get_deltas(boxes[5:], targets), boxes[5:]), targets,
                                   rtol=1e-4, atol=1e-2)


def test_anchors_follow_the_formula() -> None:
    gen = AnchorGenerator([[32.0]], [[0.5, 1.0, 2.0]], [4], offset=0.0)
    anchors = gen([torch.zeros(1, 1, 2, 3)])[0]
    assert anchors.shape == (2 * 3 * 3, 4)
    # position (y=1, x=2), aspect ratio 2.0 (h = 2w, w * h = 32^2)
    w = math.sqrt(32**2 / 2.0)
    expected = [8 - w / 2, 4 - w, 8 + w / 2, 4 + w]
    torch.testing.assert_close(anchors[(1 * 3 + 2) * 3 + 2], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(anchors[:3].mean(dim=1), torch.zeros(3))  # centred on (0, 0) at offset 0.0


# ---- RPN and box inference ------------------------------------------------------------------------


def test_rpn_top_proposals_per_level_then_per_image() -> None:
    # level 0: 4 candidates, level 1: 3; pre-NMS top-2 per level, post-NMS top-3 per image
    boxes0 = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [-5, -5, 5, 0]]], dtype=torch.float32)
    logits0 = torch.tensor([[3.0, 2.9, 1.0, 5.0]])
    boxes1 = torch.tensor([[[0, 0, 10, 10], [20, 20, 90, 90], [30, 30, 40, 40]]], dtype=torch.float32)
    logits1 = torch.tensor([[0.5, 4.0, 0.1]])
    out = find_top_proposals([boxes0, boxes1], [logits0, logits1], [(80, 80)], 0.7, 2, 3, 0.0, False)[0]
    # level 0 keeps logits 5.0 (clipped to an empty box: dropped) and 3.0; level 1 keeps 4.0 (clipped) and 0.5,
    # which overlaps level 0's box but is on another level, so both survive NMS
    torch.testing.assert_close(out.objectness_logits, torch.tensor([4.0, 3.0, 0.5]))
    torch.testing.assert_close(out.boxes, torch.tensor([[20, 20, 80, 80], [0, 0, 10, 10], [0, 0, 10, 10]],
                                                       dtype=torch.float32))


def test_fast_rcnn_inference_thresholds_per_class_nms_and_topk() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [-3, -3, 200, 5]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    det = fast_rcnn_inference_single_image(boxes, scores, (50, 100), 0.25, 0.5, 100)
    # (0, c0) 0.9; (1, c0) suppressed by it; (2, c1) 0.7 survives (other class); (3, c0) 0.3 and (3, c1) 0.3
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.3, 0.3])
    assert det.pred_classes.tolist() == [0, 1, 0, 1]
    assert det.pred_boxes[2].tolist() == [0.0, 0.0, 100.0, 5.0]  # clipped
    assert len(fast_rcnn_inference_single_image(boxes, scores, (50, 100), 0.25, 0.5, 2)) == 2


# ---- pooling ------------------------------------------------------------------------------------


def test_level_assignment_canonical_224_at_p4() -> None:
    sides = torch.tensor([224.0, 223.0, 112.0, 111.0, 448.0, 447.0, 8.0, 5000.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], dim=1)
    levels = assign_boxes_to_levels(boxes, 2, 5) + 2
    assert levels.tolist() == [4, 3, 3, 2, 5, 4, 2, 5]


def test_pooler_pools_each_box_on_its_level_with_aligned_roi_align() -> None:
    gen = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 3, 64 // 2**i, 64 // 2**i, generator=gen) for i in range(4)]
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 5.0, 250.0, 200.0]]), torch.tensor([[3.0, 4.0, 120.0, 90.0]])]
    pooled = ROIPooler(7, [4, 8, 16, 32], 0)(features, boxes)
    for row, (image, box) in enumerate([(0, boxes[0][0]), (0, boxes[0][1]), (1, boxes[1][0])]):
        size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        level = min(max(math.floor(4 + math.log2(size / 224 + 1e-8)), 2), 5) - 2
        rois = torch.cat([torch.tensor([float(image)]), box])[None]
        expected = roi_align(features[level], rois, 7, 1.0 / 2 ** (level + 2), 0, aligned=True)
        torch.testing.assert_close(pooled[row : row + 1], expected, rtol=0, atol=0)


# ---- masks and semantic maps ----------------------------------------------------------------------


def paste_one_box_reference(mask: torch.Tensor, box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """detectron2's CPU paste, one box at a time, from the formula."""
    x0i = max(math.floor(box[0]) - 1, 0)
    y0i = max(math.floor(box[1]) - 1, 0)
    x1i = min(math.ceil(box[2]) + 1, width)
    y1i = min(math.ceil(box[3]) + 1, height)
    img_x = (torch.arange(x0i, x1i, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
    img_y = (torch.arange(y0i, y1i, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(img_x[None, :], img_y[:, None]), dim=2)[None]
    out = torch.zeros(height, width, dtype=torch.bool)
    out[y0i:y1i, x0i:x1i] = F.grid_sample(mask[None, None], grid, align_corners=False)[0, 0] >= 0.5
    return out


def bilinear_reference(mask: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mask value at each pixel centre in float64 (zero outside the mask grid), thresholded at 0.5."""
    m = mask.shape[0]
    padded = np.pad(mask.astype(np.float64), 1)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    u = (xs - box[0]) / (box[2] - box[0]) * m - 0.5 + 1
    v = (ys - box[1]) / (box[3] - box[1]) * m - 0.5 + 1
    inside = (u > 0) & (u < m + 1) & (v > 0) & (v < m + 1)
    u, v = np.clip(u, 0, m + 1 - 1e-9), np.clip(v, 0, m + 1 - 1e-9)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    u1, v1 = np.minimum(u0 + 1, m + 1), np.minimum(v0 + 1, m + 1)
    value = (padded[v0, u0] * (1 - fu) * (1 - fv) + padded[v0, u1] * fu * (1 - fv)
             + padded[v1, u0] * (1 - fu) * fv + padded[v1, u1] * fu * fv)
    return inside & (value >= 0.5)


def test_paste_masks_equals_per_box_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    height, width = 90, 130
    n = 25
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([width, height]) * 0.9
    boxes = torch.cat([xy, xy + 0.5 + torch.rand(n, 2, generator=gen) * 80], dim=1)
    boxes = torch.minimum(boxes, torch.tensor([width, height, width, height], dtype=torch.float32))
    masks = torch.rand(n, 28, 28, generator=gen)
    masks[0] = 1.0  # a full mask bleeds past its box by up to half a mask cell
    ours = paste_masks_in_image(masks, boxes, (height, width))
    for i in range(n):
        assert torch.equal(ours[i], paste_one_box_reference(masks[i], boxes[i], height, width)), i
        box = boxes[i].double().numpy()
        ref = bilinear_reference(masks[i].numpy(), box, height, width)
        region = np.zeros((height, width), bool)  # where detectron2's CPU paste may write
        region[max(math.floor(box[1]) - 1, 0) : math.ceil(box[3]) + 1, max(math.floor(box[0]) - 1, 0) : math.ceil(box[2]) + 1] = True
        assert (ours[i].numpy() != (ref & region)).sum() <= 2  # float32 vs float64 at the 0.5 boundary
    assert paste_masks_in_image(masks[:0], boxes[:0], (height, width)).shape == (0, height, width)


def test_detector_postprocess_rescales_clips_and_drops_empty() -> None:
    det = Detections(
        pred_boxes=torch.tensor([[10.0, 10.0, 20.0, 30.0], [50.0, 5.0, 70.0, 5.0], [-4.0, 0.0, 100.0, 40.0]]),
        scores=torch.tensor([0.9, 0.8, 0.7]), pred_classes=torch.tensor([1, 2, 3]), image_size=(40, 80),
        pred_masks=torch.ones(3, 1, 28, 28),
    )
    out = detector_postprocess(det, 80, 120)
    assert out.image_size == (80, 120) and out.pred_classes.tolist() == [1, 3]
    torch.testing.assert_close(out.pred_boxes, torch.tensor([[15.0, 20.0, 30.0, 60.0], [0.0, 0.0, 120.0, 80.0]]))
    assert out.pred_masks.shape == (2, 80, 120) and out.pred_masks.dtype == torch.bool
    assert out.pred_masks[0, 20:60, 15:30].all() and not out.pred_masks[0, 70:, :].any()


def test_sem_seg_postprocess_crops_padding_then_resizes() -> None:
    logits = torch.randn(4, 64, 96)
    out = sem_seg_postprocess(logits, (50, 70), 100, 140)
    expected = F.interpolate(logits[None, :, :50, :70], size=(100, 140), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ---- panoptic combine -----------------------------------------------------------------------------


def make_instances(masks: list[np.ndarray], scores: list[float], classes: list[int]) -> Detections:
    m = torch.from_numpy(np.stack(masks))
    return Detections(pred_boxes=torch.zeros(len(masks), 4), scores=torch.tensor(scores),
                      pred_classes=torch.tensor(classes), image_size=m.shape[1:], pred_masks=m)


def test_combine_rules_on_a_hand_built_case() -> None:
    h, w = 10, 10
    a = np.zeros((h, w), bool); a[0:4, 0:4] = True     # 16 px, score 0.9
    b = np.zeros((h, w), bool); b[2:6, 2:6] = True     # 16 px, 4 overlap a (25%): placed on its 12 free px
    c = np.zeros((h, w), bool); c[0:4, 1:5] = True     # 16 px, 12 overlap a (75% > 50%): skipped
    d = np.zeros((h, w), bool)                         # empty: skipped
    e = np.zeros((h, w), bool); e[8:10, 8:10] = True   # score 0.2 < 0.25: the loop stops at it
    f = np.zeros((h, w), bool); f[8:10, 0:2] = True    # 0.6: placed before e (descending score order)
    inst = make_instances([c, a, e, b, d, f], [0.7, 0.9, 0.2, 0.8, 0.65, 0.6], [5, 1, 9, 2, 7, 3])
    semantic = torch.zeros(h, w, dtype=torch.int64)
    semantic[6:10, :] = 2   # 40 px, 4 taken by f -> 36 free
    semantic[:, 9] = 3      # column 9: rows 0..9, 10 px, all free -> below the area limit of 12
    semantic[0:6, 6:9] = 1  # 18 px free
    panoptic, info = combine_semantic_and_instance_outputs(inst, semantic, 0.5, 12, 0.25)
    assert [(s["id"], s["isthing"], s["category_id"]) for s in info] == [
        (1, True, 1), (2, True, 2), (3, True, 3), (4, False, 1), (5, False, 2)
    ]
    assert [s.get("instance_id") for s in info[:3]] == [1, 3, 5]
    assert info[3]["area"] == 18 and info[4]["area"] == 36 - 4
    assert (panoptic == 1).sum() == 16 and (panoptic == 2).sum() == 12 and (panoptic == 3).sum() == 4
    assert panoptic[2, 2] == 1 and panoptic[5, 5] == 2 and panoptic[0, 9] == 0 and panoptic.dtype == torch.int32
    assert panoptic[7, 5] == 5 and panoptic[8, 0] == 3


def test_combine_reference_loop_on_random_cases() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        n, h, w = 12, 40, 50
        centres = torch.randint(0, 40, (n, 2), generator=gen)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        masks = ((yy[None] - centres[:, :1, None]).abs() < 8) & ((xx[None] - centres[:, 1:, None]).abs() < 10)
        masks &= torch.rand(n, h, w, generator=gen) > 0.2
        inst = Detections(torch.zeros(n, 4), torch.rand(n, generator=gen), torch.randint(0, 5, (n,), generator=gen),
                          (h, w), masks)
        semantic = torch.randint(0, 4, (h // 10, w // 10), generator=gen).repeat_interleave(10, 0).repeat_interleave(10, 1)
        ours, info = combine_semantic_and_instance_outputs(inst, semantic, 0.5, 150, 0.3)
        # direct transcription of the rules over full images
        ref = torch.zeros(h, w, dtype=torch.int32)
        ref_info, sid = [], 0
        for i in torch.argsort(-inst.scores).tolist():
            if inst.scores[i] < 0.3:
                break
            m = masks[i]
            if m.sum() == 0 or (m & (ref > 0)).sum() / m.sum() > 0.5:
                continue
            sid += 1
            ref[m & (ref == 0)] = sid
            ref_info.append(("thing", i))
        for label in torch.unique(semantic).tolist():
            m = (semantic == label) & (ref == 0)
            if label == 0 or m.sum() < 150:
                continue
            sid += 1
            ref[m] = sid
            ref_info.append(("stuff", label))
        assert torch.equal(ours, ref)
        assert [("thing", s["instance_id"]) if s["isthing"] else ("stuff", s["category_id"]) for s in info] == ref_info


# ---- preprocessing and layers ---------------------------------------------------------------------


def test_resized_shapes() -> None:
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(640, 480, 800, 1333) == (1067, 800)
    assert resized_shape(1000, 3000, 800, 1333) == (444, 1333)  # long side capped
    assert resized_shape(800, 800, 800, 1333) == (800, 800)
    assert resized_shape(427, 640, 800, 1333) == (800, 1199)


def test_resize_is_pil_bilinear_on_uint8() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    resized, scale = resize_shortest_edge(image, 100, 1333)
    assert resized.shape == (100, 133, 3) and scale == (100 / 60, 133 / 80)
    expected = np.asarray(Image.fromarray(image).resize((133, 100), Image.BILINEAR))
    assert np.array_equal(resized, expected)
    torch_resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(100, 133),
                                  mode="bilinear", align_corners=False)[0].round().permute(1, 2, 0).numpy()
    assert np.abs(torch_resized - resized).max() >= 1  # why the resize must be PIL's
    inputs = prepare_input(image, ModelConfig().input.model_copy(update={"format": "BGR", "min_size_test": 100}))
    assert inputs["height"] == 60 and inputs["width"] == 80 and inputs["image"].dtype == torch.float32
    assert np.array_equal(inputs["image"].numpy().transpose(1, 2, 0), expected[:, :, ::-1].astype(np.float32))
    sizes = {sample_train_short_edge(ModelConfig().input, rng) for _ in range(200)}
    assert sizes <= set(ModelConfig().input.min_size_train) and len(sizes) > 5


def test_frozen_batchnorm_equals_eval_batchnorm() -> None:
    bn = torch.nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.running_mean.normal_(); bn.running_var.uniform_(0.5, 2.0); bn.weight.normal_(); bn.bias.normal_()
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(frozen(x), bn(x))
    torch.testing.assert_close(frozen(x.requires_grad_()), bn(x))


def test_training_mode_forward_points_to_the_trainer() -> None:
    model = build_model(ModelConfig.demo())
    with pytest.raises(RuntimeError, match="u2seg_core.train"):
        model([{"image": torch.zeros(3, 64, 64)}])



def test_demo_preset_forward_with_no_detections_is_well_formed() -> None:
    cfg = ModelConfig.demo()
    cfg = cfg.model_copy(update={"roi_heads": cfg.roi_heads.model_copy(update={"score_thresh_test": 1.0})})
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 50, "width": 75}])[0]
    assert len(out["instances"]) == 0 and out["instances"].pred_masks.shape == (0, 50, 75)
    assert out["sem_seg"].shape == (cfg.sem_seg_head.num_classes, 50, 75)
    panoptic, segments = out["panoptic_seg"]
    assert panoptic.shape == (50, 75) and all(not s["isthing"] for s in segments)


def test_resnet50_equals_torchvision_resnet50_with_mapped_weights() -> None:
    import torchvision

    from u2seg_core.model.backbone import ResNet
    from u2seg_core.model.checkpoint import load_weights, torchvision_resnet_to_detectron2

    reference = torchvision.models.resnet50().eval()  # v1.5: stride in the 3x3 conv = STRIDE_IN_1X1 False
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buffer in reference.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=gen) + 0.5)
    ours = ResNet(ModelConfig().resnet).eval()
    state = {torchvision_resnet_to_detectron2(k): v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    load_weights(ours, state)
    x = torch.randn(1, 3, 96, 128, generator=gen)
    with torch.no_grad():
        features = ours(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for name, layer in zip(("res2", "res3", "res4", "res5"), (reference.layer1, reference.layer2,
                                                                   reference.layer3, reference.layer4)):
            y = layer(y)
            torch.testing.assert_close(features[name], y, rtol=1e-4, atol=1e-4)
    assert features["res5"].shape == (1, 2048, 3, 4)


def test_freeze_at_freezes_stem_and_first_stages_with_frozen_bn() -> None:
    from u2seg_core.model.backbone import ResNet

    resnet = ResNet(ModelConfig.demo().resnet.model_copy(update={"norm": "BN", "freeze_at": 2}))
    assert isinstance(resnet.stem.conv1.norm, FrozenBatchNorm2d) and isinstance(resnet.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(resnet.res3[0].conv1.norm, torch.nn.BatchNorm2d)
    assert not any(p.requires_grad for p in resnet.res2.parameters())
    assert all(p.requires_grad for p in resnet.res3.parameters())
