"""MaskCut NCut solvers: the dense reference, the fast batched solver against it, the patch graph."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from u2seg_core.backbone import build_backbone
from u2seg_core.config import BackboneConfig
from u2seg_core.maskcut import PatchGraph, cosine_edges, maskcut_batch, maskcut_reference, solve
from u2seg_core.maskcut.affinity import exact_edge_product
from u2seg_core.synth.scene import render_scene


pytestmark = pytest.mark.usefixtures("one_thread")


def pixel_keys(n: int, grid: int, seed: int) -> torch.Tensor:
    """(n, C, grid, grid) `pixel` keys of synthetic scenes of grid * 8 px."""
    backbone = build_backbone(BackboneConfig(arch="pixel", device="cpu"))
    rgb = np.stack([render_scene(np.random.default_rng([seed, i]), grid * 8).rgb for i in range(n)])
    return backbone(torch.from_numpy(rgb).permute(0, 3, 1, 2), frozenset({"keys"})).keys


def blob_keys(n: int, grid: int, seed: int, channels: int = 32) -> torch.Tensor:
    """(n, C, grid, grid) random structured features: background + linear ramps + 1-4 disc blobs + noise."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, grid), torch.linspace(0, 1, grid), indexing="ij")
    out = []
    for _ in range(n):
        f = torch.randn(channels, 1, 1, generator=gen) * float(torch.rand(1, generator=gen))
        f = f + torch.randn(channels, 1, 1, generator=gen) * (xx - 0.5)
        f = f + torch.randn(channels, 1, 1, generator=gen) * (yy - 0.5)
        for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
            cy, cx = torch.rand(2, generator=gen)
            radius = 0.08 + 0.2 * float(torch.rand(1, generator=gen))
            disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2).float()
            f = f + torch.randn(channels, 1, 1, generator=gen) * disc
        f = f + torch.randn(channels, grid, grid, generator=gen) * (0.1 + 0.5 * float(torch.rand(1, generator=gen)))
        out.append(f)
    return torch.stack(out)


def random_graph(n_images: int = 3, grid: int = 12, seed: int = 0, zero_is_edge: bool = False) -> PatchGraph:
    gen = torch.Generator().manual_seed(seed)
    keys = blob_keys(n_images, grid, seed)
    active = torch.rand(n_images, grid * grid, generator=gen) > 0.3
    return PatchGraph(cosine_edges(keys, 0.15), active, 1e-5, zero_is_edge)


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_edge_product_is_float64_accurate_in_float32_gemm(precision):
    gen = torch.Generator().manual_seed(0)
    edges = (torch.rand(2, 3600, 3600, generator=gen) > 0.3).float()
    x = torch.randn(2, 3600, 3, generator=gen, dtype=torch.float64)
    x[:, :, 1] *= torch.logspace(-12, 0, 3600, dtype=torch.float64)  # a wide dynamic range
    expected = torch.bmm(edges.double(), x)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        got = exact_edge_product(edges, x)
    finally:
        torch.set_float32_matmul_precision(saved)
    error = (got - expected).abs() / expected.abs().amax(dim=1, keepdim=True)
    assert float(error.max()) < 1e-10


def test_cosine_edges_equal_the_thresholded_gram_matrix():
    keys = torch.randn(2, 16, 9, 11)
    keys[0, :, 0, 0] = 0.0  # a zero key: cosine 0 with everything
    feats = torch.nn.functional.normalize(keys.flatten(2), dim=1)
    expected = (feats.transpose(1, 2) @ feats > 0.15).float()
    assert torch.equal(cosine_edges(keys, 0.15), expected)
    assert torch.equal(cosine_edges(keys, -0.5)[0, 0], torch.ones(99))  # 0 > -0.5: the zero key links everyone


@pytest.mark.parametrize("zero_is_edge", [False, True])
def test_patch_graph_matches_the_literal_affinity(zero_is_edge):
    graph = random_graph(zero_is_edge=zero_is_edge)
    x = torch.randn(graph.batch, graph.n, 2, dtype=torch.float64)
    for b in range(graph.batch):
        dense = graph.dense(b)
        expected = dense @ x[b].numpy()
        np.testing.assert_allclose(graph.matmul(x)[b].numpy(), expected, rtol=0, atol=1e-11 * np.abs(expected).max())
        np.testing.assert_allclose(graph.degrees()[b].numpy(), dense.sum(1), rtol=1e-12)


def test_round_graph_equals_affinity_of_zeroed_features():
    """Masking the round-0 edges = rebuilding the affinity from zeroed keys (the reference's way)."""
    keys = blob_keys(1, 10, 3)
    active = torch.rand(1, 100, generator=torch.Generator().manual_seed(1)) > 0.4
    graph = PatchGraph(cosine_edges(keys, 0.15), active, 1e-5, zero_is_edge=False)
    feats = (keys.flatten(2)[0] * active[0]).numpy()
    unit = feats / np.maximum(np.linalg.norm(feats, axis=0, keepdims=True), 1e-12)
    literal = np.where(unit.T @ unit > 0.15, 1.0, 1e-5)
    np.testing.assert_array_equal(graph.dense(0), literal)


def test_dense_solver_is_the_generalised_eigh_reference():
    graph = random_graph()
    result = solve(graph, "dense")
    for b in range(graph.batch):
        a = graph.dense(b)
        d = np.diag(a.sum(1))
        values = scipy.linalg.eigh(d - a, d, eigvals_only=True)
        y = result.vectors[b].numpy()
        assert result.values[b].item() == pytest.approx(values[1], abs=1e-10)
        residual = (d - a) @ y - values[1] * d @ y
        assert np.linalg.norm(residual) < 1e-9 * np.linalg.norm(d @ y)
    assert bool(result.dense.all())


def test_fast_solver_falls_back_on_a_degenerate_graph():
    graph = PatchGraph(torch.ones(2, 64, 64), torch.ones(2, 64, dtype=torch.bool), 1e-5, False)
    result = solve(graph, "fast")
    assert bool(result.dense.all())
    assert torch.isfinite(result.vectors).all() and torch.isfinite(result.values).all()


def _agreement(keys: torch.Tensor) -> tuple[list[float], list[bool]]:
    dense = maskcut_batch(keys, solver="dense")
    fast = maskcut_batch(keys, solver="fast")
    ious = []
    for a, b in zip(dense.masks.flatten(0, 1), fast.masks.flatten(0, 1)):
        union = int((a | b).sum())
        ious.append(int((a & b).sum()) / union if union else 1.0)
    same = (dense.bipartition == fast.bipartition).flatten(1).all(1).tolist()
    return ious, same


def _agreement_over(n_large: int) -> tuple[list[float], list[bool]]:
    """`_agreement` over `n_large` pixel and `n_large` blob inputs on 30x30 grids, then 12 + 12 on 20x20 grids."""
    ious, same = [], []
    for keys in (
        pixel_keys(n_large, 30, seed=11),
        blob_keys(n_large, 30, seed=12, channels=36),
        pixel_keys(12, 20, seed=13),
        blob_keys(12, 20, seed=14),
    ):
        part_ious, part_same = _agreement(keys)
        ious += part_ious
        same += part_same
    return ious, same


def test_fast_solver_agrees_with_dense_on_30_inputs():
    """The first 30 of the 60 inputs below (3 + 3 on 30x30 grids, 24 on 20x20), 3 rounds: ~5 s."""
    ious, same = _agreement_over(3)
    assert len(same) == 30
    assert np.mean(ious) >= 0.99, np.mean(ious)
    assert np.mean(same) >= 0.98, np.mean(same)


@pytest.mark.slow
def test_fast_solver_agrees_with_dense_on_60_inputs():
    """Pixel features of synthetic scenes + random structured features, 30x30 and 20x20 grids, 3 rounds (~25 s)."""
    ious, same = _agreement_over(18)
    assert len(same) == 60
    assert np.mean(ious) >= 0.99, np.mean(ious)
    assert np.mean(same) >= 0.98, np.mean(same)


def test_batched_procedure_equals_the_per_image_reference():
    """maskcut_batch (dense) = CutLER's per-image procedure, mask for mask, all rounds."""
    keys = torch.cat([pixel_keys(3, 20, seed=21), blob_keys(3, 20, seed=22, channels=36)])
    batched = maskcut_batch(keys, solver="dense").masks.numpy()
    for b in range(len(keys)):
        np.testing.assert_array_equal(batched[b], maskcut_reference(keys[b].numpy()))
