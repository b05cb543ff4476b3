"""The torch dense CRF (permutohedral lattice in torch) against pydensecrf2 on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from u2seg_core.config import CRFConfig
from u2seg_core.maskcut.crf import crf_reference, crf_torch
from u2seg_core.synth.scene import render_scene

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic images with coarse masks: an object's 8x8-patch mask, jittered by a few patches."""
    images, masks = [], []
    for i in range(n):
        rng = np.random.default_rng([7, i])
        scene = render_scene(rng, size)
        ids, counts = np.unique(scene.instance_map[scene.instance_map > 0], return_counts=True)
        obj = scene.instance_map == ids[np.argmax(counts)]
        patches = obj.reshape(size // 8, 8, size // 8, 8).mean(axis=(1, 3)) > 0.5
        patches ^= rng.random(patches.shape) < 0.03
        images.append(scene.rgb)
        masks.append(np.kron(patches, np.ones((8, 8), bool)))
    return np.stack(images), np.stack(masks)


def test_torch_crf_matches_pydensecrf():
    images, masks = _pairs(10, 128)
    params = CRFConfig()
    reference = np.stack([crf_reference(im, m, params) for im, m in zip(images, masks)])
    batched = crf_torch(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(masks)[:, None], params)
    batched = batched[:, 0].numpy()
    ious = [(a & b).sum() / max((a | b).sum(), 1) for a, b in zip(reference, batched)]
    assert np.mean(ious) >= 0.95, ious
    assert (reference != masks).sum() > 100  # the CRF did move boundaries: the comparison is not trivial


def test_torch_crf_batches_masks_and_images_independently():
    images, masks = _pairs(2, 64)
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2)
    stacked = torch.from_numpy(np.stack([masks, ~masks], axis=1))  # (2, 2, H, W)
    together = crf_torch(rgb, stacked)
    for b in range(2):
        for r in range(2):
            alone = crf_torch(rgb[b : b + 1], stacked[b : b + 1, r : r + 1])[0, 0]
            assert torch.equal(together[b, r], alone)
