"""Checkpoints of the U2Seg detector: detectron2 `.pth` / `.pkl`, our own, and the DINO ResNet-50 init.

* detectron2 `.pth`: `{"model": state_dict, "iteration": N}` (U2Seg's released `cocotrain_300_0089999.pth`, ...),
  read with `torch.load(weights_only=True)`.
* detectron2 `.pkl`: a pickled dict of numpy arrays, possibly `{"model": ..., "__author__": ...}`, read by an
  unpickler that can only rebuild numpy arrays/dtypes and plain containers (no other code runs).
* ours (`save_checkpoint`): detectron2's layout plus `"u2seg_model_config"` (the ModelConfig as JSON).
* `dino_resnet50_pretrain.pth` (torchvision ResNet names, no fc): backbone init via `load_backbone_init`.

Our module names equal detectron2's, so the key mapping is the identity; `load_checkpoint` reads K (thing
classes: `cls_score` rows - 1) and S (stuff: semantic `predictor` rows - 1) and the layer sizes from the tensor
shapes. Loading is strict: every tensor used, every shape checked, errors name the file and the keys.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from u2seg_core import storage
from u2seg_core.backbone.weights import find_weights, load_dino_state_dict

from .backbone import BLOCKS_PER_STAGE
from .config import ModelConfig, NormName

RELEASED_CHECKPOINT = "cocotrain_300_0089999.pth"
RELEASES_URL = "https://github.com/u2seg/U2Seg#model-zoo (Google Drive links in U2Seg's README)"
DINO_RESNET50_FILE = "dino_resnet50_pretrain.pth"
DINO_RESNET50_URL = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"
CONFIG_KEY = "u2seg_model_config"
MAX_LISTED_KEYS = 12


class CheckpointError(ValueError):
    """A checkpoint that is not (or does not fit) this model."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 `.pkl` files: numpy arrays, dtypes, scalars and plain containers only."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how pickle protocol 2 stores the arrays' raw bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed in .pkl")
        return super().find_class(module, name)


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """The raw top-level dict of a `.pth` / `.pkl` checkpoint (no arbitrary code is executed)."""
    path = Path(path)
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises anything (KeyError, IndexError, ...)
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc}); pass a detectron2 .pth/.pkl or one of ours"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    return data


def state_dict_of(data: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint dict (its "model" entry if present); numpy arrays become tensors."""
    state = data.get("model", data)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' is a {type(state).__name__}, not a state dict")
    tensors = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value))
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif key != "_metadata":
            raise CheckpointError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
    return tensors


def _check_architecture(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """One clear error for checkpoints of other architectures."""
    keys = set(state)
    if "cls_token" in keys or any(k.startswith("blocks.") for k in keys):
        raise CheckpointError(f"{path} is a ViT (DINO) checkpoint, not a U2Seg Panoptic Cascade Mask R-CNN")
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        raise CheckpointError(
            f"{path} is a torchvision ResNet (e.g. {DINO_RESNET50_FILE}); it initialises the backbone only: "
            "use u2seg_core.model.checkpoint.load_backbone_init(model, path)"
        )
    if "roi_heads.box_predictor.cls_score.weight" in keys:
        raise CheckpointError(
            f"{path} is a (non-cascade) Mask/Faster R-CNN checkpoint; U2Seg's model has 3 cascade stages "
            "(roi_heads.box_predictor.{0,1,2}.*)"
        )
    required = ("backbone.bottom_up.stem.conv1.weight", "roi_heads.box_predictor.0.cls_score.weight",
                "sem_seg_head.predictor.weight", "roi_heads.mask_head.predictor.weight")
    absent = [k for k in required if k not in keys]
    if absent:
        raise CheckpointError(
            f"{path} is not a U2Seg Panoptic-FPN Cascade Mask R-CNN checkpoint (no {', '.join(absent)}); "
            f"first keys: {sorted(keys)[:5]}"
        )


def _norm_of(state: dict[str, torch.Tensor], prefix: str) -> NormName:
    if f"{prefix}.norm.running_mean" in state:
        return "BN"
    return "GN" if f"{prefix}.norm.weight" in state else ""


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def infer_config(state: dict[str, torch.Tensor], base: ModelConfig | None = None) -> ModelConfig:
    """ModelConfig of a detectron2-layout state dict: `base` (U2Seg's K=300 preset) with K, S, depth, norms,
    widths and head depths read from the tensors."""
    base = base or ModelConfig.u2seg_eval_300()
    blocks = tuple(_count(state, rf"backbone\.bottom_up\.res{i}\.(\d+)\.") for i in range(2, 6))
    bottleneck = "backbone.bottom_up.res2.0.conv3.weight" in state
    depths = [d for d, b in BLOCKS_PER_STAGE.items() if b == blocks and (d >= 50) == bottleneck]
    if not depths:
        raise CheckpointError(f"ResNet with blocks per stage {blocks} is not ResNet-18/34/50/101/152")
    stages = _count(state, r"roi_heads\.box_predictor\.(\d+)\.")
    if stages != base.cascade.num_stages:
        raise CheckpointError(f"checkpoint has {stages} cascade stages, the config {base.cascade.num_stages}")
    box_fc = _count(state, r"roi_heads\.box_head\.0\.fc(\d+)\.weight")
    box_conv = _count(state, r"roi_heads\.box_head\.0\.conv(\d+)\.weight")
    mask_conv = _count(state, r"roi_heads\.mask_head\.mask_fcn(\d+)\.weight")
    mask_out = state["roi_heads.mask_head.predictor.weight"].shape[0]
    num_things = state["roi_heads.box_predictor.0.cls_score.weight"].shape[0] - 1
    update = {
        "resnet": base.resnet.model_copy(update={
            "depth": depths[0], "norm": _norm_of(state, "backbone.bottom_up.stem.conv1"),
            "stem_out_channels": state["backbone.bottom_up.stem.conv1.weight"].shape[0],
            "res2_out_channels": state["backbone.fpn_lateral2.weight"].shape[1],
        }),
        "fpn": base.fpn.model_copy(update={
            "out_channels": state["backbone.fpn_lateral2.weight"].shape[0],
            "norm": _norm_of(state, "backbone.fpn_lateral2"),
        }),
        "roi_heads": base.roi_heads.model_copy(update={"num_classes": num_things}),
        "box_head": base.box_head.model_copy(update={
            "num_fc": box_fc, "num_conv": box_conv,
            "fc_dim": state["roi_heads.box_head.0.fc1.weight"].shape[0] if box_fc else base.box_head.fc_dim,
            "norm": _norm_of(state, "roi_heads.box_head.0.conv1") if box_conv else base.box_head.norm,
        }),
        "mask_head": base.mask_head.model_copy(update={
            "num_conv": mask_conv, "conv_dim": state["roi_heads.mask_head.deconv.weight"].shape[1],
            "cls_agnostic_mask": mask_out == 1 and num_things != 1,
            "norm": _norm_of(state, "roi_heads.mask_head.mask_fcn1") if mask_conv else base.mask_head.norm,
        }),
        "sem_seg_head": base.sem_seg_head.model_copy(update={
            "num_classes": state["sem_seg_head.predictor.weight"].shape[0],
            "convs_dim": state["sem_seg_head.predictor.weight"].shape[1],
            "norm": _norm_of(state, "sem_seg_head.p2.0"),
        }),
    }
    return base.model_copy(update=update)


def load_checkpoint(
    path: str | Path, base: ModelConfig | None = None
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """(state dict in our = detectron2's key layout, ModelConfig) of a detector checkpoint.

    Our own checkpoints carry their config; for detectron2 files it is `infer_config(state, base)`.
    """
    data = read_checkpoint_file(path)
    state = state_dict_of(data, path)
    _check_architecture(state, path)
    if CONFIG_KEY in data:
        return state, ModelConfig.model_validate(data[CONFIG_KEY])
    try:
        return state, infer_config(state, base)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{path}: unexpected tensor layout ({exc})") from exc


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return ", ".join(keys[:MAX_LISTED_KEYS]) + more


def load_weights(
    module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> None:
    """Copy `state` into `module`; strict: every tensor used and every parameter/buffer given, same shapes.

    BatchNorm's `num_batches_tracked` may be absent (FrozenBN checkpoints; it is then set to 0) or extra
    (a BN checkpoint into FrozenBN); it does not affect outputs.
    """
    expected = module.state_dict()
    state = dict(state)
    for key in [k for k in state if k.endswith("num_batches_tracked") and k not in expected]:
        del state[key]
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.int64)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    problems = []
    if wrong:
        problems.append(f"shape mismatch (checkpoint != model): {_listed(wrong)}")
    if strict and missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)


def save_checkpoint(url: str, model: nn.Module, cfg: ModelConfig, iteration: int = 0) -> None:
    """Atomically write {"model": state_dict, "iteration", "u2seg_model_config"} (loadable with weights_only)."""
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "iteration": int(iteration),
        CONFIG_KEY: cfg.model_dump(mode="json"),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.atomic_write_bytes(url, buffer.getvalue())


def resolve_model_weights(explicit: str | None = None, file: str = RELEASED_CHECKPOINT) -> Path:
    """Path of a detector checkpoint: `explicit`, `$U2SEG_WEIGHTS` (folder or file), the torch hub cache."""
    return find_weights(
        file, explicit, setting="--weights / predict.weights", what="U2Seg detector checkpoint",
        where_to_get=RELEASES_URL, env_may_be_file=True,
    )


def torchvision_resnet_to_detectron2(key: str) -> str:
    """torchvision ResNet key -> detectron2 `bottom_up` key (conv1/bn1 -> stem, layerN -> res(N+1))."""
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
    key = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", key)
    key = re.sub(r"\.downsample\.0\.", ".shortcut.", key)
    key = re.sub(r"\.downsample\.1\.", ".shortcut.norm.", key)
    return re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)


def load_backbone_init(model: nn.Module, path: str | Path | None = None) -> Path:
    """Initialise `model.backbone.bottom_up` from a DINO ResNet-50 (torchvision names, fc ignored); strict.

    `path` None searches `$U2SEG_WEIGHTS` and the hub cache for dino_resnet50_pretrain.pth (downloading online).
    """
    resolved = find_weights(
        DINO_RESNET50_FILE, None if path is None else str(path), setting="the backbone init path",
        what="DINO ResNet-50 weights", download_url=DINO_RESNET50_URL,
    )
    state = {
        torchvision_resnet_to_detectron2(k): v
        for k, v in load_dino_state_dict(resolved).items() if not k.startswith("fc.")
    }
    load_weights(model.backbone.bottom_up, state, strict=True, source=str(resolved))
    return resolved
