"""Checkpoint layout and loading: detectron2 .pth / .pkl of U2Seg's K=300 model, ours, DINO ResNet-50, errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from u2seg_core.backbone.weights import WeightsNotFoundError
from u2seg_core.model import ModelConfig, build_model
from u2seg_core.model.checkpoint import (
    CheckpointError,
    load_backbone_init,
    load_checkpoint,
    load_weights,
    read_checkpoint_file,
    resolve_model_weights,
    state_dict_of,
    save_checkpoint,
    torchvision_resnet_to_detectron2,
)
from shared_paths import MODEL_REFERENCE

SPEC = MODEL_REFERENCE / "detectron2_state_dict_spec.json"
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def spec_params() -> list[tuple[str, list[int], str]]:
    if not SPEC.is_file():
        pytest.skip(f"reference spec {SPEC} not available")
    return [tuple(p) for p in json.loads(SPEC.read_text())["params"]]


def random_detectron2_state(params: list[tuple[str, list[int], str]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in detectron2's layout with random values (positive variances)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape, dtype in params:
        if dtype == "int64":
            state[name] = torch.randint(0, 1000, shape, generator=gen, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.02
    return state


@pytest.fixture(scope="module")
def model_300() -> torch.nn.Module:
    return build_model(ModelConfig.u2seg_eval_300())


@pytest.fixture(scope="module")
def d2_state() -> dict[str, torch.Tensor]:
    return random_detectron2_state(spec_params())


@pytest.fixture(scope="module")
def d2_pth(tmp_path_factory, d2_state) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "cocotrain_300_0089999.pth"
    torch.save({"model": d2_state, "iteration": 89999}, path)
    return path


def test_preset_matches_detectron2_state_dict_spec(model_300) -> None:
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model_300.state_dict().items()]
    assert ours == [tuple(p) for p in spec_params()]  # names, shapes, dtypes and order
    assert model_300.cfg.num_things == 300 and model_300.cfg.num_stuff == 27


def test_detectron2_pth_loads_strictly_and_round_trips(tmp_path, model_300, d2_state, d2_pth) -> None:
    state, cfg = load_checkpoint(d2_pth)
    assert (cfg.num_things, cfg.num_stuff) == (300, 27)
    assert cfg == ModelConfig.u2seg_eval_300()
    load_weights(model_300, state, source=str(d2_pth))
    for key, value in model_300.state_dict().items():
        assert torch.equal(value, d2_state[key]), key
    ours = tmp_path / "ours.pth"
    save_checkpoint(str(ours), model_300, cfg, iteration=7)
    raw = torch.load(ours, weights_only=True)
    assert raw["iteration"] == 7 and list(raw["model"]) == list(d2_state)
    state2, cfg2 = load_checkpoint(ours)
    assert cfg2 == cfg
    assert all(torch.equal(state2[k], d2_state[k]) for k in d2_state)


def test_detectron2_pkl_numpy_layout(tmp_path, d2_state) -> None:
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in d2_state.items()}, "__author__": "test"}, f)
    state, cfg = load_checkpoint(path)
    assert cfg.num_things == 300
    assert list(state) == list(d2_state)
    assert all(torch.equal(state[k], d2_state[k]) and state[k].dtype == d2_state[k].dtype for k in d2_state)


def test_pkl_protocol_2_arrays(tmp_path) -> None:
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array(7, dtype=np.int64)}
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "test"}, protocol=2))
    state = state_dict_of(read_checkpoint_file(path), path)
    assert torch.equal(state["a"], torch.from_numpy(arrays["a"])) and state["b"].item() == 7


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/u2seg_pkl_exploit",))


def test_pkl_with_code_is_refused_without_running_it(tmp_path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": _Evil()}}))
    with pytest.raises(CheckpointError, match="refusing to load posix.system|refusing to load os.system"):
        load_checkpoint(path)
    assert not Path("/tmp/u2seg_pkl_exploit").exists()


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
@pytest.mark.parametrize("content", [b"junk\n", b"", bytes(range(256)) * 4])
def test_corrupt_file_is_one_checkpoint_error(tmp_path, suffix, content) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_k_and_s_come_from_tensor_shapes(tmp_path, d2_state) -> None:
    state = dict(d2_state)
    for k in range(3):
        state[f"roi_heads.box_predictor.{k}.cls_score.weight"] = torch.zeros(801, 1024)
        state[f"roi_heads.box_predictor.{k}.cls_score.bias"] = torch.zeros(801)
    state["roi_heads.mask_head.predictor.weight"] = torch.zeros(800, 256, 1, 1)
    state["roi_heads.mask_head.predictor.bias"] = torch.zeros(800)
    state["sem_seg_head.predictor.weight"] = torch.zeros(13, 128, 1, 1)
    state["sem_seg_head.predictor.bias"] = torch.zeros(13)
    path = tmp_path / "k800.pth"
    torch.save({"model": state}, path)
    _, cfg = load_checkpoint(path)
    assert (cfg.num_things, cfg.num_stuff) == (800, 12)
    assert cfg.roi_heads == ModelConfig.u2seg_eval_800().roi_heads


def test_other_architectures_give_one_clear_error(tmp_path, d2_state) -> None:
    vit = tmp_path / "dino_vitbase8_pretrain.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 8), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, vit)
    with pytest.raises(CheckpointError, match="ViT"):
        load_checkpoint(vit)
    plain = {k.replace("box_predictor.0.", "box_predictor."): torch.zeros(0) for k in d2_state
             if ".box_predictor.1." not in k and ".box_predictor.2." not in k}  # only the names matter
    mask_rcnn = tmp_path / "mask_rcnn.pth"
    torch.save({"model": plain}, mask_rcnn)
    with pytest.raises(CheckpointError, match="non-cascade") as info:
        load_checkpoint(mask_rcnn)
    assert str(mask_rcnn) in str(info.value)
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}, resnet)
    with pytest.raises(CheckpointError, match="load_backbone_init"):
        load_checkpoint(resnet)


def test_strict_errors_name_the_keys(model_300, d2_state) -> None:
    state = dict(d2_state)
    del state["sem_seg_head.p5.4.norm.bias"]
    state["roi_heads.extra.weight"] = torch.zeros(1)
    state["roi_heads.box_head.0.fc2.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_weights(model_300, state, source="my.pth")
    message = str(info.value)
    assert "my.pth" in message and "sem_seg_head.p5.4.norm.bias" in message and "roi_heads.extra.weight" in message
    assert "roi_heads.box_head.0.fc2.bias (3,) != (1024,)" in message


def test_frozen_bn_accepts_bn_checkpoint_with_same_outputs() -> None:
    cfg = ModelConfig.demo()
    bn_cfg = cfg.model_copy(update={"resnet": cfg.resnet.model_copy(update={"norm": "BN"})})
    frozen_cfg = cfg.model_copy(update={"resnet": cfg.resnet.model_copy(update={"norm": "FrozenBN"})})
    bn, frozen = build_model(bn_cfg).eval(), build_model(frozen_cfg).eval()
    state = bn.state_dict()
    gen = torch.Generator().manual_seed(0)
    for key in state:
        if key.endswith(("running_mean", "norm.bias")):
            state[key] = torch.randn(state[key].shape, generator=gen) * 0.1
        elif key.endswith(("running_var", "norm.weight")) and "bottom_up" in key:
            state[key] = torch.rand(state[key].shape, generator=gen) + 0.5
    bn.load_state_dict(state)
    load_weights(frozen, state)  # drops num_batches_tracked
    load_weights(bn, frozen.state_dict())  # and fills it back in
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = bn.backbone(x), frozen.backbone(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dino_resnet50_initialises_the_bottom_up_network(tmp_path, model_300) -> None:
    torchvision_state = torchvision.models.resnet50().state_dict()
    gen = torch.Generator().manual_seed(1)
    torchvision_state = {
        k: (torch.randn(v.shape, generator=gen) if v.dtype.is_floating_point else v) for k, v in torchvision_state.items()
    }
    dino = {k: v for k, v in torchvision_state.items() if not k.startswith("fc.")}
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(dino, path)
    assert load_backbone_init(model_300, path) == path
    bottom_up = model_300.backbone.bottom_up.state_dict()
    assert torchvision_resnet_to_detectron2("layer3.5.downsample.1.running_var") == "res4.5.shortcut.norm.running_var"
    for key, value in dino.items():
        assert torch.equal(bottom_up[torchvision_resnet_to_detectron2(key)], value), key
    del dino["layer4.2.bn3.bias"]
    torch.save(dino, path)
    with pytest.raises(CheckpointError, match="res5.2.conv3.norm.bias"):
        load_backbone_init(model_300, path)


def test_weight_search_order_and_offline_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("U2SEG_OFFLINE", "1")
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("U2SEG_WEIGHTS", str(folder))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_model_weights()
    message = str(info.value)
    assert "cocotrain_300_0089999.pth" in message and "U2SEG_WEIGHTS" in message and "github.com/u2seg" in message
    (folder / "cocotrain_300_0089999.pth").write_bytes(b"x")
    assert resolve_model_weights() == folder / "cocotrain_300_0089999.pth"
    single = tmp_path / "my_model.pth"
    single.write_bytes(b"x")
    monkeypatch.setenv("U2SEG_WEIGHTS", str(single))
    assert resolve_model_weights() == single
    assert resolve_model_weights(str(single)) == single
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_model_weights(str(tmp_path / "missing.pth"))


def test_numpy_arrays_keep_their_values() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert torch.equal(state_dict_of({"model": {"a": array}}, "x")["a"], torch.from_numpy(array))
