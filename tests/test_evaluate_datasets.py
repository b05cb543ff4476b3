"""Ground-truth adapters on fixtures written in the official file structures and schemas."""

import numpy as np
import pytest

from evaluate_fixtures import write_coco, write_predictions
from u2seg_core import storage
from u2seg_core.config import EvaluateConfig, SynthConfig
from u2seg_core.evaluate.datasets import IGNORE, load_ground_truth
from u2seg_core.evaluate.datasets.base import load_table
from u2seg_core.evaluate.stage import evaluate_predictions
from u2seg_core.synth import generate_dataset


def test_category_tables_name_their_source_and_are_complete():
    supers = load_table("coco_stuff_supercategories")
    assert "U2Seg" in supers["source"] and len(supers["stuff_to_supercategory"]) == 53
    assert [s["name"] for s in supers["supercategories"]][:3] == ["textile", "building", "raw-material"]
    coarse = load_table("cocostuff27")
    assert "STEGO" in coarse["source"] and len(coarse["fine_to_coarse"]) == 182 and len(coarse["classes"]) == 27
    assert sum(c["isthing"] for c in coarse["classes"]) == 12
    cityscapes = load_table("cityscapes27")
    assert [c["id"] for c in cityscapes["classes"]] == list(range(7, 34))
    assert {c["name"] for c in cityscapes["classes"] if c["isthing"]} == {
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}


def test_coco_adapter_collapses_stuff_to_supercategories(tmp_path):
    ids = np.zeros((8, 8), np.int64)
    ids[:4, :4], ids[4:, :4], ids[4:, 4:], ids[:4, 4:] = 1001, 2002, 2003, 2001
    root = write_coco(str(tmp_path), {632: (ids, [
        {"id": 1001, "category_id": 1}, {"id": 2001, "category_id": 187}, {"id": 2002, "category_id": 184},
        {"id": 2003, "category_id": 193}, {"id": 3001, "category_id": 3}])})  # car 3001: listed, no pixels
    gt = load_ground_truth("coco", root)
    assert [c["name"] for c in gt.categories][:2] == ["person", "car"] and len(gt.categories) == 2 + 15
    image = gt.lookup("000000000632.jpg")
    assert image is gt.lookup("some/folder/000000000632.png") and image.image_id == 632
    sample = gt.read(image)
    names = [gt.category_names[s["category_id"]] for s in sample.segments]
    assert names == ["person", "sky", "plant", "plant", "car"]  # tree and grass: two plant segments
    plant = [c["name"] for c in gt.categories].index("plant")
    assert (sample.category_index[4:] == plant).all() and (sample.category_index[:4, :4] == 0).all()
    assert [a["category_id"] for a in gt.instances(image, sample)] == [1]
    assert len(gt.coco_instances({632})["annotations"]) == 1
    with pytest.raises(FileNotFoundError, match="panoptic_train2017.json"):
        load_ground_truth("coco", root, "train2017")


def write_cityscapes(root):
    name = "frankfurt_000000_000294"
    raw = np.zeros((8, 12), np.uint16)  # labelIds / instance ids, as gtFine_instanceIds.png
    raw[:2] = 23  # sky
    raw[2:5, :4] = 26000  # car instance 0
    raw[2:5, 4:8] = 26001  # car instance 1
    raw[2:5, 8:10] = 26  # car group without instance id: crowd
    raw[2:5, 10:] = 29000  # caravan (an instance, scored as stuff)
    raw[5:] = 7  # road
    raw[7, 0] = 3  # out of roi: void
    city = storage.join(root, "gtFine", "val", "frankfurt")
    storage.write_png(storage.join(city, f"{name}_gtFine_instanceIds.png"), raw)
    storage.write_png(storage.join(city, f"{name}_gtFine_labelIds.png"), np.where(raw >= 1000, raw // 1000, raw).astype(np.uint8))
    storage.write_json(storage.join(city, f"{name}_gtFine_polygons.json"), {"imgHeight": 8, "imgWidth": 12, "objects": []})
    storage.write_png(storage.join(root, "leftImg8bit", "val", "frankfurt", f"{name}_leftImg8bit.png"),
                      np.zeros((8, 12, 3), np.uint8))
    return root, raw


def test_cityscapes_adapter_builds_panoptic_segments_from_instance_ids(tmp_path):
    root, raw = write_cityscapes(str(tmp_path))
    gt = load_ground_truth("cityscapes", root)
    assert len(gt.categories) == 27 and len(gt.thing_ids) == 8
    image = gt.lookup("frankfurt/frankfurt_000000_000294_leftImg8bit.png")
    assert image is not None and gt.lookup("val/frankfurt/frankfurt_000000_000294_leftImg8bit.png") is image
    sample = gt.read(image)
    segments = {s["id"]: s for s in sample.segments}
    assert sorted(segments) == [7, 23, 26, 29, 26000, 26001]
    assert segments[26]["iscrowd"] == 1 and segments[26000]["iscrowd"] == 0
    assert segments[26001]["bbox"] == [4, 2, 4, 3]
    assert (sample.segment_ids[2:5, 10:] == 29).all()  # stuff: one segment per class
    assert sample.category_index[7, 0] == IGNORE and sample.segment_ids[7, 0] == 0
    assert sample.category_index[0, 0] == [c["id"] for c in gt.categories].index(23)


def write_cocostuff(root, layout):
    fine = np.full((6, 6), 255, np.uint8)
    fine[:3] = 0  # person -> coarse 9
    fine[3:, :3] = 105  # sky-other -> coarse 23 (sky)
    fine[3:, 3:] = 123  # grass -> coarse 22 (plant)
    fine[0, 0] = 255  # unlabeled
    labels, images = (("stuffthingmaps_trainval2017/val2017", "val2017") if layout == "official"
                      else ("annotations/val2017", "images/val2017"))
    for stem in ("000000000139", "000000000285"):
        storage.write_png(storage.join(root, labels, f"{stem}.png"), fine)
        storage.write_png(storage.join(root, images, f"{stem}.jpg"), np.zeros((6, 6, 3), np.uint8))
    if layout == "stego":
        storage.atomic_write_bytes(storage.join(root, "curated", "val2017", "Coco164kFull_Stuff_Coarse_7.txt"),
                                   b"000000000285\n")
    return root, fine


@pytest.mark.parametrize("layout", ["official", "stego"])
def test_cocostuff27_adapter_maps_fine_to_coarse(tmp_path, layout):
    root, fine = write_cocostuff(str(tmp_path), layout)
    gt = load_ground_truth("cocostuff27", root)
    assert len(gt.images) == (2 if layout == "official" else 1) and not gt.has_panoptic
    sample = gt.read(gt.lookup("000000000285.jpg"))
    assert sample.segment_ids is None
    np.testing.assert_array_equal(np.unique(sample.category_index), [IGNORE, 9, 22, 23])


def test_stego27_protocol_undoes_a_permutation_of_27_classes(tmp_path):
    root, fine = write_cocostuff(str(tmp_path / "cs"), "official")
    coarse = load_ground_truth("cocostuff27", root).read(load_ground_truth("cocostuff27", root).images[0]).category_index
    permutation = np.random.default_rng(0).permutation(27)
    categories = [{"id": 100 + k, "name": f"stego_{k}", "isthing": 0} for k in range(27)]
    ids = np.where(coarse >= 0, 100 + permutation[np.maximum(coarse, 0)], 0)
    segments = [{"id": int(v), "category_id": int(v)} for v in np.unique(ids[ids > 0])]
    pred = write_predictions(str(tmp_path / "pred"), categories,
                             [("000000000139.jpg", ids, segments), ("000000000285.jpg", ids, segments)])
    cfg = EvaluateConfig(ground_truth=root, gt_format="cocostuff27", protocols=["stego27"], overlays=0)
    report = evaluate_predictions({"stego": pred}, cfg, str(tmp_path / "ev"))
    (row,) = report["rows"]
    assert row["summary"]["mIoU"] == pytest.approx(100.0) and row["summary"]["pixel_accuracy"] == pytest.approx(100.0)
    assert row["summary"]["PQ"] is None
    assert row["mapping"]["pred_to_gt"][str(100 + permutation[23])] == "sky"


def test_synthetic_adapter_keeps_its_categories(tmp_path):
    generate_dataset(str(tmp_path), SynthConfig(n=2, size=32, seed=0))
    gt = load_ground_truth("synthetic", str(tmp_path))
    assert [c["name"] for c in gt.categories] == ["disc", "square", "triangle", "star", "ring", "cross",
                                                   "sky", "grass", "water", "sand", "rock"]
    sample = gt.read(gt.lookup("000001.png"))
    assert (sample.category_index >= 0).all() and sample.segment_ids.shape == (32, 32)


def test_cityscapes_panoptic_protocol_scores_a_perfect_prediction(tmp_path):
    root, raw = write_cityscapes(str(tmp_path / "cs"))
    gt = load_ground_truth("cityscapes", root)
    sample = gt.read(gt.images[0])
    # the prediction: the ground-truth segments, cluster ids for things (car -> clusters 1, 2), stuff 10+labelId
    cluster = {26000: 1, 26001: 2, 26: 1}
    categories = [{"id": 1, "name": "c1", "isthing": 1}, {"id": 2, "name": "c2", "isthing": 1}] + [
        {"id": 10 + c["id"], "name": f"s{c['id']}", "isthing": 0} for c in gt.categories if not c["isthing"]]
    segments = [{"id": s["id"], "category_id": cluster.get(s["id"], 10 + s["category_id"])} for s in sample.segments]
    pred = write_predictions(str(tmp_path / "pred"), categories,
                             [("frankfurt/frankfurt_000000_000294_leftImg8bit.png", sample.segment_ids, segments)])
    cfg = EvaluateConfig(ground_truth=root, gt_format="cityscapes", overlays=0)
    report = evaluate_predictions({"p": pred}, cfg, str(tmp_path / "ev"))
    rows = {r["protocol"]: r for r in report["rows"]}
    for row in rows.values():
        assert row["panoptic"]["things"]["n"] == 1 and row["panoptic"]["stuff"]["n"] == 3  # car; road, sky, caravan
    assert rows["u2seg"]["mapping"]["things"] == {"1": "car", "2": "car"}  # many-to-one; the crowd box votes too
    assert rows["u2seg"]["summary"]["PQ"] == pytest.approx(100.0)  # the crowd-region prediction is ignored
    # one-to-one: one car cluster stays unmapped, its car is a FN: car RQ 1 / 1.5, PQ (200/3 + 3 * 100) / 4
    assert len(rows["hungarian"]["mapping"]["things"]) == 1
    assert rows["hungarian"]["summary"]["PQ"] == pytest.approx((200 / 3 + 300) / 4)
