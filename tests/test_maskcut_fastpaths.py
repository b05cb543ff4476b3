"""GPU-minded fast paths checked on the CPU: batched CLS crops, the Krylov test schedule, fp32 keys, RLE pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from u2seg_core.backbone import DinoViT
from u2seg_core.coco import encode_rle, mask_bbox
from u2seg_core.config import KrylovConfig
from u2seg_core.maskcut import PatchGraph, cosine_edges
from u2seg_core.maskcut.embed import (
    batched_instance_crops,
    cls_crop_embeddings,
    cls_crop_embeddings_batched,
    instance_crop,
    resize_weights,
)
from u2seg_core.maskcut.postprocess import annotation_fields, encode_async
from u2seg_core.maskcut.solvers import solve_fast
from u2seg_core.synth.scene import render_scene

pytestmark = pytest.mark.usefixtures("one_thread")


def _instances(seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Images of mixed sizes (portrait, landscape, thin) and 2-3 random non-empty masks on each."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(61, 90, 3), (120, 47, 3), (18, 200, 3)]]
    masks, owner = [], []
    for b, image in enumerate(images):
        height, width = image.shape[:2]
        for _ in range(int(rng.integers(2, 4))):
            y0, x0 = int(rng.integers(0, height - 1)), int(rng.integers(0, width - 1))
            h, w = int(rng.integers(1, height - y0 + 1)), int(rng.integers(1, width - x0 + 1))
            mask = np.zeros((height, width), bool)
            mask[y0 : y0 + h, x0 : x0 + w] = rng.random((h, w)) > 0.3
            mask[y0, x0] = True
            masks.append(mask)
            owner.append(b)
    return images, masks, owner


@pytest.mark.parametrize(("length", "new_size"), [(37, 96), (300, 96), (96, 96), (1, 96), (97, 40)])
def test_resize_weights_are_torch_antialiased_bilinear(length, new_size):
    values = torch.rand(1, 1, length, 5, dtype=torch.float64)
    expected = F.interpolate(values, size=(new_size, 5), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    offset = (new_size - min(new_size, 32)) // 2
    weights = resize_weights(
        torch.tensor([length]), torch.tensor([new_size]), torch.tensor([offset]), min(new_size, 32), length + 3
    )[0].double()
    got = weights[:, :length] @ values[0, 0]
    torch.testing.assert_close(got, expected[offset : offset + min(new_size, 32)], atol=1e-6, rtol=0)
    assert float(weights[:, length:].abs().max()) == 0.0  # padding past the source never contributes


def test_batched_crops_equal_per_crop_reference():
    images, masks, owner = _instances(0)
    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    padded = torch.zeros(len(images), height, width, 3, dtype=torch.uint8)
    stacked = torch.zeros(len(masks), height, width, dtype=torch.bool)
    for i, image in enumerate(images):
        padded[i, : image.shape[0], : image.shape[1]] = torch.from_numpy(image)
    for i, mask in enumerate(masks):
        stacked[i, : mask.shape[0], : mask.shape[1]] = torch.from_numpy(mask)
    got = batched_instance_crops(padded, stacked, torch.tensor(owner), 48)
    assert got.shape == (len(masks), 3, 48, 48) and got.dtype == torch.uint8
    for i, mask in enumerate(masks):
        reference = instance_crop(images[owner[i]], mask, 48, torch.device("cpu"))
        difference = (reference.int() - got[i].int()).abs()
        assert int(difference.max()) <= 1, i  # float rounding at .5 only
        assert float((difference > 0).float().mean()) < 0.01, i


def test_batched_cls_embeddings_equal_per_crop_embeddings():
    vit = DinoViT.from_checkpoint("vit_small_patch8", None, torch.device("cpu"))
    images, masks, owner = _instances(1)
    per_image = [np.stack([m for m, o in zip(masks, owner) if o == b]) for b in range(len(images))]
    batched = cls_crop_embeddings_batched(
        vit, [torch.from_numpy(im) for im in images], [torch.from_numpy(m) for m in per_image], 32, 4
    )
    reference = cls_crop_embeddings(vit, [images[o] for o in owner], masks, 32, 4)
    assert batched.shape == reference.shape == (len(masks), 384)
    cosine = F.cosine_similarity(batched, reference, dim=1)
    assert float(cosine.min()) > 0.999, cosine
    empty = cls_crop_embeddings_batched(vit, [torch.from_numpy(images[0])], [torch.zeros(0, 61, 90, dtype=torch.bool)], 32, 4)
    assert empty.shape == (0, 384)


def _graph(n_images: int, grid: int, seed: int) -> PatchGraph:
    from u2seg_core.backbone import build_backbone
    from u2seg_core.config import BackboneConfig

    rgb = np.stack([render_scene(np.random.default_rng([seed, i]), grid * 8).rgb for i in range(n_images)])
    keys = build_backbone(BackboneConfig(arch="pixel", device="cpu"))(
        torch.from_numpy(rgb).permute(0, 3, 1, 2), frozenset({"keys"})
    ).keys
    return PatchGraph(cosine_edges(keys, 0.15), torch.ones(n_images, grid * grid, dtype=torch.bool), 1e-5, False)


def _host_syncs(fn) -> int:
    """Scalar reads (`item`, `bool`, `int`) and boolean indexing (`nonzero`): the ops that sync a CUDA device."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts = {e.key: e.count for e in prof.key_averages()}
    return counts.get("aten::_local_scalar_dense", 0) + counts.get("aten::nonzero", 0)


def test_krylov_test_schedule_keeps_the_eigenvectors_and_cuts_syncs():
    graph = _graph(6, 24, seed=5)
    every_step = KrylovConfig(first_check=1, check_every=1)
    scheduled = KrylovConfig(first_check=4, check_every=2)
    reference = solve_fast(graph, every_step)
    result = solve_fast(graph, scheduled)
    assert not bool(result.dense.any()) and not bool(reference.dense.any())
    cosine = (reference.vectors * result.vectors).sum(1).abs() / (
        reference.vectors.norm(dim=1) * result.vectors.norm(dim=1)
    )
    assert float((1.0 - cosine).max()) < 1e-12
    torch.testing.assert_close(result.values, reference.values, atol=1e-12, rtol=0)
    steps = result.krylov_dim // KrylovConfig().block
    assert bool(((steps >= 4) & ((steps - 4) % 2 == 0)).all()), result.krylov_dim  # tested only on schedule
    assert bool((result.krylov_dim >= reference.krylov_dim).all())
    assert _host_syncs(lambda: solve_fast(graph, scheduled)) < _host_syncs(lambda: solve_fast(graph, every_step))


def test_krylov_loop_syncs_once_per_test():
    graph = _graph(4, 20, seed=6)
    settings = KrylovConfig(first_check=4, check_every=2)
    result = solve_fast(graph, settings, sync_free=True)  # the GPU variant
    n_tests = int((result.krylov_dim.max() // 4 - 4) // 2 + 1)
    # per test: the pending count (+ the copy of the Ritz problem to the host, not counted here); a
    # shrink of the batch (at most one per test) and the final list of unsolved images: one nonzero each
    assert _host_syncs(lambda: solve_fast(graph, settings, sync_free=True)) <= 2 * n_tests + 1


def test_fp32_keys_switch():
    vit = DinoViT.from_checkpoint("vit_small_patch8", None, torch.device("cpu"))
    pixels = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    keys_fp32 = vit(pixels, frozenset({"keys"})).keys  # CPU: no autocast
    try:
        vit.amp_on_cpu = True
        results = {}
        for precision in ("amp", "fp32_last_block", "fp32"):
            vit.keys_precision = precision
            results[precision] = vit(pixels, frozenset({"keys"})).keys
            full = vit(pixels)  # keys through the full pass agree with the keys-only pass
            torch.testing.assert_close(full.keys, results[precision], atol=0, rtol=0)
    finally:
        vit.amp_on_cpu = False
        vit.keys_precision = "amp"
    torch.testing.assert_close(results["fp32"], keys_fp32)
    error = {p: float((k - keys_fp32).abs().max()) for p, k in results.items()}
    assert error["amp"] > 1e-3 and error["fp32_last_block"] < error["amp"], error


def test_encode_async_gives_the_coco_fields():
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    fields = encode_async(mask).result()
    assert fields == annotation_fields(mask)
    assert fields == {"segmentation": encode_rle(mask), "area": 15, "bbox": mask_bbox(mask)}


def test_sync_free_orthonormalisation_gives_the_same_solution_with_fewer_syncs():
    """The GPU variant (no host check of weak QR columns), run on the CPU, incl. a degenerate graph that needs it."""
    graph = _graph(4, 20, seed=7)
    a, b = solve_fast(graph, sync_free=False), solve_fast(graph, sync_free=True)
    torch.testing.assert_close(b.vectors, a.vectors, atol=1e-10, rtol=0)
    assert torch.equal(a.krylov_dim, b.krylov_dim)
    assert _host_syncs(lambda: solve_fast(graph, sync_free=True)) < _host_syncs(lambda: solve_fast(graph, sync_free=False))
    complete = PatchGraph(torch.ones(2, 36, 36), torch.ones(2, 36, dtype=torch.bool), 1e-5, False)
    result = solve_fast(complete, sync_free=True)  # every Krylov column is weak: replaced, then the dense fallback
    assert bool(result.dense.all()) and torch.isfinite(result.vectors).all()
