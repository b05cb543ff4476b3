"""`Predictor`: a U2Seg model on RGB images, preprocessing exactly as detectron2's `DefaultPredictor`.

    predictor = Predictor.from_checkpoint("cocotrain_300_0089999.pth")
    prediction = predictor(image)            # (H, W, 3) uint8 RGB array, PIL image or path -> PanopticPrediction
    predictions = predictor.predict_batch([image1, image2])

Preprocessing (`InputTransform`, picklable so that DataLoader workers run it): the decoded RGB image is put in the
model's channel order (`INPUT.FORMAT`), resized on uint8 with PIL bilinear to shortest edge `MIN_SIZE_TEST`
(longest edge at most `MAX_SIZE_TEST`: `u2seg_core.model.preprocess`) and handed over as a (3, h, w) uint8 tensor
with the original size; the model normalises with its pixel mean/std and pads to a multiple of 32. The uint8 tensor
(detectron2 hands over float32) carries the same values at a quarter of the bytes through DataLoader workers and
host-to-GPU copies (a test checks equality with `preprocess.prepare_input`). Inference runs under
`torch.inference_mode`; on CUDA with `amp` (the default) in bf16 autocast for speed, which detectron2's
DefaultPredictor does not do: pass `amp=False` (`predict.amp: false`) for its float32 numbers. CPU always runs
float32.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import storage
from ..device import resolve_device
from ..io.decode import load_image
from .config import ModelConfig
from .prediction import PanopticPrediction

ImageLike = np.ndarray | Image.Image | str


@dataclass(frozen=True)
class InputTransform:
    """Decoded RGB image -> the model's (3, h, w) uint8 input (module docstring)."""

    input_format: str = "RGB"
    min_size: int = 800
    max_size: int = 1333

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        from .preprocess import resize_shortest_edge

        rgb = np.asarray(image, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
        if self.input_format == "BGR":
            rgb = rgb[:, :, ::-1]
        resized, _ = resize_shortest_edge(np.ascontiguousarray(rgb), self.min_size, self.max_size)
        return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


class Predictor:
    """A model in eval mode on one device, with its test transform and label space (K things, S stuff)."""

    def __init__(
        self, model: nn.Module, transform: InputTransform, num_things: int, num_stuff: int,
        device: str | torch.device = "auto", amp: bool = True,
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.eval().to(self.device)
        self.transform = transform
        self.num_things = num_things
        self.num_stuff = num_stuff
        self.amp = amp and self.device.type == "cuda"

    @classmethod
    def from_checkpoint(
        cls, path_or_name: str | None = None, *, device: str = "auto", amp: bool = True,
        score_thresh: float | None = None, min_size_test: int | None = None, max_size_test: int | None = None,
        **overrides: Any,
    ) -> "Predictor":
        """Load a checkpoint (detectron2 .pth / .pkl or ours; `path_or_name` searched as
        `u2seg_core.model.checkpoint` does: explicit path, $U2SEG_WEIGHTS, cache) into the model its tensor shapes
        describe. `score_thresh` sets ROI_HEADS.SCORE_THRESH_TEST and COMBINE.INSTANCES_CONFIDENCE_THRESH
        together (as detectron2's demo); `overrides` update ModelConfig sections, e.g.
        `combine={"stuff_area_limit": 0}`. Raises `CheckpointError` (one clear line) for a checkpoint of another
        architecture."""
        from . import build_model
        from .checkpoint import load_checkpoint, load_weights

        path = resolve_checkpoint(path_or_name)
        state, model_cfg = load_checkpoint(path)
        model_cfg = configure(model_cfg, score_thresh, min_size_test, max_size_test, **overrides)
        model = build_model(model_cfg)
        load_weights(model, state, strict=True, source=str(path))
        return cls.from_model(model, model_cfg, device=device, amp=amp)

    @classmethod
    def from_model(
        cls, model: nn.Module, model_cfg: ModelConfig, device: str = "auto", amp: bool = True
    ) -> "Predictor":
        """Wrap a built model with the test transform and label space of its `ModelConfig`."""
        transform = InputTransform(model_cfg.input.format, model_cfg.input.min_size_test, model_cfg.input.max_size_test)
        return cls(model, transform, model_cfg.num_things, model_cfg.num_stuff, device, amp)

    def __call__(self, image: ImageLike) -> PanopticPrediction:
        """One image ((H, W, 3) uint8 RGB array, PIL image, or a path / URL to decode) -> its prediction."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageLike]) -> list[PanopticPrediction]:
        """Several images in one forward pass (they are padded to a common size inside the model)."""
        rgbs = [_as_rgb(im) for im in images]
        return self.predict_prepared([self.transform(rgb) for rgb in rgbs], [rgb.shape[:2] for rgb in rgbs])

    @torch.inference_mode()
    def predict_prepared(
        self, pixels: Sequence[torch.Tensor], original_sizes: Sequence[tuple[int, int]]
    ) -> list[PanopticPrediction]:
        """Images already passed through `self.transform` ((3, h, w) uint8 each) with their original (H, W)."""
        if not pixels:
            return []
        inputs = [
            {"image": p.to(self.device, non_blocking=True), "height": int(h), "width": int(w)}
            for p, (h, w) in zip(pixels, original_sizes)
        ]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            outputs = self.model(inputs)
        return [PanopticPrediction.from_output(out, self.num_things, self.num_stuff) for out in outputs]


def resolve_checkpoint(path_or_name: str | None) -> Path:
    """Local path of a detector checkpoint: None = U2Seg's released K=300 file searched in $U2SEG_WEIGHTS and the
    cache; a bare file name is searched there too; a remote URL (s3://...) is fetched into a local cache folder
    once per version of the object; any other path must exist (else `WeightsNotFoundError`, naming where to
    look)."""
    from .checkpoint import resolve_model_weights

    if path_or_name is None:
        return resolve_model_weights(None)
    if storage.is_remote(path_or_name):
        key = storage.hash_json([path_or_name, checkpoint_version(path_or_name)])
        target = Path(tempfile.gettempdir()) / "u2seg-weights" / key / Path(path_or_name).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.atomic_write_bytes(str(target), storage.read_bytes(path_or_name))
        return target
    if "/" not in path_or_name and not Path(path_or_name).is_file():
        return resolve_model_weights(None, file=path_or_name)
    return resolve_model_weights(path_or_name)


def checkpoint_version(url: str) -> str:
    """What changes when the file at `url` is replaced: its ETag on object stores, else size + modification time."""
    fs, path = storage.get_fs(url)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag")
    return str(etag) if etag else f"{info.get('size')}:{info.get('mtime') or info.get('LastModified')}"


def configure(
    model_cfg: ModelConfig, score_thresh: float | None = None, min_size_test: int | None = None,
    max_size_test: int | None = None, **overrides: Any,
) -> ModelConfig:
    """`model_cfg` with the predictor's settings applied; `overrides` map a section name to the
    fields to change in it."""
    sections: dict[str, dict[str, Any]] = {name: dict(fields) for name, fields in overrides.items()}
    if score_thresh is not None:
        sections.setdefault("roi_heads", {})["score_thresh_test"] = score_thresh
        sections.setdefault("combine", {})["instances_confidence_thresh"] = score_thresh
    if min_size_test is not None:
        sections.setdefault("input", {})["min_size_test"] = min_size_test
    if max_size_test is not None:
        sections.setdefault("input", {})["max_size_test"] = max_size_test
    data = model_cfg.model_dump()
    for name, fields in sections.items():
        if name not in data or not isinstance(data[name], dict):
            raise ValueError(f"unknown model config section {name!r}; choose from {sorted(data)}")
        data[name] = {**data[name], **fields}
    return type(model_cfg).model_validate(data)


def _as_rgb(image: ImageLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an array, a PIL image or a path / URL (decoded with u2seg_core.io.decode)."""
    if isinstance(image, str):
        image = load_image(image)
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    rgb = np.asarray(image)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    return rgb
