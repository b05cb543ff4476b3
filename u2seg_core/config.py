"""Typed configuration: the one source of defaults for every stage.

Field defaults are the reference settings (CutLER / STEGO / U2Seg, see docs/architecture.md).
`PipelineConfig.demo()` is the small, offline preset used by `u2seg run` on the built-in
synthetic dataset and by the tests.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


# After StrictModel on purpose: model/config.py builds on it (and imports no torch).
from .model.config import ModelConfig, ResNetConfig  # noqa: E402


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
    max_pixels: int = Field(
        250_000_000, ge=1, description="larger images are recorded as decode failures (replaces PIL's bomb guard)"
    )
    synthetic: SynthConfig = SynthConfig()


_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|private|access_key|^key$", re.IGNORECASE)


def _secret_keys(options: Any, prefix: str = "") -> list[str]:
    if not isinstance(options, dict):
        return []
    found = []
    for name, value in options.items():
        path = f"{prefix}{name}"
        found += [path] if _SECRET_KEY.search(str(name)) else _secret_keys(value, path + ".")
    return found


class StorageConfig(StrictModel):
    """How every process of a run (workers, later `u2seg stage` calls) reaches s3:// URLs.

    Part of `run.json`, so it never holds credentials: they come from the environment (AWS_ACCESS_KEY_ID ...)
    or a named profile of the AWS credentials file (`profile`); only the profile and endpoint names are recorded.
    Not part of any cache key (where the bytes come from does not change them).
    """

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000")
    profile: str | None = Field(None, description="profile of ~/.aws/credentials (or AWS_SHARED_CREDENTIALS_FILE)")
    region: str | None = None
    anon: bool = Field(False, description="unsigned requests (public buckets)")
    options: dict[str, Any] = Field(default_factory=dict, description="more s3fs options (no secrets)")

    @model_validator(mode="after")
    def _no_secrets(self) -> "StorageConfig":
        if found := _secret_keys(self.options):
            raise ValueError(
                f"storage.options.{found[0]} looks like a credential, which would be written to run.json: set it "
                "in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or in a credentials-file profile "
                "named by storage.profile"
            )
        return self

    def fsspec_options(self) -> dict[str, dict[str, Any]]:
        """protocol -> fsspec options (what `u2seg_core.storage.configure` takes)."""
        s3: dict[str, Any] = dict(self.options)
        client = dict(s3.pop("client_kwargs", {}))
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        if client:
            s3["client_kwargs"] = client
        if self.profile:
            s3["profile"] = self.profile
        if self.anon:
            s3["anon"] = True
        return {"s3": s3} if s3 else {}


class BackboneConfig(StrictModel):
    """A DINO ViT (timm) or the training-free `pixel` featurizer."""

    arch: BackboneArch = "vit_base_patch8"
    weights: str | None = Field(None, description="explicit checkpoint path (dino_*_pretrain.pth)")
    random_init: bool = Field(False, description="random weights (tests and benchmarks only)")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = Field(True, description="bf16/fp16 autocast on GPU")
    keys_precision: Literal["amp", "fp32_last_block", "fp32"] = Field(
        "amp",
        description="MaskCut keys: 'amp' = as the forward runs; 'fp32_last_block' = the last block's norm + key "
        "projection in float32 (bf16 does not round the keys themselves); 'fp32' = the whole key pass in float32",
    )
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(2, ge=0, description="decoding worker processes (spawn)")


class FeaturesConfig(StrictModel):
    """Features stage: stored patch tokens and pooled global features for STEGO."""

    backbone: BackboneConfig = BackboneConfig()
    resolution: int = Field(448, ge=16, description="square input side; multiple of the patch")
    stego_sample: int = Field(
        20_000, ge=2,
        description="STEGO trains on a seeded sample of about this many images (all when the dataset is smaller); "
        "their full token grids are stored (features/sample.py), pooled features for every image",
    )
    sample_seed: int = Field(0, description="seed of the per-image sample hash")


class CRFConfig(StrictModel):
    """Dense CRF constants (defaults: CutLER's maskcut/crf.py)."""

    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 7.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0


class KrylovConfig(StrictModel):
    """Stopping rules of MaskCut's fast eigensolver (maskcut/solvers.py `solve_fast`).

    block: vectors added to the Krylov basis per step (one batched matmul with the edges each).
    max_dim: largest basis (columns) before giving up on an image (it then goes to `dense`).
    residual_tol: accept when ||M u - theta u|| <= residual_tol ...
    angle_tol: ... and ||M u - theta u|| / (theta_1 - theta_2) <= angle_tol (Davis-Kahan bound on
        the eigenvector error).
    first_check, check_every: the Rayleigh-Ritz convergence test (two device syncs) runs at step
        `first_check` and every `check_every` steps after (a test every step costs a sync each; the
        images seen converge after 6-9 steps, so a test every 2 costs at most one extra step).
    seed: start block seed (fixed: reruns are identical).
    """

    block: int = Field(4, ge=1)
    max_dim: int = Field(320, ge=2)
    residual_tol: float = Field(1e-9, gt=0)
    angle_tol: float = Field(1e-7, gt=0)
    first_check: int = Field(4, ge=1)
    check_every: int = Field(2, ge=1)
    seed: int = 0


class MaskCutConfig(StrictModel):
    """MaskCut (CutLER) constants and the fast-path switches."""

    backbone: BackboneConfig = BackboneConfig(batch_size=8)
    resolution: int = Field(480, ge=16, description="square input side (aspect ratio not kept)")
    tau: float = 0.15
    eps: float = 1e-5
    n_masks: int = Field(3, ge=1, le=99, description="maximum masks per image (annotation id = image_id * 100 + round)")
    solver: Literal["dense", "fast"] = "fast"
    krylov: KrylovConfig = Field(KrylovConfig(), description="stopping rules of the fast solver")
    min_area_fraction: float = Field(0.01, ge=0.0, lt=1.0, description="drop a later mask covering <= this (CutLER)")
    max_previous_iou: float = Field(0.5, ge=0.0, le=1.0, description="drop a later mask with IoU > this (CutLER)")
    crf: Literal["auto", "torch", "pydensecrf", "none"] = Field(
        "auto", description="auto = torch mean-field on CUDA, pydensecrf on CPU (both validated equal)"
    )
    crf_params: CRFConfig = CRFConfig()
    min_crf_iou: float = Field(0.5, description="drop a mask if IoU(before CRF, after CRF) < this")
    embedding: Literal["cls_crop", "pooled"] = "cls_crop"
    embedding_resolution: int = Field(480, description="Resize(short side) + CenterCrop for cls_crop")
    embedding_crops: Literal["batched", "per_crop"] = Field(
        "batched",
        description="cls_crop crops: 'batched' = all masks of a batch cut and resized at once on the device "
        "(uint8 crops within 1 of 'per_crop' where rounding lands on .5); 'per_crop' = one torch resize per mask",
    )


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
    crop_ratio: float = Field(0.5, gt=0.0, le=1.0, description="five-crop side as a fraction of the grid (STEGO)")
    train_grid: int = Field(28, ge=2, description="token grid side the head trains on (STEGO: 224 / 8)")
    checkpoint_every: int = Field(400, ge=1)
    preload_bytes: int = Field(
        4 * 2**30, ge=0,
        description="the training sample's token grids are read into memory (and onto the GPU when they fit) "
        "when they take at most this many bytes, else streamed from the store batch by batch (same weights)",
    )
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
    """Evaluation of prediction sets (pseudo-labels, model predictions) against ground truth, or their
    statistics when there is none (docs/architecture.md, evaluate)."""

    ground_truth: str | None = Field(
        None,
        description="ground-truth dataset root in `gt_format`; None = the run's synthetic dataset if it has one, "
        "else no ground truth (pseudo-label statistics and overlays only)",
    )
    gt_format: Literal["synthetic", "coco", "cocostuff27", "cityscapes"] = "synthetic"
    split: str | None = Field(None, description="dataset split; None = val2017 (coco, cocostuff27) / val (cityscapes)")
    protocols: list[Literal["u2seg", "hungarian", "stego27"]] = Field(
        default_factory=lambda: ["u2seg", "hungarian"], min_length=1,
        description="one report row per prediction set and protocol; the first one draws the overlays",
    )
    predictions: dict[str, str] = Field(
        default_factory=lambda: {"pseudo-labels": "merge"},
        description="name -> stage of the run (merge, predict) or a folder in the merge layout",
    )
    u2seg_score_min: float = Field(0.6, description="U2Seg instance votes: detections with score >= this")
    u2seg_box_iou: float = Field(0.7, description="U2Seg instance votes: GT boxes with box IoU > this")
    u2seg_semantic_iou: float = Field(0.15, description="U2Seg semantic votes: per-image IoU > this")
    overlays: int = Field(6, ge=0, description="overlay PNGs written for the first N images")
    images: Literal["all", "held_out"] = Field(
        "all", description="held_out: only the validation images the train stage holds out "
        "(train.data.holdout_fraction), the same ones for every prediction set",
    )


class PredictConfig(StrictModel):
    """`predict` stage / `u2seg predict`: a trained or released U2Seg model over the planned images.

    Threshold and test-size defaults are U2Seg's eval config (`ModelConfig` defaults; a test keeps them equal).
    """

    weights: str | None = Field(
        None,
        description="checkpoint path or name (detectron2 .pth/.pkl or ours; searched like the DINO weights: "
        "path, $U2SEG_WEIGHTS, cache); None = the train stage's checkpoint",
    )
    score_thresh: float = Field(
        0.25, ge=0.0, le=1.0,
        description="ROI_HEADS.SCORE_THRESH_TEST and PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH, "
        "set together as detectron2's demo does",
    )
    detections_per_image: int = Field(100, ge=1, description="TEST.DETECTIONS_PER_IMAGE")
    min_size_test: int = Field(800, ge=0, description="INPUT.MIN_SIZE_TEST: shortest edge (0 = no resize)")
    max_size_test: int = Field(1333, ge=1, description="INPUT.MAX_SIZE_TEST: longest-edge cap")
    batch_size: int = Field(4, ge=1, description="images per forward pass")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = Field(True, description="bf16 autocast on GPU (CPU runs in float32)")
    num_workers: int = Field(2, ge=0, description="decoding worker processes (spawn)")
    write_threads: int = Field(
        2, ge=1, description="threads encoding the per-image files (PNG, overlay, RLE) while the model runs on"
    )
    raw: bool = Field(False, description="also write predict/raw/<shard>/<image_id>.npz + .segments.json")
    overlays: bool = Field(True, description="write predict/overlays/<shard>/<image_id>.png")
    mapping: str | None = Field(
        None, description="cluster -> class mapping JSON (from `u2seg evaluate`): overlays show class names"
    )
    images: Literal["all", "held_out"] = Field(
        "all", description="held_out: only the validation images the train stage holds out (train.data.holdout_fraction)"
    )


class SolverConfig(StrictModel):
    """Optimiser and schedule (U2Seg's `SOLVER.*`): SGD with momentum, linear warmup, step decay by `gamma`,
    per-parameter gradient-norm clipping; `base_lr` is for `reference_batch` images per iteration and scales
    linearly with `ims_per_batch`."""

    ims_per_batch: int = Field(16, ge=1, description="global batch: images per iteration over all processes")
    base_lr: float = Field(0.01, gt=0)
    reference_batch: int = Field(16, ge=1, description="the batch `base_lr` is given for (U2Seg: 16)")
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-5
    weight_decay_norm: float = 0.0
    weight_decay_bias: float | None = Field(None, description="None = weight_decay")
    bias_lr_factor: float = 1.0
    max_iter: int = Field(270_000, ge=1)
    steps: tuple[int, ...] = (210_000, 250_000)
    gamma: float = 0.02
    warmup_factor: float = 0.001
    warmup_iters: int = Field(1000, ge=0)
    warmup_method: Literal["linear", "constant"] = "linear"
    clip_gradients: bool = True
    clip_type: Literal["norm", "value", "full_model"] = Field(
        "norm", description="norm / value: each parameter on its own (detectron2); full_model: one global norm"
    )
    clip_value: float = 1.0
    norm_type: float = 2.0
    amp: bool = Field(True, description="fp16 autocast + GradScaler on GPU (CPU trains in float32)")

    @property
    def lr(self) -> float:
        """The learning rate at this batch size (linear scaling rule)."""
        return self.base_lr * self.ims_per_batch / self.reference_batch


class TrainDataConfig(StrictModel):
    """Training data from the merge stage (the held-out split is never trained on)."""

    ims_per_device: int = Field(2, ge=1, description="images per forward pass; more per iteration = accumulation")
    num_workers: int = Field(4, ge=0, description="DataLoader worker processes per training process")
    aspect_ratio_grouping: bool = True
    shard_cache: int = Field(4, ge=1, description="merge shard JSONs each worker keeps decoded")
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="images held out for validation (by a hash of file_name): not trained on; predict and "
        "evaluate use them",
    )


class TrainConfig(StrictModel):
    """`train` stage: U2Seg's Panoptic Cascade Mask R-CNN on the merged pseudo-labels (K and S from the run)."""

    model: ModelConfig = ModelConfig(
        resnet=ResNetConfig(norm="SyncBN"), fpn=ModelConfig().fpn.model_copy(update={"norm": "SyncBN"})
    )
    solver: SolverConfig = SolverConfig()
    data: TrainDataConfig = TrainDataConfig()
    init_weights: str | None = Field(
        None, description="DINO ResNet-50 backbone init (dino_resnet50_pretrain.pth); None = from scratch"
    )
    checkpoint_period: int = Field(10_000, ge=1, description="iterations between checkpoints")
    processes: int | None = Field(None, ge=1, description="training processes (DDP); None = one per GPU, or 1 on CPU")
    launcher: Literal["local", "external"] = Field(
        "local",
        description="local: the stage trains in its own (spawned) processes; external: the stage writes "
        "RUN/train/job.json and waits for a job you submit (deploy/train_slurm.sbatch) to finish it",
    )
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda'")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.solver.ims_per_batch % self.data.ims_per_device:
            raise ValueError(
                f"train.solver.ims_per_batch={self.solver.ims_per_batch} must be a multiple of "
                f"train.data.ims_per_device={self.data.ims_per_device}"
            )
        if self.init_weights is None and self.model.resnet.norm == "FrozenBN":
            raise ValueError("training from scratch needs a norm that learns (GN, BN, SyncBN), not FrozenBN")
        return self

    @classmethod
    def demo(cls) -> "TrainConfig":
        """Minutes on 2 CPU cores: ModelConfig.demo (ResNet-18, narrow FPN, GN), batch 2, 240 iterations."""
        return cls(
            model=ModelConfig.demo(),
            solver=SolverConfig(
                ims_per_batch=2, base_lr=0.16, max_iter=240, steps=(200,), gamma=0.1, warmup_iters=40,
                clip_type="full_model", clip_value=5.0,
            ),
            data=TrainDataConfig(ims_per_device=2, num_workers=1, holdout_fraction=0.25),
            checkpoint_period=80,
        )


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
    storage: StorageConfig = StorageConfig()
    features: FeaturesConfig = FeaturesConfig()
    maskcut: MaskCutConfig = MaskCutConfig()
    cluster: ClusterConfig = ClusterConfig()
    stego: StegoConfig = StegoConfig()
    merge: MergeConfig = MergeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    predict: PredictConfig = PredictConfig()
    train: TrainConfig = TrainConfig()
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
            # the detector trains on the pseudo-labels of the images it does not hold out; pseudo-labels and
            # model are then scored side by side on the held-out ones
            train=TrainConfig.demo(),
            predict=PredictConfig(min_size_test=256, max_size_test=512, num_workers=0, images="held_out"),
            evaluate=EvaluateConfig(predictions={"pseudo-labels": "merge", "model": "predict"}, images="held_out"),
        )
        return base.model_copy(update=overrides) if overrides else base

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        """Read a YAML (.yaml/.yml) or JSON (.json) config file, any case of the extension; a file that cannot
        be read or is no valid config raises `ConfigError` with a one-line message naming the fix."""
        import yaml

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".yaml", ".yml", ".json"):
            raise ConfigError(f"config {path}: unknown extension '{path.suffix}'; name it .yaml, .yml or .json")
        try:
            text = path.read_text()
        except IsADirectoryError:
            raise ConfigError(f"config {path} is a folder; pass the config file") from None
        except OSError as exc:
            raise ConfigError(f"config {path} cannot be read ({exc.strerror or exc}); check the path") from None
        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config {path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix the file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config {path} is not valid YAML ({where}{problem}); fix the file") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of sections (source:, maskcut:, ...), not a {type(data).__name__}")
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(f"config {path}: {describe_validation_error(exc)}") from None


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line naming the problem and the fix."""


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error as one line (with how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = f"unknown key '{where}'; check its spelling against docs/architecture.md or remove it"
    else:
        value = f" (got {first['input']!r})" if not isinstance(first.get("input"), (dict, list)) else ""
        message = f"{where}: {first['msg']}{value}"
    more = len(errors) - 1
    return message + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def patch_size(arch: BackboneArch) -> int:
    """Token grid stride of a backbone (the `pixel` featurizer uses 8-pixel cells)."""
    return 16 if arch.endswith("16") else 8
