"""Semantic maps from images: backbone tokens -> head (flip-averaged) -> probe -> optional CRF -> argmax."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbone import Backbone
from ..config import CRFConfig
from .checkpoint import SemanticHead
from .crf import dense_crf, dense_crf_torch

TOKENS = frozenset({"tokens"})


class SemanticSegmenter:
    """Batched STEGO inference on square (B, 3, S, S) uint8 images at the inference resolution."""

    def __init__(
        self,
        backbone: Backbone,
        model: SemanticHead,
        probe: Literal["cluster", "linear"] = "cluster",
        crf: CRFConfig | None = None,
        crf_backend: Literal["auto", "torch", "pydensecrf"] = "auto",
    ):
        """crf None = no CRF; crf_backend 'auto' = batched torch CRF on CUDA, pydensecrf per image on the CPU."""
        if model.head.in_dim != backbone.embed_dim:
            raise ValueError(
                f"the STEGO head expects {model.head.in_dim}-dim features but backbone {backbone.arch} gives "
                f"{backbone.embed_dim}; use the backbone the head was trained with (features.backbone)"
            )
        if probe == "linear" and model.linear_probe is None:
            raise ValueError("probe='linear' needs a head with a linear probe (a released STEGO checkpoint)")
        self.backbone = backbone
        self.model = model.to(backbone.device)
        self.probe = probe
        self.crf = crf
        if crf_backend == "auto":
            crf_backend = "torch" if backbone.device.type == "cuda" else "pydensecrf"
        self.crf_backend = crf_backend

    @torch.no_grad()
    def codes(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 -> (B, dim, S/p, S/p) codes averaged over the image and its mirror (STEGO TTA)."""
        both = torch.cat([pixels, pixels.flip(-1)])
        tokens = self.backbone(both, outputs=TOKENS).tokens.float()
        codes = self.model.head(tokens)
        batch = pixels.shape[0]
        return (codes[:batch] + codes[batch:].flip(-1)) / 2

    @torch.no_grad()
    def log_probs(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 -> (B, K, S, S) class log-probabilities (codes upsampled bilinearly first)."""
        codes = F.interpolate(self.codes(pixels), size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        if self.probe == "linear":
            return self.model.linear_probe.log_probs(codes)
        return self.model.cluster_probe.log_probs(codes)

    def predict(self, pixels: Tensor) -> np.ndarray:
        """(B, 3, S, S) uint8 -> (B, S, S) uint8 class maps (CRF-refined when configured)."""
        log_probs = self.log_probs(pixels)
        if self.crf is None:
            return log_probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
        if self.crf_backend == "torch":
            return dense_crf_torch(pixels, log_probs, self.crf).argmax(dim=1).to(torch.uint8).cpu().numpy()
        images = pixels.permute(0, 2, 3, 1).cpu().numpy()
        scores = log_probs.cpu().numpy()
        return np.stack(
            [dense_crf(image, score, self.crf).argmax(axis=0).astype(np.uint8) for image, score in zip(images, scores)]
        )
