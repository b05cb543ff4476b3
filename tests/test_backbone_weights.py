"""DINO checkpoint resolution and strict loading (official key layout, full training checkpoints)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from u2seg_core.backbone import DinoViT, WeightsNotFoundError, build_backbone, resolve_weights
from u2seg_core.backbone import weights as weights_module
from u2seg_core.backbone.vit import create_vit
from u2seg_core.config import BackboneConfig

FILE = "dino_deitsmall16_pretrain.pth"
URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"


def official_keys(depth: int) -> list[str]:
    """The 150 key names of a released DINO ViT backbone checkpoint."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"]
    return keys + ["norm.weight", "norm.bias"]


@pytest.fixture(scope="module")
def source_model() -> DinoViT:
    """A ViT-S/16 with weights that differ from the seeded random init `create_vit` gives."""
    model = create_vit("vit_small_patch16")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return DinoViT("vit_small_patch16", model, torch.device("cpu"))


@pytest.fixture(scope="module")
def checkpoint_state(source_model: DinoViT) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in source_model.model.state_dict().items()}
    assert list(state) == official_keys(12) and len(state) == 150
    assert state["pos_embed"].shape == (1, 1 + 14 * 14, 384)
    return state


@pytest.fixture
def no_weights_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty $U2SEG_WEIGHTS and torch hub cache, downloads disabled."""
    monkeypatch.setenv("U2SEG_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("U2SEG_OFFLINE", "1")
    (tmp_path / "weights").mkdir()
    return tmp_path


def assert_same_outputs(a: DinoViT, b: DinoViT) -> None:
    pixels = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out_a, out_b = a(pixels), b(pixels)
    for name in ("keys", "tokens", "cls"):
        torch.testing.assert_close(getattr(out_a, name), getattr(out_b, name), rtol=0, atol=0)


def test_plain_backbone_checkpoint_loads_strictly(source_model, checkpoint_state, no_weights_anywhere) -> None:
    path = no_weights_anywhere / FILE
    torch.save(checkpoint_state, path)
    assert resolve_weights("vit_small_patch16", str(path)) == path
    loaded = build_backbone(BackboneConfig(arch="vit_small_patch16", weights=str(path), device="cpu"))
    assert_same_outputs(loaded, source_model)


def test_full_dino_checkpoint_found_through_env(source_model, checkpoint_state, no_weights_anywhere) -> None:
    teacher = {f"module.backbone.{k}": v for k, v in checkpoint_state.items()}
    teacher["module.head.last_layer.weight_g"] = torch.ones(1, 4)
    student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in checkpoint_state.items()}
    torch.save({"teacher": teacher, "student": student, "epoch": 3}, no_weights_anywhere / "weights" / FILE)
    assert resolve_weights("vit_small_patch16", None) == no_weights_anywhere / "weights" / FILE
    loaded = DinoViT.from_checkpoint("vit_small_patch16", resolve_weights("vit_small_patch16"), torch.device("cpu"))
    assert_same_outputs(loaded, source_model)


def test_hub_cache_is_searched(checkpoint_state, no_weights_anywhere) -> None:
    hub_file = no_weights_anywhere / "hub" / "checkpoints" / FILE
    hub_file.parent.mkdir(parents=True)
    torch.save(checkpoint_state, hub_file)
    assert resolve_weights("vit_small_patch16") == hub_file


def test_offline_and_missing_raises_one_clear_error(no_weights_anywhere, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(weights_module.urllib.request, "urlopen", no_network)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("vit_small_patch16")
    message = str(info.value)
    assert FILE in message and URL in message
    assert "U2SEG_WEIGHTS" in message and "BackboneConfig.weights" in message
    assert str(no_weights_anywhere / "hub" / "checkpoints") in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights("vit_small_patch16", str(no_weights_anywhere / "missing.pth"))


def test_checkpoint_of_another_arch_is_rejected(checkpoint_state, tmp_path) -> None:
    path = tmp_path / "small.pth"
    torch.save(checkpoint_state, path)
    with pytest.raises(ValueError, match="does not fit vit_small_patch8"):
        DinoViT.from_checkpoint("vit_small_patch8", path, torch.device("cpu"))


def test_build_backbone_caches_per_process(checkpoint_state, tmp_path) -> None:
    path = tmp_path / FILE
    torch.save(checkpoint_state, path)
    cfg = BackboneConfig(arch="vit_small_patch16", weights=str(path), device="cpu", batch_size=3)
    first = build_backbone(cfg)
    assert build_backbone(cfg.model_copy(update={"batch_size": 5})) is first
    assert build_backbone(BackboneConfig(arch="vit_small_patch16", random_init=True, device="cpu")) is not first
