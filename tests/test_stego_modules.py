"""STEGO head, cluster probe, KNN table and five-crop items against simple references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from u2seg_core.stego.crops import TrainingItems, crop_boxes
from u2seg_core.stego.head import StegoHead
from u2seg_core.stego.knn import knn_table
from u2seg_core.stego.probe import ClusterProbe, LinearProbe


def test_head_shapes_and_branches():
    torch.manual_seed(0)
    head = StegoHead(in_dim=12, dim=5, dropout=0.1).eval()
    x = torch.randn(3, 12, 6, 7)
    codes = head(x)
    assert codes.shape == (3, 5, 6, 7)
    # eval: sum of a 1x1 linear map and a 1x1 conv-ReLU-conv map, computed by hand per pixel
    w1, b1 = head.linear[0].weight[:, :, 0, 0], head.linear[0].bias
    wa, ba = head.nonlinear[0].weight[:, :, 0, 0], head.nonlinear[0].bias
    wb, bb = head.nonlinear[2].weight[:, :, 0, 0], head.nonlinear[2].bias
    pixels = x.permute(0, 2, 3, 1)
    expected = pixels @ w1.T + b1 + torch.relu(pixels @ wa.T + ba) @ wb.T + bb
    torch.testing.assert_close(codes, expected.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    assert torch.equal(head.loss_features(x), x)
    assert StegoHead(768).dim == 70


def test_head_channel_dropout_in_training():
    torch.manual_seed(0)
    head = StegoHead(in_dim=64, dim=4, dropout=0.5).train()
    x = torch.ones(2, 64, 5, 5)
    dropped = head.loss_features(x)
    per_channel = dropped.amax(dim=(2, 3))
    # whole channels are zeroed, the rest scaled by 1 / (1 - p)
    assert set(torch.unique(per_channel).tolist()) == {0.0, 2.0}
    assert torch.equal(dropped.amin(dim=(2, 3)), per_channel)
    assert not torch.equal(head(x), head(x))  # two independent dropout draws


def test_knn_matches_bruteforce():
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((40, 16)).astype(np.float16)
    table = knn_table(pooled, k=5)
    assert table.shape == (40, 5) and table.dtype == np.int64
    x = pooled.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    expected = np.argsort(-sim, axis=1)[:, :5]
    np.testing.assert_array_equal(table, expected)


def test_knn_duplicates_never_list_self_and_small_sets():
    pooled = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    table = knn_table(pooled, k=7)  # k clipped to n - 1
    assert table.shape == (4, 3)
    assert not (table == np.arange(4)[:, None]).any()
    with pytest.raises(ValueError, match="at least 2"):
        knn_table(pooled[:1], k=3)


def test_cluster_probe_matches_spherical_kmeans_objective():
    torch.manual_seed(0)
    probe = ClusterProbe(dim=6, n_classes=4)
    codes = torch.randn(2, 6, 3, 5, requires_grad=True)
    sim = probe.similarity(codes)
    flat = F.normalize(codes.detach().permute(0, 2, 3, 1).reshape(-1, 6), dim=1)
    centroids = F.normalize(probe.clusters.detach(), dim=1)
    expected = (flat @ centroids.T).reshape(2, 3, 5, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(sim.detach(), expected)
    loss = probe.loss(codes)
    torch.testing.assert_close(loss.detach(), -(flat @ centroids.T).max(dim=1).values.mean())
    loss.backward()
    assert codes.grad is None  # detached: the probe never trains the head
    assert probe.clusters.grad is not None
    log_probs = probe.log_probs(codes)
    torch.testing.assert_close(log_probs.detach(), torch.log_softmax(2 * expected, dim=1))
    assert LinearProbe(6, 4).log_probs(codes).shape == (2, 4, 3, 5)


def test_five_crop_boxes_follow_torchvision():
    assert crop_boxes(56, 56, "five") == [
        (0, 0, 28, 28), (0, 28, 28, 28), (28, 0, 28, 28), (28, 28, 28, 28), (14, 14, 28, 28)
    ]
    assert crop_boxes(28, 28, "none") == [(0, 0, 28, 28)]
    from torchvision.transforms.functional import five_crop

    grid = torch.arange(29 * 29).reshape(1, 29, 29)
    crops = five_crop(grid, [14, 14])
    for (top, left, h, w), crop in zip(crop_boxes(29, 29, "five"), crops):
        assert torch.equal(grid[:, top : top + h, left : left + w], crop)


def test_training_items_gather_and_pool():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 4, 8, 8)).astype(np.float16)
    items = TrainingItems(tokens, "five", train_grid=8, device=torch.device("cpu"))
    assert len(items) == 15 and items.channels == 4
    got = items.gather(np.array([7, 0]))  # image 1 crop 2 (bottom-left), image 0 crop 0
    region = torch.from_numpy(tokens[1, :, 4:8, 0:4]).float()[None]
    torch.testing.assert_close(got[0:1], F.interpolate(region, size=(8, 8), mode="bilinear", align_corners=False))
    same = TrainingItems(tokens, "none", train_grid=8, device=torch.device("cpu"))
    torch.testing.assert_close(same.gather(np.array([2])), torch.from_numpy(tokens[2:3]).float())
    pooled = items.pooled(chunk=4)
    assert pooled.shape == (15, 4)
    np.testing.assert_allclose(pooled[7], got[0].mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6)
