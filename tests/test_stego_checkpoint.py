"""Released STEGO checkpoints (Lightning layout, foreign hparams classes) and our head.pt round trip."""

import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from u2seg_core.stego.checkpoint import load_head, load_released, read_checkpoint, save_head


def fake_foreign_module():
    """A stand-in for omegaconf / Lightning: classes that exist while saving and are gone while loading."""
    module = types.ModuleType("fake_omegaconf")

    class DictConfig:
        def __init__(self, content):
            self._content = {k: AnyNode(v, self) for k, v in content.items()}
            self._parent = None

        def __getstate__(self):
            return dict(self.__dict__)

    class AnyNode:
        def __init__(self, value, parent):
            self._val = value
            self._parent = parent  # a cycle, like omegaconf's nodes

    class ModelCheckpoint:
        pass

    for cls in (DictConfig, AnyNode, ModelCheckpoint):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    return module


def released_layout(dim=9, backbone_dim=32, patch=8, n_classes=27, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    d = backbone_dim
    state = OrderedDict(
        {
            "net.model.cls_token": r(1, 1, d),
            "net.model.pos_embed": r(1, 785, d),
            "net.model.patch_embed.proj.weight": r(d, 3, patch, patch),
            "net.model.patch_embed.proj.bias": r(d),
            "net.model.blocks.0.norm1.weight": r(d),
            "net.model.norm.weight": r(d),
            "net.cluster1.0.weight": r(dim, d, 1, 1),
            "net.cluster1.0.bias": r(dim),
            "net.cluster2.0.weight": r(d, d, 1, 1),
            "net.cluster2.0.bias": r(d),
            "net.cluster2.2.weight": r(dim, d, 1, 1),
            "net.cluster2.2.bias": r(dim),
            "cluster_probe.clusters": r(n_classes, dim),
            "linear_probe.weight": r(n_classes, dim, 1, 1),
            "linear_probe.bias": r(n_classes),
            "decoder.weight": r(d, dim, 1, 1),
            "decoder.bias": r(d),
        }
    )
    return state


@pytest.fixture()
def released_ckpt(tmp_path):
    module = fake_foreign_module()
    sys.modules[module.__name__] = module
    try:
        cfg = module.DictConfig({"pos_inter_weight": 1.0, "neg_inter_shift": 1.0, "dim": 9, "model_type": "vit_base"})
        checkpoint = {
            "epoch": 3,
            "global_step": 5000,
            "pytorch-lightning_version": "1.5.10",
            "state_dict": released_layout(),
            "callbacks": {module.ModelCheckpoint: {"best_model_score": torch.tensor(28.19), "dirpath": "/x"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"n_classes": 27, "cfg": cfg},
        }
        path = tmp_path / "cocostuff27_fake.ckpt"
        torch.save(checkpoint, path)
    finally:
        del sys.modules[module.__name__]
    return path


def test_plain_weights_only_load_refuses_the_file(released_ckpt):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(released_ckpt, weights_only=True)


def test_released_checkpoint_maps_onto_head_and_probes(released_ckpt):
    state = released_layout()
    model = load_released(str(released_ckpt))
    assert model.meta["dim"] == 9 and model.meta["in_dim"] == 32 and model.meta["n_classes"] == 27
    assert model.meta["backbone_dim"] == 32 and model.meta["backbone_patch"] == 8
    assert model.meta["hparams"]["n_classes"] == 27
    assert model.meta["hparams"]["cfg"]["pos_inter_weight"] == 1.0
    assert model.meta["hparams"]["cfg"]["model_type"] == "vit_base"

    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        codes = model.head(x)
        w = lambda k: state[k][:, :, 0, 0]  # noqa: E731
        px = x.permute(0, 2, 3, 1)
        hidden = torch.relu(px @ w("net.cluster2.0.weight").T + state["net.cluster2.0.bias"])
        expected = (px @ w("net.cluster1.0.weight").T + state["net.cluster1.0.bias"]
                    + hidden @ w("net.cluster2.2.weight").T + state["net.cluster2.2.bias"])
        torch.testing.assert_close(codes, expected.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-4)
        assert torch.equal(model.cluster_probe.clusters, state["cluster_probe.clusters"])
        logits = torch.einsum("bchw,kc->bkhw", codes, w("linear_probe.weight")) + state["linear_probe.bias"][:, None, None]
        torch.testing.assert_close(model.linear_probe.log_probs(codes), torch.log_softmax(logits, 1), rtol=1e-4, atol=1e-4)


def test_head_file_round_trip(released_ckpt, tmp_path):
    model = load_released(str(released_ckpt))
    url = str(tmp_path / "stego" / "head.pt")
    save_head(url, model.head, model.cluster_probe, model.meta, model.linear_probe)
    raw = torch.load(url, weights_only=True)  # plain: no stand-ins needed
    assert raw["format"] == "u2seg-stego-head/1"
    again = load_head(url)
    for a, b in zip(model.head.state_dict().values(), again.head.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(again.cluster_probe.clusters, model.cluster_probe.clusters)
    assert torch.equal(again.linear_probe.conv.weight, model.linear_probe.conv.weight)
    assert again.meta["hparams"]["cfg"]["dim"] == 9


def test_not_a_stego_checkpoint(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"backbone.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not a released STEGO checkpoint"):
        load_released(str(path))
    with pytest.raises(ValueError, match="not a u2seg STEGO head"):
        load_head(str(path))
    assert read_checkpoint(str(path))["state_dict"]["backbone.weight"].shape == (1,)
