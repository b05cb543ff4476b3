"""Training data: the mapper (resize, flip, ignore, empty images), the index, the batch sampler and the solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from u2seg_core.coco import encode_rle
from u2seg_core.config import SolverConfig
from u2seg_core.model.config import InputConfig
from u2seg_core.train.dataset import MergeDataset, build_index
from u2seg_core.train.holdout import is_held_out
from u2seg_core.train.mapper import map_example
from u2seg_core.train.sampler import GlobalBatches, RankBatches
from u2seg_core.train.solver import WarmupMultiStep, build_optimizer, clip_gradients


def _scene(h: int = 40, w: int = 60):
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, : w // 3] = (200, 10, 10)  # red on the left
    semantic = np.full((h, w), 1, dtype=np.uint8)
    semantic[:, w // 2:] = 2
    semantic[0] = 255
    mask = np.zeros((h, w), dtype=bool)
    mask[10:30, 5:20] = True
    semantic[mask] = 0
    ann = {"id": 100, "category_id": 3, "bbox": [5, 10, 15, 20], "segmentation": encode_rle(mask)}
    return image, semantic, mask, ann


def _seed_with(flip: bool, cfg: InputConfig) -> int:
    for seed in range(100):
        rng = np.random.default_rng(seed)
        rng.integers(len(cfg.min_size_train))
        if (rng.random() < 0.5) == flip:
            return seed
    raise AssertionError


@pytest.mark.parametrize("flip", [False, True])
def test_flip_moves_image_masks_boxes_and_semantic_together(flip):
    cfg = InputConfig(min_size_train=(80,), max_size_train=200)
    image, semantic, mask, ann = _scene()
    out = map_example(image, semantic, [ann], cfg, _seed_with(flip, cfg))
    assert (out["height"], out["width"]) == (80, 120) and out["image"].shape == (3, 80, 120)
    gt = out["instances"]
    assert gt.classes.tolist() == [2]  # cluster 3 -> class 2
    m = gt.masks[0].numpy()
    ys, xs = np.nonzero(m)
    box = gt.boxes[0].tolist()
    assert box == pytest.approx([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], abs=1.0)
    expected = [10, 20, 40, 60] if not flip else [120 - 40, 20, 120 - 10, 60]
    assert box == pytest.approx(expected)
    red_left = out["image"][0, :, :5].float().mean() > 100
    assert bool(red_left) != flip
    sem = out["sem_seg"].numpy()
    assert (sem[m] == 0).all() and (sem[:2] == 255).all()
    assert set(np.unique(sem)) == {0, 1, 2, 255}
    stuff_right = sem[40, -5:] if not flip else sem[40, :5]
    assert (stuff_right == 2).all()


def test_multi_scale_sizes_come_from_the_config_and_cap_the_long_side():
    cfg = InputConfig(min_size_train=(20, 40, 60), max_size_train=75)
    image, semantic, _, ann = _scene(40, 60)
    shapes = {tuple(map_example(image, semantic, [ann], cfg, s)["image"].shape[1:]) for s in range(40)}
    assert shapes == {(20, 30), (40, 60), (50, 75)}  # 60 would give 90 > 75 on the long side


def test_empty_images_stay_and_vanishing_instances_are_dropped():
    cfg = InputConfig(min_size_train=(40,), max_size_train=100, random_flip="none")
    image, semantic, _, _ = _scene()
    out = map_example(image, semantic, [], cfg, 0)
    assert len(out["instances"]) == 0 and out["instances"].masks.shape == (0, 40, 60)
    tiny = np.zeros((40, 60), dtype=bool)
    tiny[5, 5] = True
    ann = {"id": 1, "category_id": 1, "bbox": [5, 5, 1, 1], "segmentation": encode_rle(tiny)}
    small = InputConfig(min_size_train=(10,), max_size_train=100, random_flip="none")
    assert len(map_example(image, semantic, [ann], small, 0)["instances"]) == 0  # the pixel is gone at 10 px


def test_index_dataset_and_holdout(merged_run):
    run = merged_run(n=7, size=32, shard_size=3, empty=(4,), portrait=(2,))
    index, held = build_index(run, 0.0)
    assert held == 0 and sorted(index.image_id.tolist()) == list(range(1, 8))
    assert index.aspect_group.tolist() == [1, 1, 1, 1, 1, 1, 1]  # square and portrait are both group 1
    dataset = MergeDataset(run, index, InputConfig(min_size_train=(32,), max_size_train=64), shard_cache=1)
    row = int(np.flatnonzero(index.image_id == 4)[0])
    example = dataset[(row, 0)]
    assert example["image_id"] == 4 and len(example["instances"]) == 0 and example["sem_seg"].dtype == torch.int64
    assert len(dataset[(0, 1)]["instances"]) >= 1
    names = [f"{i:06d}.png" for i in range(1, 8)]
    out = {n for n in names if is_held_out(n, 0.5)}
    index_half, held_half = build_index(run, 0.5)
    assert held_half == len(out) and len(index_half) == 7 - len(out)
    assert is_held_out("a.png", 0.5) == is_held_out("a.png", 0.5) and not is_held_out("a.png", 0.0)


def test_batches_are_a_function_of_the_iteration_and_split_over_ranks():
    groups = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    plan = GlobalBatches(groups, 4, seed=3)
    first = [b for _, b in zip(range(8), plan.batches())]
    assert [b for _, b in zip(range(3), plan.batches(5))] == first[5:8]
    for batch in first:
        rows = [r for r, _ in batch]
        assert len(rows) == 4 and len({int(groups[r]) for r in rows}) == 1
    seeds = [s for b in first for _, s in b]
    assert len(set(seeds)) == len(seeds)
    ranks = [list(RankBatches(plan, r, 2, 1, start=0, max_iter=3)) for r in range(2)]
    assert all(len(chunks) == 6 for chunks in ranks)  # 2 micro-batches of 1 per iteration
    for it in range(3):
        merged = ranks[0][2 * it] + ranks[0][2 * it + 1] + ranks[1][2 * it] + ranks[1][2 * it + 1]
        assert merged == first[it]
    with pytest.raises(ValueError, match="multiple"):
        RankBatches(plan, 0, 3, 1, 0, 1)


def test_lr_schedule_matches_warmup_multistep():
    cfg = SolverConfig(ims_per_batch=8, base_lr=0.01, max_iter=100, steps=(50, 80), gamma=0.1, warmup_iters=10,
                       warmup_factor=0.001)
    assert cfg.lr == pytest.approx(0.005)
    schedule = WarmupMultiStep(cfg)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert schedule(10) == 1.0 and schedule(49) == 1.0
    assert schedule(50) == pytest.approx(0.1) and schedule(80) == pytest.approx(0.01)


def test_optimizer_groups_and_per_parameter_clipping():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 2))
    cfg = SolverConfig(weight_decay=1e-4, weight_decay_norm=0.0)
    groups = build_optimizer(model, cfg).param_groups
    norm_params = {id(p) for p in model[1].parameters()}
    for group in groups:
        is_norm = {id(p) in norm_params for p in group["params"]}
        assert len(is_norm) == 1
        assert group["weight_decay"] == (0.0 if is_norm.pop() else 1e-4)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    clip_gradients(model.parameters(), cfg)
    for p in model.parameters():
        assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-4)  # each parameter clipped on its own
