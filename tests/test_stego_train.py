"""STEGO training from stored tokens: outputs, checkpoints and exact resume."""

import json
import logging

import numpy as np
import pytest
import torch

from u2seg_core import storage
from u2seg_core.config import StegoConfig
from u2seg_core.stego.checkpoint import load_head
from u2seg_core.stego.train import latest_checkpoint, train_stego

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def tokens(n=6, channels=16, grid=12, seed=0):
    return np.random.default_rng(seed).standard_normal((n, channels, grid, grid)).astype(np.float16)


CFG = StegoConfig(dim=6, n_classes=3, steps=12, batch_size=4, checkpoint_every=5, train_grid=8,
                  loss={"feature_samples": 5, "neg_samples": 2})


def test_outputs_and_checkpoints(tmp_path):
    out = str(tmp_path / "stego")
    result = train_stego(tokens(), CFG, out, device="cpu")
    assert result.resumed_from == 0 and result.steps == 12 and result.n_items == 30
    assert storage.listdir(f"{out}/checkpoints") == ["step-000005.pt", "step-000010.pt", "step-000012.pt"]
    history = json.loads((tmp_path / "stego" / "loss.json").read_text())["history"]
    assert history["step"] == list(range(12)) and len(history["probe"]) == 12
    assert all(np.isfinite(history[k]).all() for k in ("loss", "self", "knn", "random", "probe"))
    assert (tmp_path / "stego" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_head(f"{out}/head.pt")
    assert model.meta["source"] == "trained" and model.meta["in_dim"] == 16
    assert torch.equal(model.cluster_probe.clusters, result.cluster_probe.clusters.cpu())
    assert not model.head.training


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = train_stego(tokens(), CFG, str(tmp_path / "full"), device="cpu")
    interrupted = str(tmp_path / "parts")
    first = train_stego(tokens(), CFG.model_copy(update={"steps": 7}), interrupted, device="cpu")
    assert first.resumed_from == 0
    assert latest_checkpoint(interrupted, 12)[0] == 7
    resumed = train_stego(tokens(), CFG, interrupted, device="cpu")
    assert resumed.resumed_from == 7
    for a, b in zip(full.head.state_dict().values(), resumed.head.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(full.cluster_probe.clusters, resumed.cluster_probe.clusters)
    assert full.history == resumed.history
    # training changed the weights at all (the comparison above is not vacuous)
    fresh = train_stego(tokens(), CFG.model_copy(update={"steps": 1}), str(tmp_path / "one"), device="cpu")
    assert not torch.equal(fresh.cluster_probe.clusters, full.cluster_probe.clusters)


def test_checkpoints_of_another_config_are_replaced(tmp_path, caplog):
    out = str(tmp_path / "stego")
    train_stego(tokens(), CFG.model_copy(update={"steps": 5}), out, device="cpu")
    with caplog.at_level(logging.WARNING):
        result = train_stego(tokens(), CFG.model_copy(update={"steps": 6, "dim": 7}), out, device="cpu")
    assert result.resumed_from == 0
    assert "another training config" in caplog.text
    assert storage.listdir(f"{out}/checkpoints") == ["step-000005.pt", "step-000006.pt"]
    assert load_head(f"{out}/head.pt").meta["dim"] == 7
