"""DINO ViTs (timm modules) with DINO's position-embedding interpolation and a keys-only fast path."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from .output import ALL_OUTPUTS, Backbone, BackboneOutput
from .weights import load_dino_state_dict

TIMM_NAMES: dict[str, str] = {
    "vit_small_patch16": "vit_small_patch16_224",
    "vit_small_patch8": "vit_small_patch8_224",
    "vit_base_patch16": "vit_base_patch16_224",
    "vit_base_patch8": "vit_base_patch8_224",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0
KeysPrecision = Literal["amp", "fp32_last_block", "fp32"]


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resample DINO position embeddings to a token grid, exactly as DINO does.

    pos_embed: (1, 1 + n*n, D) for the square training grid (n = 224 / patch).
    Returns (1, 1 + gh*gw, D): unchanged when the grid is the training grid, else the patch
    embeddings are resampled with bicubic interpolation (align_corners=False) driven by the scale
    factors ((gh + 0.1) / n, (gw + 0.1) / n). The +0.1 reproduces DINO's `interpolate_pos_encoding`
    (its output size floors to (gh, gw), while the sampling positions use the offset scale); timm's
    own antialiased resampling gives different values, so it is not used.
    """
    n_patches, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"pos_embed has {n_patches} patch positions, not a square grid")
    gh, gw = grid
    if (gh, gw) == (side, side):
        return pos_embed
    patch = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic", align_corners=False
    )
    if patch.shape[-2:] != (gh, gw):
        raise RuntimeError(f"position-embedding interpolation gave {tuple(patch.shape[-2:])}, expected {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)
    return torch.cat([pos_embed[:, :1].float(), patch], dim=1)


def create_vit(arch: str) -> timm.models.VisionTransformer:
    """The timm ViT for a DINO arch, randomly initialised with a fixed seed (same weights every call)."""
    if arch not in TIMM_NAMES:
        raise ValueError(f"unknown ViT arch '{arch}'; known: {sorted(TIMM_NAMES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=0, dynamic_img_size=True)


class DinoViT(Backbone):
    """Frozen DINO ViT returning last-block attention keys, normed patch tokens and the CLS token.

    The forward pass is written here (patch conv, CLS, DINO position embeddings, timm blocks, final
    norm) so that requesting only "keys" stops after the last block's qkv projection: no attention,
    no MLP, no final norm. The keys of a full pass come from a forward hook on the last qkv layer,
    registered once; it stores into thread-local state so one cached model can serve several threads.

    `keys_precision` (`BackboneConfig.keys_precision`): under bf16 autocast the keys come out of the
    last qkv projection rounded to bf16 (8 mantissa bits) before MaskCut thresholds their cosines.
    'fp32_last_block' computes the last block's norm1 and key projection in float32 from the float32
    residual stream (earlier blocks stay in bf16); 'fp32' runs the whole pass in float32 whenever keys
    are asked for. `amp_on_cpu` turns on CPU bf16 autocast (benchmarks only; CPU runs are float32).
    """

    amp_on_cpu: bool = False

    def __init__(
        self,
        arch: str,
        model: timm.models.VisionTransformer,
        device: torch.device,
        amp: bool = True,
        keys_precision: KeysPrecision = "amp",
    ):
        super().__init__()
        self.arch = arch
        self.model = model.eval().requires_grad_(False).to(device)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.embed_dim = int(model.embed_dim)
        self.cls_dim = self.embed_dim
        self.device = device
        self.amp = amp
        self.keys_precision = keys_precision
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1), persistent=False)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        self._captured = threading.local()
        self.model.blocks[-1].attn.qkv.register_forward_hook(self._capture_qkv)

    @classmethod
    def from_checkpoint(
        cls, arch: str, path: Path | None, device: torch.device, amp: bool = True, keys_precision: KeysPrecision = "amp"
    ) -> "DinoViT":
        """Build `arch` with the weights in `path` (loaded strictly), or seeded random weights when None."""
        model = create_vit(arch)
        if path is not None:
            state = load_dino_state_dict(path)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise ValueError(f"checkpoint {path} does not fit {arch} (wrong file for this arch?): {err}") from err
        return cls(arch, model, device, amp, keys_precision)

    def _capture_qkv(self, module: torch.nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
        self._captured.qkv = output

    def pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1 + gh*gw, D) float32 position embeddings for a token grid (cached per grid)."""
        if grid not in self._pos_cache:
            self._pos_cache[grid] = interpolate_pos_embed(self.model.pos_embed.float(), grid)
        return self._pos_cache[grid]

    def _autocast(self, enabled: bool = True) -> torch.autocast:
        enabled = enabled and self.amp and (self.device.type == "cuda" or self.amp_on_cpu)
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _fp32_keys(self, tokens: Tensor) -> Tensor:
        """(B, T, D) residual stream entering the last block -> (B, T, D) float32 keys (norm1 + key projection)."""
        attn = self.model.blocks[-1].attn
        d = self.embed_dim
        with self._autocast(enabled=False):
            normed = self.model.blocks[-1].norm1(tokens.float())
            return F.linear(normed, attn.qkv.weight[d : 2 * d].float(), attn.qkv.bias[d : 2 * d].float())

    @torch.no_grad()
    def forward(self, pixels: Tensor, outputs: frozenset[str] = ALL_OUTPUTS) -> BackboneOutput:
        """pixels (B, 3, H, W) uint8 RGB or [0, 1] float -> float32 keys/tokens (B, D, H/p, W/p), cls (B, D)."""
        self.check_outputs(outputs)
        x = (self.to_unit_float(pixels) - self.mean) / self.std
        batch, grid = x.shape[0], (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        last = self.model.blocks[-1]
        precision = self.keys_precision if "keys" in outputs else "amp"
        keys = None
        with self._autocast(enabled=precision != "fp32"):
            tokens = self.model.patch_embed.proj(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.model.cls_token.expand(batch, -1, -1), tokens], dim=1)
            tokens = self.model.pos_drop(tokens + self.pos_embed(grid))
            for block in self.model.blocks[:-1]:
                tokens = block(tokens)
            if precision == "fp32_last_block":
                keys = self._fp32_keys(tokens)
            if outputs == {"keys"}:
                final = None
                if keys is None:
                    keys = last.attn.qkv(last.norm1(tokens))[..., self.embed_dim : 2 * self.embed_dim]
            else:
                final = self.model.norm(last(tokens))
                if keys is None:
                    keys = self._captured.qkv[..., self.embed_dim : 2 * self.embed_dim]
            self._captured.qkv = None
        result = BackboneOutput()
        if "keys" in outputs:
            result.keys = self._to_map(keys[:, 1:], grid)
        if final is not None and "tokens" in outputs:
            result.tokens = self._to_map(final[:, 1:], grid)
        if final is not None and "cls" in outputs:
            result.cls = final[:, 0].float()
        return result

    @staticmethod
    def _to_map(sequence: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, h*w, C) -> (B, C, h, w) float32."""
        return sequence.transpose(1, 2).reshape(sequence.shape[0], -1, *grid).float()
