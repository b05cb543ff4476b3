"""Bit-for-bit parity with detectron2 itself (runs only where detectron2 can be imported).

detectron2's model code is pure Python on torchvision ops, so its source tree (plus fvcore, iopath, omegaconf,
yacs on PYTHONPATH) is enough; U2Seg's vendored copy has the same modeling code. The same random K=300
checkpoint in detectron2's layout goes through detectron2's DefaultPredictor and through ours.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from u2seg_core.model import build_model
from u2seg_core.model.checkpoint import load_checkpoint, load_weights
from u2seg_core.model.preprocess import prepare_input
from shared_paths import MODEL_REFERENCE, REAL_IMAGES_DIR

MERGED = MODEL_REFERENCE / "u2seg_eval_300_merged.yaml"
PHOTO = REAL_IMAGES_DIR / "demo1.jpg"


@pytest.mark.slow
def test_same_outputs_as_detectron2_default_predictor(tmp_path) -> None:
    config = pytest.importorskip("detectron2.config")
    engine = pytest.importorskip("detectron2.engine")
    modeling = pytest.importorskip("detectron2.modeling")
    if not (MERGED.is_file() and PHOTO.is_file()):
        pytest.skip("reference config or photo not available")
    cfg = config.get_cfg()
    cfg.merge_from_file(str(MERGED))
    cfg.INPUT.MIN_SIZE_TEST = 320
    reference = modeling.build_model(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial BN statistics; confident classes so that detections pass 0.25
        for key, value in reference.state_dict().items():
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif key.endswith("running_mean"):
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
            elif "cls_score.weight" in key:
                value.normal_(0, 0.08, generator=gen)
    path = tmp_path / "random_300.pth"
    torch.save({"model": reference.state_dict(), "iteration": 0}, path)
    cfg.MODEL.WEIGHTS = str(path)
    image = Image.open(PHOTO).convert("RGB")
    rgb = np.asarray(image.resize((image.width // 6, image.height // 6), Image.BILINEAR))
    expected = engine.DefaultPredictor(cfg)(np.ascontiguousarray(rgb[:, :, ::-1]))  # it takes BGR

    state, model_cfg = load_checkpoint(path)
    model_cfg = model_cfg.model_copy(update={"input": model_cfg.input.model_copy(update={"min_size_test": 320})})
    model = build_model(model_cfg).eval()
    load_weights(model, state, source=str(path))
    with torch.no_grad():
        ours = model([prepare_input(rgb, model_cfg.input)])[0]

    ref_inst, our_inst = expected["instances"], ours["instances"]
    assert len(our_inst) == len(ref_inst) > 0
    assert torch.equal(our_inst.pred_boxes, ref_inst.pred_boxes.tensor)
    assert torch.equal(our_inst.scores, ref_inst.scores)
    assert torch.equal(our_inst.pred_classes, ref_inst.pred_classes)
    assert torch.equal(our_inst.pred_masks, ref_inst.pred_masks)
    assert torch.equal(ours["sem_seg"], expected["sem_seg"])
    assert torch.equal(ours["panoptic_seg"][0], expected["panoptic_seg"][0])
    assert ours["panoptic_seg"][1] == expected["panoptic_seg"][1]
