"""Typed configuration of the Panoptic-FPN Cascade Mask R-CNN (detectron2's `MODEL.*` / `INPUT.*` keys).

Field names are detectron2's config keys in snake case, grouped like detectron2's config nodes
(`MODEL.RPN.NMS_THRESH` -> `ModelConfig.rpn.nms_thresh`). Defaults are U2Seg's K=300 evaluation config
merged down its `_BASE_` chain (configs/COCO-PanopticSegmentation/u2seg_eval_300.yaml <- Base-Panoptic-FPN.yaml
<- Base-RCNN-FPN.yaml <- detectron2 defaults), with SyncBN read as BN (identical at evaluation) and the
0.25 score thresholds of the article's notebook. Presets: `ModelConfig.u2seg_eval_300()`,
`ModelConfig.u2seg_eval_800()` and the small CPU-trainable `ModelConfig.demo()`.

Training-only fields (matcher IoUs, sampling, loss weights) are carried here so that `u2seg_core.train`
reads them from the same place; inference never uses them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from u2seg_core.config import StrictModel

NormName = Literal["", "BN", "SyncBN", "FrozenBN", "GN"]


class ResNetConfig(StrictModel):
    """`MODEL.RESNETS` + `MODEL.BACKBONE.FREEZE_AT`."""

    depth: Literal[18, 34, 50, 101, 152] = 50
    norm: NormName = Field("BN", description="FrozenBN for fine-tuning released weights; BN/SyncBN/GN to train")
    stem_out_channels: int = Field(64, ge=1)
    res2_out_channels: int = Field(256, ge=1, description="64 for depth 18/34")
    stride_in_1x1: bool = False
    res5_dilation: Literal[1, 2] = 1
    num_groups: int = Field(1, ge=1)
    width_per_group: int = Field(64, ge=1)
    freeze_at: int = Field(0, ge=0, le=5, description="1 = stem frozen, 2 = stem + res2, ...")

    @model_validator(mode="after")
    def _check(self) -> "ResNetConfig":
        if self.depth in (18, 34) and (self.res5_dilation != 1 or self.num_groups != 1):
            raise ValueError("ResNet-18/34 (BasicBlock) needs res5_dilation=1 and num_groups=1")
        return self


class FPNConfig(StrictModel):
    """`MODEL.FPN` (inputs res2..res5, outputs p2..p6 with LastLevelMaxPool)."""

    out_channels: int = Field(256, ge=1)
    norm: NormName = "BN"
    fuse_type: Literal["sum", "avg"] = "sum"


class AnchorConfig(StrictModel):
    """`MODEL.ANCHOR_GENERATOR` (DefaultAnchorGenerator): one entry per level, or one for all levels."""

    sizes: tuple[tuple[float, ...], ...] = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),)
    offset: float = Field(0.0, ge=0.0, lt=1.0)


class RPNConfig(StrictModel):
    """`MODEL.RPN` + `MODEL.PROPOSAL_GENERATOR.MIN_SIZE` (StandardRPNHead on p2..p6)."""

    conv_dims: tuple[int, ...] = (-1,)
    nms_thresh: float = 0.65
    pre_nms_topk_train: int = Field(2000, ge=1, description="per level")
    pre_nms_topk_test: int = Field(1000, ge=1, description="per level")
    post_nms_topk_train: int = Field(4000, ge=1, description="per image, over all levels")
    post_nms_topk_test: int = Field(1000, ge=1, description="per image, over all levels")
    min_box_size: float = 0.0
    bbox_reg_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    # training only
    iou_thresholds: tuple[float, ...] = (0.3, 0.7)
    iou_labels: tuple[int, ...] = (0, -1, 1)
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    boundary_thresh: float = -1.0
    smooth_l1_beta: float = 0.0
    loss_weight: float = 1.0
    bbox_reg_loss_weight: float = 1.0


class ROIHeadsConfig(StrictModel):
    """`MODEL.ROI_HEADS` + `TEST.DETECTIONS_PER_IMAGE` (CascadeROIHeads on p2..p5)."""

    num_classes: int = Field(300, ge=1, description="K thing clusters")
    score_thresh_test: float = 0.25
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100
    # training only
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    proposal_append_gt: bool = True


class BoxHeadConfig(StrictModel):
    """`MODEL.ROI_BOX_HEAD` (FastRCNNConvFCHead, ROIAlignV2 pooler, class-agnostic regression)."""

    num_conv: int = Field(0, ge=0)
    conv_dim: int = Field(256, ge=1)
    num_fc: int = Field(2, ge=0)
    fc_dim: int = Field(1024, ge=1)
    norm: NormName = ""
    pooler_resolution: int = Field(7, ge=1)
    pooler_sampling_ratio: int = Field(0, ge=0)
    # training only
    smooth_l1_beta: float = 0.0
    bbox_reg_loss_weight: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> "BoxHeadConfig":
        if self.num_conv + self.num_fc == 0:
            raise ValueError("box_head needs at least one conv or fc layer")
        return self


class CascadeConfig(StrictModel):
    """`MODEL.ROI_BOX_CASCADE_HEAD`: one IoU and one set of box-regression weights per stage."""

    ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    bbox_reg_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    )

    @model_validator(mode="after")
    def _check(self) -> "CascadeConfig":
        if len(self.ious) != len(self.bbox_reg_weights) or not self.ious:
            raise ValueError("cascade.ious and cascade.bbox_reg_weights need one entry per stage")
        return self

    @property
    def num_stages(self) -> int:
        return len(self.ious)


class MaskHeadConfig(StrictModel):
    """`MODEL.ROI_MASK_HEAD` (MaskRCNNConvUpsampleHead, ROIAlignV2 pooler)."""

    num_conv: int = Field(4, ge=0)
    conv_dim: int = Field(256, ge=1)
    norm: NormName = ""
    pooler_resolution: int = Field(14, ge=1)
    pooler_sampling_ratio: int = Field(0, ge=0)
    cls_agnostic_mask: bool = False


class SemSegHeadConfig(StrictModel):
    """`MODEL.SEM_SEG_HEAD` (SemSegFPNHead on p2..p5): class 0 = all things, 1..S = stuff."""

    num_classes: int = Field(28, ge=2, description="S + 1")
    convs_dim: int = Field(128, ge=1)
    common_stride: int = Field(4, ge=1)
    norm: NormName = "GN"
    # training only
    ignore_value: int = 255
    loss_weight: float = 0.5


class CombineConfig(StrictModel):
    """`MODEL.PANOPTIC_FPN.COMBINE`."""

    overlap_thresh: float = 0.5
    stuff_area_limit: int = 4096
    instances_confidence_thresh: float = 0.25


class InputConfig(StrictModel):
    """`INPUT.*` + `MODEL.PIXEL_MEAN/STD`: channel order, resize, normalisation (pixels in 0..255)."""

    format: Literal["RGB", "BGR"] = "RGB"
    min_size_test: int = Field(800, ge=0, description="0 = no resize")
    max_size_test: int = Field(1333, ge=1)
    min_size_train: tuple[int, ...] = (240, 320, 480, 640, 672, 704, 736, 768, 800, 1024)
    min_size_train_sampling: Literal["choice", "range"] = "choice"
    max_size_train: int = Field(1333, ge=1)
    random_flip: Literal["horizontal", "vertical", "none"] = "horizontal"
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)


class ModelConfig(StrictModel):
    """The whole model. `num_things` (K) and `num_stuff` (S) are usually read from a checkpoint."""

    resnet: ResNetConfig = ResNetConfig()
    fpn: FPNConfig = FPNConfig()
    anchors: AnchorConfig = AnchorConfig()
    rpn: RPNConfig = RPNConfig()
    roi_heads: ROIHeadsConfig = ROIHeadsConfig()
    box_head: BoxHeadConfig = BoxHeadConfig()
    cascade: CascadeConfig = CascadeConfig()
    mask_head: MaskHeadConfig = MaskHeadConfig()
    sem_seg_head: SemSegHeadConfig = SemSegHeadConfig()
    combine: CombineConfig = CombineConfig()
    input: InputConfig = InputConfig()

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        for name, values in (("sizes", self.anchors.sizes), ("aspect_ratios", self.anchors.aspect_ratios)):
            if len(values) not in (1, 5):
                raise ValueError(f"anchors.{name} needs 1 entry or one per RPN level (p2..p6, 5)")
        n_anchors = {
            len(s) * len(a) for s in self.anchors.sizes for a in self.anchors.aspect_ratios
        }
        if len(n_anchors) != 1:
            raise ValueError("every RPN level needs the same number of anchors per position")
        if self.resnet.depth in (18, 34) and self.resnet.res2_out_channels != 64:
            raise ValueError("ResNet-18/34 needs resnet.res2_out_channels=64")
        return self

    @property
    def num_things(self) -> int:
        return self.roi_heads.num_classes

    @property
    def num_stuff(self) -> int:
        return self.sem_seg_head.num_classes - 1

    def with_classes(self, num_things: int, num_stuff: int) -> "ModelConfig":
        """Same model with K thing classes and S stuff classes (semantic head predicts S + 1)."""
        return self.model_copy(
            update={
                "roi_heads": self.roi_heads.model_copy(update={"num_classes": num_things}),
                "sem_seg_head": self.sem_seg_head.model_copy(update={"num_classes": num_stuff + 1}),
            }
        )

    @classmethod
    def u2seg_eval_300(cls) -> "ModelConfig":
        """U2Seg's u2seg_eval_300.yaml (K=300 things, 27 stuff)."""
        return cls()

    @classmethod
    def u2seg_eval_800(cls) -> "ModelConfig":
        """U2Seg's u2seg_eval_800.yaml: as K=300 but 800 thing clusters."""
        return cls().with_classes(800, 27)

    @classmethod
    def demo(cls, num_things: int = 12, num_stuff: int = 8) -> "ModelConfig":
        """Small model (ResNet-18, 64-channel FPN, GroupNorm) that trains on 2 CPU cores in minutes."""
        return cls(
            resnet=ResNetConfig(depth=18, norm="GN", res2_out_channels=64),
            fpn=FPNConfig(out_channels=64, norm="GN"),
            anchors=AnchorConfig(sizes=((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))),
            rpn=RPNConfig(
                pre_nms_topk_train=500, pre_nms_topk_test=300, post_nms_topk_train=500, post_nms_topk_test=300
            ),
            roi_heads=ROIHeadsConfig(num_classes=num_things, batch_size_per_image=128, detections_per_image=50),
            box_head=BoxHeadConfig(fc_dim=256),
            mask_head=MaskHeadConfig(num_conv=2, conv_dim=64),
            sem_seg_head=SemSegHeadConfig(num_classes=num_stuff + 1, convs_dim=32, norm="GN"),
            combine=CombineConfig(stuff_area_limit=256),
            input=InputConfig(
                min_size_test=256, max_size_test=512, min_size_train=(192, 224, 256, 288), max_size_train=512
            ),
        )
