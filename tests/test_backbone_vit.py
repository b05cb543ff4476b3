"""DINO ViT wrapper: keys / tokens / cls against independent computations, DINO pos-embed interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from u2seg_core.backbone import DinoViT, interpolate_pos_embed
from u2seg_core.backbone.vit import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def vit_s16() -> DinoViT:
    return DinoViT.from_checkpoint("vit_small_patch16", None, torch.device("cpu"))


def cubic_weight(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (the one bicubic interpolation uses)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) 1-D bicubic resampling with DINO's scale (n_out + 0.1) / n_in and edge clamping."""
    scale = (n_out + 0.1) / n_in
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            matrix[i, min(max(tap, 0), n_in - 1)] += cubic_weight(src - tap)
    return matrix


def reference_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Separable reference of DINO's interpolate_pos_encoding (float64 numpy)."""
    dim = pos_embed.shape[-1]
    side = math.isqrt(pos_embed.shape[1] - 1)
    if grid == (side, side):
        return pos_embed
    patch = pos_embed[0, 1:].double().numpy().reshape(side, side, dim)
    rows, cols = resample_matrix(side, grid[0]), resample_matrix(side, grid[1])
    out = np.einsum("ir,jc,rcd->ijd", rows, cols, patch).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([pos_embed[:, :1].double(), torch.from_numpy(out)], dim=1).float()


def reference_forward(vit: DinoViT, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain ViT forward with the reference pos-embed: keys (B,N,D), tokens (B,N,D), cls (B,D)."""
    model = vit.model
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (pixels.float() / 255 - mean) / std
    patch = model.patch_embed.patch_size[0]
    grid = (x.shape[2] // patch, x.shape[3] // patch)
    tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=patch)
    tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens.flatten(2).transpose(1, 2)], dim=1)
    tokens = tokens + reference_pos_embed(model.pos_embed.detach(), grid)
    for block in model.blocks[:-1]:
        tokens = block(tokens)
    last = model.blocks[-1]
    qkv = F.linear(last.norm1(tokens), last.attn.qkv.weight, last.attn.qkv.bias)
    heads = last.attn.num_heads
    q, k, v = qkv.reshape(len(x), tokens.shape[1], 3, heads, -1).unbind(dim=2)
    keys = torch.cat([k[:, :, h] for h in range(heads)], dim=-1)
    final = model.norm(last(tokens))
    return keys[:, 1:], final[:, 1:], final[:, 0]


def as_sequence(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("grid", [(10, 14), (30, 30), (5, 7), (20, 9), (14, 14)])
def test_pos_embed_matches_dino_formula(grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 14 * 14, 16)
    got = interpolate_pos_embed(pos_embed, grid)
    assert got.shape == (1, 1 + grid[0] * grid[1], 16)
    torch.testing.assert_close(got, reference_pos_embed(pos_embed, grid), atol=1e-5, rtol=1e-5)


def test_pos_embed_offset_differs_from_plain_resize() -> None:
    """The +0.1 scale offset is reproduced (a plain size-based resize gives other values)."""
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)
    plain = F.interpolate(
        pos_embed[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(30, 30), mode="bicubic"
    ).permute(0, 2, 3, 1).reshape(1, 900, 8)
    assert not torch.allclose(interpolate_pos_embed(pos_embed, (30, 30))[:, 1:], plain, atol=1e-4)


@pytest.mark.parametrize("size", [(224, 224), (160, 224), (96, 64)])
def test_outputs_match_reference_forward(vit_s16: DinoViT, size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    pixels = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    out = vit_s16(pixels)
    grid = (size[0] // 16, size[1] // 16)
    assert out.keys.shape == out.tokens.shape == (2, 384, *grid)
    assert out.cls.shape == (2, 384)
    assert out.keys.dtype == out.tokens.dtype == out.cls.dtype == torch.float32
    keys, tokens, cls = reference_forward(vit_s16, pixels)
    torch.testing.assert_close(as_sequence(out.keys), keys, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(as_sequence(out.tokens), tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.cls, cls, atol=1e-4, rtol=1e-4)


def test_tokens_and_cls_equal_timm_forward_features(vit_s16: DinoViT) -> None:
    """At the training size (no interpolation) the tokens are timm's own forward_features output."""
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    out = vit_s16(pixels)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        timm_out = vit_s16.model.forward_features((pixels.float() / 255 - mean) / std)
    torch.testing.assert_close(as_sequence(out.tokens), timm_out[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cls, timm_out[:, 0], atol=1e-5, rtol=1e-5)


def test_keys_only_path_skips_mlp_and_norm(vit_s16: DinoViT) -> None:
    calls = []
    handles = [
        vit_s16.model.blocks[-1].mlp.register_forward_hook(lambda *a: calls.append("mlp")),
        vit_s16.model.norm.register_forward_hook(lambda *a: calls.append("norm")),
    ]
    try:
        pixels = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
        keys_only = vit_s16(pixels, frozenset({"keys"}))
        assert calls == [] and keys_only.tokens is None and keys_only.cls is None
        full = vit_s16(pixels)
        assert calls == ["mlp", "norm"]
        torch.testing.assert_close(keys_only.keys, full.keys)
    finally:
        for handle in handles:
            handle.remove()


def test_float_input_equals_uint8(vit_s16: DinoViT) -> None:
    pixels = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    a = vit_s16(pixels, frozenset({"tokens"})).tokens
    b = vit_s16(pixels.float() / 255, frozenset({"tokens"})).tokens
    torch.testing.assert_close(a, b)


def test_bad_inputs_raise_clear_errors(vit_s16: DinoViT) -> None:
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        vit_s16(torch.zeros(1, 3, 50, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="outputs"):
        vit_s16(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), frozenset({"attn"}))


def test_vit_b8_tiny_input() -> None:
    """ViT-B/8: 768-dim keys on a 4x5 grid, keys-only equal to the full pass."""
    vit = DinoViT.from_checkpoint("vit_base_patch8", None, torch.device("cpu"))
    pixels = torch.randint(0, 256, (1, 3, 32, 40), dtype=torch.uint8)
    full = vit(pixels)
    assert full.keys.shape == full.tokens.shape == (1, 768, 4, 5) and full.cls.shape == (1, 768)
    torch.testing.assert_close(vit(pixels, frozenset({"keys"})).keys, full.keys)
    keys, tokens, cls = reference_forward(vit, pixels)
    torch.testing.assert_close(as_sequence(full.keys), keys, atol=1e-4, rtol=1e-4)
