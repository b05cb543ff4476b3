"""Released STEGO checkpoints (Lightning layout, foreign hparams classes) and our head.pt round trip."""

import pickle

import pytest
import torch

from u2seg_core.stego.checkpoint import load_head, load_released, read_checkpoint, save_head


@pytest.fixture()
def released_ckpt(tmp_path, make_released_stego_ckpt):
    """(path, state_dict) of a fake released checkpoint."""
    path = tmp_path / "cocostuff27_fake.ckpt"
    return path, make_released_stego_ckpt(path)


def test_plain_weights_only_load_refuses_the_file(released_ckpt):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(released_ckpt[0], weights_only=True)


def test_released_checkpoint_maps_onto_head_and_probes(released_ckpt):
    path, state = released_ckpt
    model = load_released(str(path))
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
        logits = torch.einsum("bchw,kc->bkhw", codes, w("linear_probe.weight"))
        logits = logits + state["linear_probe.bias"][:, None, None]
        expected_log_probs = torch.log_softmax(logits, 1)
        torch.testing.assert_close(model.linear_probe.log_probs(codes), expected_log_probs, rtol=1e-4, atol=1e-4)


def test_head_file_round_trip(released_ckpt, tmp_path):
    model = load_released(str(released_ckpt[0]))
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
