"""GPU paths against the CPU paths on small inputs (`pytest -m gpu`; skipped without CUDA).

What is compared: ViT keys (bf16 / fp32 switch, CUDA vs CPU), the Krylov solver and the whole MaskCut
procedure, the torch CRF (CUDA vs CPU torch vs pydensecrf2), faiss-gpu vs faiss-cpu K-means, STEGO
training steps, batched CLS crops and embeddings vs the per-crop reference, and pinned loader batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def _scenes(n: int, size: int, seed: int = 0) -> torch.Tensor:
    from u2seg_core.synth.scene import render_scene

    rgb = np.stack([render_scene(np.random.default_rng([seed, i]), size).rgb for i in range(n)])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()


def _pixel_keys(n: int, grid: int, seed: int) -> torch.Tensor:
    from u2seg_core.backbone import PixelFeaturizer

    return PixelFeaturizer("cpu")(_scenes(n, grid * 8, seed), frozenset({"keys"})).keys


def test_vit_keys_bf16_and_fp32_against_the_cpu():
    from u2seg_core.backbone import DinoViT

    pixels = _scenes(2, 64)
    cpu = DinoViT.from_checkpoint("vit_small_patch8", None, CPU)(pixels, frozenset({"keys"})).keys
    gpu = DinoViT.from_checkpoint("vit_small_patch8", None, CUDA)
    keys = {}
    for precision in ("amp", "fp32_last_block", "fp32"):
        gpu.keys_precision = precision
        keys[precision] = gpu(pixels, frozenset({"keys"})).keys.cpu()
        assert keys[precision].dtype == torch.float32 and keys[precision].shape == cpu.shape
    scale = float(cpu.abs().mean())
    assert float((keys["fp32"] - cpu).abs().mean()) / scale < 1e-2  # cuDNN may run the patch conv in TF32
    error = {p: float((k - keys["fp32"]).abs().mean()) / scale for p, k in keys.items()}
    assert 0 < error["amp"] < 5e-2, error
    assert error["fp32_last_block"] < error["amp"], error  # the keys themselves are no longer rounded to bf16


def test_krylov_solver_cuda_equals_cpu():
    from u2seg_core.maskcut import PatchGraph, cosine_edges
    from u2seg_core.maskcut.solvers import solve_fast

    keys = _pixel_keys(6, 30, seed=3)
    active = torch.ones(6, 900, dtype=torch.bool)
    cpu = solve_fast(PatchGraph(cosine_edges(keys, 0.15), active, 1e-5, False))
    gpu = solve_fast(PatchGraph(cosine_edges(keys.to(CUDA), 0.15), active.to(CUDA), 1e-5, False))
    assert gpu.vectors.device.type == "cuda"
    a, b = cpu.vectors, gpu.vectors.cpu()
    cosine = (a * b).sum(1).abs() / (a.norm(dim=1) * b.norm(dim=1))
    assert float((1 - cosine).max()) < 1e-10
    torch.testing.assert_close(gpu.values.cpu(), cpu.values, atol=1e-10, rtol=0)
    assert torch.equal(gpu.dense.cpu(), cpu.dense)


def test_maskcut_cuda_masks_equal_cpu_masks():
    from u2seg_core.maskcut import maskcut_batch

    keys = _pixel_keys(8, 30, seed=4)
    cpu = maskcut_batch(keys)
    gpu = maskcut_batch(keys.to(CUDA))
    same = (gpu.masks.cpu() == cpu.masks).flatten(1).all(1)
    # a cosine within float32 rounding of tau may flip one edge (GPU and CPU GEMMs round differently)
    assert int(same.sum()) >= 7, same
    assert torch.allclose(gpu.scores.cpu()[same], cpu.scores[same], atol=1e-9, rtol=0)


def test_torch_crf_on_cuda_equals_cpu_and_pydensecrf():
    from u2seg_core.config import CRFConfig
    from u2seg_core.maskcut.crf import crf_torch

    pixels = _scenes(3, 96, seed=5)
    masks = torch.zeros(3, 2, 96, 96, dtype=torch.bool)
    masks[:, 0, 20:70, 10:60] = True
    masks[:, 1, 50:90, 40:95] = True
    params = CRFConfig()
    cpu = crf_torch(pixels, masks, params)
    gpu = crf_torch(pixels.to(CUDA), masks.to(CUDA), params).cpu()
    assert float((gpu != cpu).float().mean()) < 1e-3
    pytest.importorskip("pydensecrf.densecrf")
    from u2seg_core.maskcut.crf import crf_reference

    rgb = pixels.permute(0, 2, 3, 1).numpy()
    reference = np.stack([[crf_reference(rgb[b], masks[b, r].numpy(), params) for r in range(2)] for b in range(3)])
    ious = [(a & b).sum() / max((a | b).sum(), 1) for a, b in zip(reference.reshape(6, -1), gpu.numpy().reshape(6, -1))]
    assert np.mean(ious) >= 0.95, ious  # the CPU test's bound for torch vs pydensecrf


def test_faiss_gpu_kmeans_inertia_matches_cpu():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss-gpu not installed")
    from u2seg_core.cluster.kmeans import kmeans_fit

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20, 32))[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    _, cpu = kmeans_fit(x, 20, niter=20, use_gpu="never")
    _, gpu = kmeans_fit(x, 20, niter=20, use_gpu="always")
    assert gpu["gpu"] and not cpu["gpu"]
    assert abs(gpu["inertia"] / cpu["inertia"] - 1) < 0.02


def test_stego_training_steps_on_cuda_follow_the_cpu(tmp_path):
    from u2seg_core.config import StegoConfig
    from u2seg_core.stego.train import train_stego

    tokens = torch.randn(6, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = StegoConfig(dim=8, n_classes=3, steps=3, batch_size=4, dropout=0.0, crop="none", train_grid=8,
                      checkpoint_every=100)
    cpu = train_stego(tokens, cfg, str(tmp_path / "cpu"), "cpu")
    gpu = train_stego(tokens, cfg, str(tmp_path / "gpu"), "cuda")
    np.testing.assert_allclose(gpu.history["loss"], cpu.history["loss"], rtol=1e-3, atol=1e-5)
    for name, value in cpu.head.state_dict().items():  # Adam's first steps move by ~lr whatever the gradient size
        torch.testing.assert_close(gpu.head.state_dict()[name].cpu(), value, atol=6 * cfg.lr, rtol=1e-3)


def test_stego_inference_torch_crf_on_cuda_equals_cpu():
    from u2seg_core.config import StegoConfig
    from u2seg_core.stego.crf import dense_crf_torch

    pixels = _scenes(2, 64, seed=6)
    log_probs = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    params = StegoConfig().crf_params
    cpu = dense_crf_torch(pixels, log_probs, params).argmax(1)
    gpu = dense_crf_torch(pixels.to(CUDA), log_probs.to(CUDA), params).argmax(1).cpu()
    assert float((gpu != cpu).float().mean()) < 1e-3


def test_batched_embeddings_on_cuda_equal_per_crop_and_cpu():
    from u2seg_core.backbone import DinoViT
    from u2seg_core.maskcut.embed import cls_crop_embeddings, cls_crop_embeddings_batched

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(70, 100, 3), (90, 45, 3)]]
    masks = []
    for image in images:
        stack = np.zeros((2, *image.shape[:2]), bool)
        stack[0, 5:40, 10:60] = True
        stack[1, 30:, 20:] = rng.random(stack[1, 30:, 20:].shape) > 0.4
        masks.append(stack)
    flat_images = [im for im, m in zip(images, masks) for _ in m]
    flat_masks = [mask for m in masks for mask in m]
    vit = DinoViT.from_checkpoint("vit_small_patch8", None, CUDA, amp=False)
    gpu = cls_crop_embeddings_batched(
        vit, [torch.from_numpy(im).to(CUDA) for im in images], [torch.from_numpy(m).to(CUDA) for m in masks], 32, 8
    )
    per_crop = cls_crop_embeddings(vit, flat_images, flat_masks, 32, 8)
    cpu = cls_crop_embeddings_batched(
        DinoViT.from_checkpoint("vit_small_patch8", None, CPU), [torch.from_numpy(im) for im in images],
        [torch.from_numpy(m) for m in masks], 32, 8,
    )
    assert float(F.cosine_similarity(gpu, per_crop, dim=1).min()) > 0.999
    assert float(F.cosine_similarity(gpu, cpu, dim=1).min()) > 0.999


def test_loader_pins_pixels_and_originals(tmp_path):
    from PIL import Image

    from u2seg_core.io.loader import iter_batches
    from u2seg_core.manifest import ImageRecord, ShardManifest

    records = []
    for i, size in enumerate([(40, 30), (20, 50)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(path)
        records.append(ImageRecord(image_id=i + 1, file_name=path.name, url=str(path)))
    shard = ShardManifest(shard_index=0, source="test", images=records)
    (batch,) = list(iter_batches(shard, 16, 2, keep_original=True, pin_memory=True))
    assert batch.pixels.is_pinned()
    assert all(torch.from_numpy(o).is_pinned() for o in batch.originals)


def test_predictor_on_cuda_follows_the_cpu_in_fp32_and_bf16():
    """The U2Seg detector's CUDA path (non-blocking uint8 input copies, batched mask pasting, bf16 autocast with
    its host conversion) against the CPU on a small random-weight model; fp32 may differ by TF32 rounding."""
    import copy

    from u2seg_core.model import ModelConfig, build_model
    from u2seg_core.model.predictor import Predictor, configure

    torch.manual_seed(0)
    cfg = configure(ModelConfig.demo(num_things=12, num_stuff=8), score_thresh=0.0, min_size_test=160,
                    max_size_test=256)
    model = build_model(cfg)
    image = _scenes(1, 192)[0].permute(1, 2, 0).numpy()
    cpu = Predictor.from_model(copy.deepcopy(model), cfg, device="cpu")(image)
    fp32 = Predictor.from_model(copy.deepcopy(model), cfg, device="cuda", amp=False)(image)
    bf16 = Predictor.from_model(model, cfg, device="cuda", amp=True)(image)
    for pred in (fp32, bf16):
        assert pred.sem_seg.dtype == np.uint8 and pred.pred_masks.dtype == bool
        assert pred.sem_seg.shape == pred.panoptic_seg.shape == cpu.sem_seg.shape
    assert float((fp32.sem_seg == cpu.sem_seg).mean()) > 0.99
    assert float((bf16.sem_seg == cpu.sem_seg).mean()) > 0.9
    assert abs(len(fp32.scores) - len(cpu.scores)) <= max(2, len(cpu.scores) // 10)
    np.testing.assert_allclose(np.sort(fp32.scores)[::-1][:5], np.sort(cpu.scores)[::-1][:5], atol=1e-2)
