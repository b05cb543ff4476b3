"""ModelConfig presets equal U2Seg's merged K=300 eval config, field by field."""

from __future__ import annotations


import pytest
import yaml

from u2seg_core.model import ModelConfig
from shared_paths import MODEL_REFERENCE

MERGED = MODEL_REFERENCE / "u2seg_eval_300_merged.yaml"
SECTIONS = {  # our section -> detectron2 config node
    "resnet": "MODEL.RESNETS", "fpn": "MODEL.FPN", "anchors": "MODEL.ANCHOR_GENERATOR", "rpn": "MODEL.RPN",
    "roi_heads": "MODEL.ROI_HEADS", "box_head": "MODEL.ROI_BOX_HEAD", "cascade": "MODEL.ROI_BOX_CASCADE_HEAD",
    "mask_head": "MODEL.ROI_MASK_HEAD", "sem_seg_head": "MODEL.SEM_SEG_HEAD",
    "combine": "MODEL.PANOPTIC_FPN.COMBINE", "input": "INPUT",
}
RENAMED = {  # fields whose key lives elsewhere in detectron2's config
    ("resnet", "freeze_at"): "MODEL.BACKBONE.FREEZE_AT",
    ("rpn", "min_box_size"): "MODEL.PROPOSAL_GENERATOR.MIN_SIZE",
    ("roi_heads", "detections_per_image"): "TEST.DETECTIONS_PER_IMAGE",
    ("input", "pixel_mean"): "MODEL.PIXEL_MEAN",
    ("input", "pixel_std"): "MODEL.PIXEL_STD",
}


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def as_lists(value):
    return [as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_u2seg_eval_300_preset_equals_the_merged_yaml() -> None:
    if not MERGED.is_file():
        pytest.skip(f"{MERGED} not available")
    merged = yaml.safe_load(MERGED.read_text())
    cfg = ModelConfig.u2seg_eval_300().model_dump()
    compared = 0
    for section, fields in cfg.items():
        for field, value in fields.items():
            key = RENAMED.get((section, field), f"{SECTIONS[section]}.{field.upper()}")
            assert as_lists(value) == as_lists(lookup(merged, key)), key
            compared += 1
    assert compared > 70
    assert lookup(merged, "MODEL.ROI_HEADS.NAME") == "CascadeROIHeads"
    assert lookup(merged, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG") is True
    assert lookup(merged, "MODEL.ROI_BOX_HEAD.POOLER_TYPE") == lookup(merged, "MODEL.ROI_MASK_HEAD.POOLER_TYPE") == "ROIAlignV2"


def test_800_preset_and_class_counts() -> None:
    cfg = ModelConfig.u2seg_eval_800()
    assert (cfg.num_things, cfg.num_stuff) == (800, 27)
    assert cfg.model_copy(update={"roi_heads": ModelConfig().roi_heads}) == ModelConfig()
    demo = ModelConfig.demo(num_things=5, num_stuff=3)
    assert (demo.num_things, demo.num_stuff, demo.resnet.depth) == (5, 3, 18)
    with pytest.raises(ValueError, match="res2_out_channels"):
        ModelConfig(resnet={"depth": 18})
