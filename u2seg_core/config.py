"""Typed configuration: the one source of defaults for every stage.

Field defaults are the reference settings (CutLER / STEGO / U2Seg, see docs/architecture.md).
`PipelineConfig.demo()` is the small, offline preset used by `u2seg run` on the built-in
synthetic dataset and by the tests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BackboneArch = Literal[
    "vit_small_patch16", "vit_small_patch8", "vit_base_patch16", "vit_base_patch8", "pixel"
]


class StrictModel(BaseModel):
    """Base for all configs: unknown keys are an error, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of the config (part of every cache key)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SynthConfig(StrictModel):
    """Built-in synthetic dataset (`u2seg synth`)."""

    n: int = Field(24, ge=1, description="number of images")
    size: int = Field(256, ge=32, le=4096, description="image side in pixels")
    seed: int = 0


class SourceConfig(StrictModel):
    """Where the images come from and how they are cut into shards."""

    uri: str | None = Field(
        None, description="folder, ImageNet train tree, COCO JSON or s3:// URL; None = synthetic"
    )
    kind: Literal["auto", "folder", "imagenet", "coco"] = "auto"
    image_root: str | None = Field(None, description="image folder for a COCO JSON source")
    shard_size: int = Field(1000, ge=1, description="images per shard")
    limit: int | None = Field(None, ge=1, description="use only the first N images (sorted)")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    max_pixels: int = Field(
        250_000_000, ge=1, description="larger images are recorded as decode failures (replaces PIL's bomb guard)"
    )
    synthetic: SynthConfig = SynthConfig()


class BackboneConfig(StrictModel):
    """A DINO ViT (timm) or the training-free `pixel` featurizer."""

    arch: BackboneArch = "vit_base_patch8"
    weights: str | None = Field(None, description="explicit checkpoint path (dino_*_pretrain.pth)")
    random_init: bool = Field(False, description="random weights (tests and benchmarks only)")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = Field(True, description="bf16/fp16 autocast on GPU")
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(2, ge=0, description="decoding worker processes (spawn)")


class FeaturesConfig(StrictModel):
    """Features stage: stored patch tokens and pooled global features for STEGO."""

    backbone: BackboneConfig = BackboneConfig()
    resolution: int = Field(448, ge=16, description="square input side; multiple of the patch")


class CRFConfig(StrictModel):
    """Dense CRF constants (defaults: CutLER's maskcut/crf.py)."""

    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 7.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0


class MaskCutConfig(StrictModel):
    """MaskCut (CutLER) constants and the fast-path switches."""

    backbone: BackboneConfig = BackboneConfig(batch_size=8)
    resolution: int = Field(480, ge=16, description="square input side (aspect ratio not kept)")
    tau: float = 0.15
    eps: float = 1e-5
    n_masks: int = Field(3, ge=1, le=99, description="maximum masks per image (annotation id = image_id * 100 + round)")
    solver: Literal["dense", "fast"] = "fast"
    crf: Literal["auto", "torch", "pydensecrf", "none"] = Field(
        "auto", description="auto = torch mean-field on CUDA, pydensecrf on CPU (both validated equal)"
    )
    crf_params: CRFConfig = CRFConfig()
    min_crf_iou: float = Field(0.5, description="drop a mask if IoU(before CRF, after CRF) < this")
    embedding: Literal["cls_crop", "pooled"] = "cls_crop"
    embedding_resolution: int = Field(480, description="Resize(short side) + CenterCrop for cls_crop")


class ClusterConfig(StrictModel):
    """Global K-means over all mask embeddings."""

    k: int = Field(300, ge=1)
    metric: Literal["l2", "cosine"] = "l2"
    niter: int = Field(100, ge=1)
    seed: int = 0
    max_points_per_centroid: int = Field(256, ge=1)
    use_gpu: Literal["auto", "never", "always"] = "auto"


class StegoLossConfig(StrictModel):
    """Correspondence-loss weights and shifts (default: STEGO 'Cocostuff27 10/3 vit_base')."""

    feature_samples: int = 11
    neg_samples: int = 5
    pos_intra_weight: float = 0.1
    pos_inter_weight: float = 1.0
    neg_inter_weight: float = 0.1538
    pos_intra_shift: float = 0.12
    pos_inter_shift: float = 0.2
    neg_inter_shift: float = 1.0
    pointwise: bool = True
    zero_clamp: bool = True
    stabilize: bool = False


# Shifts for the `pixel` featurizer, chosen as STEGO's author advises (issue #23) from its cosine
# statistics on the synthetic set (same-class pairs: median 0.92, 25th pct 0.73; different-class pairs:
# median 0.26, 75th pct 0.56); weights of STEGO's active default block ("IAROA vit small").
PIXEL_STEGO_LOSS = StegoLossConfig(
    pos_intra_weight=0.67, pos_inter_weight=0.25, neg_inter_weight=0.63,
    pos_intra_shift=0.7, pos_inter_shift=0.7, neg_inter_shift=0.8,
)


class StegoConfig(StrictModel):
    """STEGO head training, cluster probe and semantic inference."""

    dim: int = Field(70, ge=1)
    n_classes: int = Field(27, ge=2, le=255, description="cluster-probe classes (maps are uint8)")
    dropout: float = 0.1
    loss: StegoLossConfig = StegoLossConfig()
    knn: int = Field(7, ge=1, description="positives drawn from the top-k cosine neighbours")
    steps: int = Field(5000, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = 5e-4
    probe_lr: float = 5e-3
    crop: Literal["five", "none"] = "five"
    train_grid: int = Field(28, ge=2, description="token grid side the head trains on (STEGO: 224 / 8)")
    checkpoint_every: int = Field(400, ge=1)
    pretrained: str | None = Field(None, description="released STEGO .ckpt to load instead of training")
    probe: Literal["cluster", "linear"] = Field(
        "cluster",
        description="'linear' = the released checkpoint's supervised linear probe (U2Seg's setup); needs `pretrained`",
    )
    inference_resolution: int = Field(448, ge=16)
    crf: bool = True
    crf_params: CRFConfig = CRFConfig(
        iterations=10, gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0, bilateral_srgb=3.0,
        bilateral_compat=4.0,
    )
    device: str = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _check_probe(self) -> "StegoConfig":
        if self.probe == "linear" and self.pretrained is None:
            raise ValueError("stego.probe='linear' needs stego.pretrained (a released STEGO .ckpt with a linear probe)")
        return self


class MergeConfig(StrictModel):
    """Things painted over stuff (U2Seg's generate_pseudo_panoptic rule, with its fixes)."""

    stuff_overlap_max: float = Field(0.7, description="skip a stuff class covered more than this")
    min_segment_area: int = Field(1, ge=1)


class EvaluateConfig(StrictModel):
    """Evaluation of pseudo-labels or predictions against ground truth."""

    ground_truth: str | None = Field(
        None,
        description="dataset folder in the synthetic layout (annotations/panoptic.json, panoptic/, "
        "semantic/, annotations/instances.json); None = the run's synthetic dataset, if any",
    )
    matching: Literal["hungarian", "majority"] = "hungarian"
    majority_score_min: float = 0.6
    majority_box_iou: float = 0.7
    majority_semantic_iou: float = 0.15
    overlays: int = Field(6, ge=0, description="overlay PNGs written for the first N images")


class OrchestrationConfig(StrictModel):
    """How stage tasks are executed."""

    runner: Literal["threads", "dask"] = "threads"
    max_workers: int = Field(2, ge=1)
    dask_address: str | None = None
    dask_spec: str | None = Field(None, description="deploy/ spec name: local-cpu, local-cuda, slurm")
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = 2.0
    max_failure_rate: float = Field(0.5, ge=0.0, le=1.0, description="shard fails above this")
    max_shards_per_flow: int = Field(
        2000, ge=1, description="more shards (= task runs in one stage flow run) is an error: raise shard_size"
    )
    concurrency_tags: bool = Field(
        False,
        description="tag task runs with their stage (and 'gpu' for GPU stages) so Prefect tag concurrency limits "
        "apply across flow runs; costs two API calls per task run",
    )


class PipelineConfig(StrictModel):
    """Everything a run needs."""

    source: SourceConfig = SourceConfig()
    features: FeaturesConfig = FeaturesConfig()
    maskcut: MaskCutConfig = MaskCutConfig()
    cluster: ClusterConfig = ClusterConfig()
    stego: StegoConfig = StegoConfig()
    merge: MergeConfig = MergeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _check(self) -> "PipelineConfig":
        for name, bb, res in (
            ("features", self.features.backbone, self.features.resolution),
            ("maskcut", self.maskcut.backbone, self.maskcut.resolution),
        ):
            patch = patch_size(bb.arch)
            if res % patch:
                raise ValueError(f"{name}.resolution={res} must be a multiple of the patch size {patch}")
        return self

    @classmethod
    def demo(cls, **overrides: Any) -> "PipelineConfig":
        """Offline preset: synthetic images, `pixel` features, small K and step counts."""
        pixel = BackboneConfig(arch="pixel", batch_size=8, num_workers=0)
        base = cls(
            source=SourceConfig(shard_size=8, synthetic=SynthConfig(n=24, size=256, seed=0)),
            features=FeaturesConfig(backbone=pixel, resolution=224),
            maskcut=MaskCutConfig(backbone=pixel, resolution=240, n_masks=4, embedding="pooled"),
            cluster=ClusterConfig(k=12, niter=50),
            # probe_lr: 10x STEGO's, so the centroids converge within 300 steps instead of 5000
            stego=StegoConfig(
                dim=32, n_classes=8, steps=300, batch_size=8, probe_lr=5e-2, inference_resolution=224,
                loss=PIXEL_STEGO_LOSS,
            ),
        )
        return base.model_copy(update=overrides) if overrides else base

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        """Read a YAML or JSON config file."""
        import yaml

        text = Path(path).read_text()
        data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
        return cls.model_validate(data or {})


def patch_size(arch: BackboneArch) -> int:
    """Token grid stride of a backbone (the `pixel` featurizer uses 8-pixel cells)."""
    return 16 if arch.endswith("16") else 8
