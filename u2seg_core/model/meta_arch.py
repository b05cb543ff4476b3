"""U2Seg's detector: Panoptic FPN with Cascade Mask R-CNN heads (detectron2 modeling/meta_arch/panoptic_fpn.py).

Inference (`model.eval(); model(batched_inputs)`), per input dict {"image": (3,h,w) uint8/float tensor,
already resized, channels in `cfg.input.format` order; "height": H, "width": W (output size, default h, w)}:
normalise, pad to 32 with zeros -> backbone + FPN -> semantic head, RPN, cascade ROI heads -> per image
`sem_seg` (S+1,H,W) logits, `sem_seg_labels` (H,W) int64 their argmax (our one key beyond detectron2's, so
callers need not recompute it), `instances` (Detections at H x W, masks (N,H,W) bool) and `panoptic_seg`
((H,W) int32, segments_info) from the semantic argmax and the instances.

Submodules (names = detectron2's, so checkpoints map one to one): `backbone` (FPN with `bottom_up` ResNet),
`proposal_generator` (RPN), `roi_heads` (CascadeROIHeads), `sem_seg_head` (SemSegFPNHead). Training is
not this module's job: `u2seg_core.train.training_losses(model, batched_inputs)` composes these parts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ResNet
from .cascade import ROI_LEVELS, CascadeROIHeads
from .config import ModelConfig
from .fpn import FPN
from .panoptic import combine_semantic_and_instance_outputs
from .postprocess import detector_postprocess, sem_seg_postprocess
from .rpn import RPN, RPN_LEVELS
from .semantic_head import SemSegFPNHead
from .structures import ImageBatch


class PanopticCascadeRCNN(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = FPN(ResNet(cfg.resnet), cfg.fpn)
        channels, strides = self.backbone.out_channels, self.backbone.out_strides
        self.proposal_generator = RPN(cfg.rpn, cfg.anchors, channels, [strides[f] for f in RPN_LEVELS])
        self.roi_heads = CascadeROIHeads(cfg, channels, [strides[f] for f in ROI_LEVELS])
        self.sem_seg_head = SemSegFPNHead(cfg.sem_seg_head, channels, strides)
        self.register_buffer("pixel_mean", torch.tensor(cfg.input.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.input.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageBatch:
        """Normalise each (3,h,w) image, zero-pad all to a common multiple of 32: ImageBatch (N,3,Hp,Wp)."""
        if not batched_inputs:
            raise ValueError("batched_inputs is empty")
        for x in batched_inputs:
            if x["image"].ndim != 3 or x["image"].shape[0] != 3:
                raise ValueError(f"each 'image' must be a (3, h, w) tensor, got shape {tuple(x['image'].shape)}")
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        stride = self.backbone.size_divisibility
        pad_h = -(-max(h for h, _ in sizes) // stride) * stride
        pad_w = -(-max(w for _, w in sizes) // stride) * stride
        if len(images) == 1:
            h, w = sizes[0]
            batch = F.pad(images[0], [0, pad_w - w, 0, pad_h - h], value=0.0).unsqueeze(0)
        else:
            batch = images[0].new_zeros((len(images), images[0].shape[0], pad_h, pad_w))
            for i, im in enumerate(images):
                batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return ImageBatch(batch.contiguous(), sizes)

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Inference outputs, one dict per input (see the module docstring)."""
        if self.training:
            raise RuntimeError(
                "PanopticCascadeRCNN.forward is inference only; call model.eval() first, or train with "
                "u2seg_core.train.training_losses(model, batched_inputs)"
            )
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg = self.sem_seg_head(features)
        proposals = self.proposal_generator(features, images.image_sizes)
        detections = self.roi_heads(features, proposals, images.image_sizes)
        results = []
        for sem, det, inputs, size in zip(sem_seg, detections, batched_inputs, images.image_sizes):
            height = int(inputs.get("height", size[0]))
            width = int(inputs.get("width", size[1]))
            sem_r = sem_seg_postprocess(sem, size, height, width)
            sem_labels = sem_r.argmax(dim=0)
            det_r = detector_postprocess(det, height, width)
            combine = self.cfg.combine
            panoptic = combine_semantic_and_instance_outputs(
                det_r, sem_labels, combine.overlap_thresh, combine.stuff_area_limit,
                combine.instances_confidence_thresh,
            )
            results.append(
                {"sem_seg": sem_r, "sem_seg_labels": sem_labels, "instances": det_r, "panoptic_seg": panoptic}
            )
        return results


def build_model(cfg: ModelConfig) -> PanopticCascadeRCNN:
    """A randomly initialised model (load weights with `u2seg_core.model.checkpoint.load_weights`)."""
    return PanopticCascadeRCNN(cfg)
