"""Synthetic dataset: exact, mutually consistent COCO ground truth; determinism; separable but noisy classes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from u2seg_core.coco import rgb2id
from u2seg_core.config import SynthConfig
from u2seg_core.synth import STUFF_CLASSES, THING_CLASSES, dataset_is_complete, generate_dataset
from u2seg_core.synth.scene import MIN_VISIBLE_FRACTION, render_scene

T, S = len(THING_CLASSES), len(STUFF_CLASSES)
CFG = SynthConfig(n=20, size=128, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate_dataset(str(out), CFG)
    return out


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def test_layout_and_categories(dataset):
    names = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file())
    expected = [f"{d}/{i:06d}.png" for d in ("images", "panoptic", "semantic") for i in range(1, 21)]
    assert names == sorted(expected + ["annotations/instances.json", "annotations/panoptic.json", "config.json"])
    assert dataset_is_complete(str(dataset), CFG)
    assert not dataset_is_complete(str(dataset), CFG.model_copy(update={"n": 3}))
    assert T >= 6 and S >= 4
    pan = json.loads((dataset / "annotations" / "panoptic.json").read_text())
    cats = {c["id"]: c for c in pan["categories"]}
    assert sorted(cats) == list(range(1, T + S + 1))
    assert all(cats[i]["isthing"] == (1 if i <= T else 0) for i in cats)
    assert len({c["name"] for c in cats.values()}) == T + S
    rgb = _png(dataset / "images" / "000001.png")
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8


def test_panoptic_png_matches_json_and_semantic(dataset):
    pan = json.loads((dataset / "annotations" / "panoptic.json").read_text())
    cats = {c["id"]: c for c in pan["categories"]}
    assert [a["image_id"] for a in pan["annotations"]] == list(range(1, 21))
    for ann in pan["annotations"]:
        assert ann["file_name"] == f"{ann['image_id']:06d}.png"
        ids = rgb2id(_png(dataset / "panoptic" / ann["file_name"]))
        semantic = _png(dataset / "semantic" / ann["file_name"])
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids).tolist()) == set(segments)  # every pixel labelled, no void here
        n_things = 0
        for segment_id, seg in segments.items():
            mask = ids == segment_id
            assert seg["area"] == int(mask.sum()) and seg["iscrowd"] == 0
            assert seg["bbox"] == _bbox(mask)
            if cats[seg["category_id"]]["isthing"]:
                n_things += 1
                assert (semantic[mask] == 0).all()
            else:
                assert (semantic[mask] == seg["category_id"] - T).all()
        assert n_things >= 1
        assert len({s["category_id"] for s in segments.values() if s["category_id"] > T}) == sum(
            s["category_id"] > T for s in segments.values()
        )  # one segment per stuff class


def test_instances_match_panoptic_things(dataset):
    coco = COCO(str(dataset / "annotations" / "instances.json"))
    assert sorted(coco.getCatIds()) == list(range(1, T + 1))
    assert sorted(coco.getImgIds()) == list(range(1, 21))
    pan = json.loads((dataset / "annotations" / "panoptic.json").read_text())
    n_instances = 0
    for ann in pan["annotations"]:
        ids = rgb2id(_png(dataset / "panoptic" / ann["file_name"]))
        things = [
            (s["category_id"], s["area"], s["bbox"], ids == s["id"])
            for s in ann["segments_info"]
            if s["category_id"] <= T
        ]
        instances = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
        assert len(instances) == len(things)
        assert len({a["id"] for a in instances}) == len(instances)
        n_instances += len(instances)
        for inst in instances:
            mask = coco.annToMask(inst).astype(bool)
            matches = [t for t in things if t[0] == inst["category_id"] and np.array_equal(t[3], mask)]
            assert len(matches) == 1
            assert inst["area"] == matches[0][1] and inst["bbox"] == matches[0][2] and inst["iscrowd"] == 0
    assert n_instances >= 2 * 20 * 0.8


def test_same_seed_is_byte_identical_other_seed_differs(dataset, tmp_path):
    again = tmp_path / "again"
    generate_dataset(str(again), CFG)
    for path in dataset.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (again / path.relative_to(dataset)).read_bytes(), path
    other = tmp_path / "other"
    generate_dataset(str(other), CFG.model_copy(update={"seed": 1, "n": 2}))
    assert (other / "images" / "000001.png").read_bytes() != (dataset / "images" / "000001.png").read_bytes()


def test_scenes_have_occlusion_scale_and_rotation_variety():
    occluded, radii, classes = 0, [], set()
    for i in range(30):
        scene = render_scene(np.random.default_rng([7, i]), 128)
        for k, inst in enumerate(scene.instances, start=1):
            window = inst.window(128)
            full = int(inst.mask(*inst.local(window)).sum())
            visible = int((scene.instance_map == k).sum())
            assert visible == 0 or visible >= MIN_VISIBLE_FRACTION * full
            occluded += 0 < visible < full
            if visible:
                radii.append(inst.radius)
                classes.add(inst.thing)
        assert 1 <= len(np.unique(scene.stuff_map)) <= 4
    assert occluded >= 5
    assert max(radii) / min(radii) > 1.8
    assert classes == set(range(T))


def test_classes_separable_by_cell_statistics(dataset):
    """Nearest-centroid on (mean, std) of 8x8 RGB cells: well above chance, yet not perfect."""
    pan = json.loads((dataset / "annotations" / "panoptic.json").read_text())
    features, labels, image_ids = [], [], []
    for ann in pan["annotations"]:
        rgb = _png(dataset / "images" / ann["file_name"]).astype(np.float32) / 255.0
        ids = rgb2id(_png(dataset / "panoptic" / ann["file_name"]))
        category = {s["id"]: s["category_id"] for s in ann["segments_info"]}
        labels_px = np.vectorize(category.get)(ids)
        g = rgb.shape[0] // 8
        cells = rgb.reshape(g, 8, g, 8, 3).transpose(0, 2, 1, 3, 4).reshape(g, g, 64, 3)
        cell_labels = labels_px.reshape(g, 8, g, 8).transpose(0, 2, 1, 3).reshape(g, g, 64)
        pure = (cell_labels == cell_labels[..., :1]).all(-1)
        features.append(np.concatenate([cells.mean(2), cells.std(2)], -1)[pure])
        labels.append(cell_labels[..., 0][pure])
        image_ids.append(np.full(int(pure.sum()), ann["image_id"]))
    x, y, img = np.concatenate(features), np.concatenate(labels), np.concatenate(image_ids)
    train = img <= 10
    x = (x - x[train].mean(0)) / x[train].std(0)
    known = np.unique(y[train])
    centroids = np.stack([x[train][y[train] == c].mean(0) for c in known])
    test = ~train & np.isin(y, known)
    pred = known[np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    accuracy = (pred == y[test]).mean()
    assert 0.7 < accuracy < 0.999
    assert ((pred <= T) == (y[test] <= T)).mean() > 0.95


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    generate_dataset(str(tmp_path / "demo"), SynthConfig(n=24, size=256, seed=0))
    assert time.perf_counter() - start < 10.0
