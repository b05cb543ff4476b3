"""Sources: folder, ImageNet tree, COCO JSON, auto-detection, determinism, s3:// listing and reading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from u2seg_core import storage
from u2seg_core.config import SourceConfig
from u2seg_core.io import list_images, load_rgb, make_shards
from u2seg_core.io.sources import IMAGE_EXTENSIONS, list_source, path_image_id, resolve_kind


def _write_image(path: Path, size: tuple[int, int], value: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path, format=fmt)


@pytest.fixture
def folder_tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    _write_image(root / "b.png", (10, 8), 1)
    _write_image(root / "a" / "z.JPG", (12, 9), 2, fmt="JPEG")
    _write_image(root / "a" / "deep" / "y.webp", (7, 5), 3, fmt="WEBP")
    _write_image(root / "c.TIFF", (6, 6), 4, fmt="TIFF")
    _write_image(root / "d.bmp", (5, 4), 5)
    _write_image(root / "e.gif", (5, 4), 6, fmt="GIF")
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "data.json").write_text("{}")
    return root


def test_folder_source(folder_tree):
    listing = list_source(SourceConfig(uri=str(folder_tree)))
    records = listing.records
    assert [r.file_name for r in records] == ["a/deep/y.webp", "a/z.JPG", "b.png", "c.TIFF", "d.bmp", "e.gif"]
    assert [r.image_id for r in records] == [path_image_id(r.file_name) for r in records]
    assert all(0 < r.image_id < 2**46 for r in records)
    assert listing.n_ignored == 2 and listing.ignored_examples == ["a/data.json", "notes.txt"]
    for record in records:
        path = folder_tree / record.file_name
        assert record.url == str(path)
        assert record.size_bytes == path.stat().st_size
        assert abs(int(record.version) - path.stat().st_mtime_ns) < 1000  # the mtime: no byte is read
    assert resolve_kind(str(folder_tree)) == "folder"
    assert list_images(SourceConfig(uri=str(folder_tree), limit=2)) == records[:2]


def test_every_format_the_decoder_reads_is_listed():
    for ext in (".gif", ".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".ppm", ".jp2", ".ico"):
        assert ext in IMAGE_EXTENSIONS, ext
    assert ".eps" not in IMAGE_EXTENSIONS and ".txt" not in IMAGE_EXTENSIONS


def test_ids_are_stable_when_images_are_added_or_removed(folder_tree):
    before = {r.file_name: r.image_id for r in list_images(SourceConfig(uri=str(folder_tree)))}
    _write_image(folder_tree / "0_first.png", (4, 4), 8)
    (folder_tree / "b.png").unlink()
    after = {r.file_name: r.image_id for r in list_images(SourceConfig(uri=str(folder_tree)))}
    assert {name: after[name] for name in before if name != "b.png"} == {n: i for n, i in before.items() if n != "b.png"}
    assert "0_first.png" in after and after["0_first.png"] not in before.values()


def test_imagenet_tree(tmp_path):
    root = tmp_path / "imagenet"
    for cls in ("n02", "n01"):
        for j in (1, 0):
            _write_image(root / "train" / cls / f"{cls}_{j}.JPEG", (8, 8), j, fmt="JPEG")
    (root / "val").mkdir()
    records = list_images(SourceConfig(uri=str(root), kind="imagenet"))
    assert [r.file_name for r in records] == ["n01/n01_0.JPEG", "n01/n01_1.JPEG", "n02/n02_0.JPEG", "n02/n02_1.JPEG"]
    assert records[0].url == str(root / "train" / "n01" / "n01_0.JPEG")
    # a root whose children are class folders is detected as ImageNet
    assert resolve_kind(str(root / "train")) == "imagenet"
    auto = list_images(SourceConfig(uri=str(root / "train")))
    assert [r.file_name for r in auto] == [r.file_name for r in records]
    # an image that is not <class>/<image> is an error for an explicit ImageNet source
    _write_image(root / "train" / "n01" / "extra" / "x.png", (4, 4), 9)
    with pytest.raises(ValueError, match="kind='folder'"):
        list_images(SourceConfig(uri=str(root), kind="imagenet"))
    assert resolve_kind(str(root / "train")) == "folder"


def test_coco_source(tmp_path):
    root = tmp_path / "coco"
    _write_image(root / "images" / "x.png", (20, 10), 1)
    _write_image(root / "images" / "sub" / "y.png", (6, 9), 2)
    doc = {
        "images": [
            {"id": 42, "file_name": "x.png", "width": 20, "height": 10},
            {"id": 7, "file_name": "sub/y.png", "width": 6, "height": 9},
            {"id": 9, "file_name": "gone.png", "width": 3, "height": 3},
        ],
        "annotations": [],
        "categories": [],
    }
    (root / "annotations").mkdir()
    json_path = root / "annotations" / "instances.json"
    json_path.write_text(json.dumps(doc))
    records = list_images(SourceConfig(uri=str(json_path)))
    assert [(r.image_id, r.file_name) for r in records] == [(7, "sub/y.png"), (9, "gone.png"), (42, "x.png")]
    assert records[0].url == str(root / "images" / "sub" / "y.png")
    assert (records[2].width, records[2].height) == (20, 10)
    assert records[2].size_bytes == (root / "images" / "x.png").stat().st_size
    assert records[1].size_bytes == -1 and records[1].version == ""  # fails later, with its reason
    # explicit image_root, JSON next to the images
    flat = tmp_path / "flat"
    _write_image(flat / "x.png", (20, 10), 1)
    (flat / "d.json").write_text(json.dumps({"images": doc["images"][:1]}))
    assert list_images(SourceConfig(uri=str(flat / "d.json")))[0].url == str(flat / "x.png")
    other = list_images(SourceConfig(uri=str(json_path), kind="coco", image_root=str(flat)))
    assert [r.size_bytes > 0 for r in other] == [False, False, True]


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no images found under"):
        list_images(SourceConfig(uri=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="no images found under .*not an existing folder"):
        list_images(SourceConfig(uri=str(tmp_path / "absent")))
    with pytest.raises(FileNotFoundError, match="COCO JSON does not exist"):
        list_images(SourceConfig(uri=str(tmp_path / "absent.json")))
    (tmp_path / "none.json").write_text(json.dumps({"images": []}))
    with pytest.raises(FileNotFoundError, match="no 'images' entries"):
        list_images(SourceConfig(uri=str(tmp_path / "none.json")))
    (tmp_path / "wrong.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "q.png"}]}))
    with pytest.raises(FileNotFoundError, match="set source.image_root"):
        list_images(SourceConfig(uri=str(tmp_path / "wrong.json")))


def test_order_and_shard_hashes_are_deterministic(folder_tree):
    cfg = SourceConfig(uri=str(folder_tree))
    first = make_shards(list_images(cfg), 2, source=cfg.uri)
    second = make_shards(list_images(cfg), 2, source=cfg.uri)
    assert [s.hash for s in first] == [s.hash for s in second]
    assert sum(len(s.images) for s in first) == 6
    os.utime(folder_tree / "b.png", ns=(5, 5))  # same name, new version (content is hashed by the plan shard step)
    third = make_shards(list_images(cfg), 2, source=cfg.uri)
    changed = {s.name for s, t in zip(first, third) if s.hash != t.hash}
    assert changed == {s.name for s in first if any(im.file_name == "b.png" for im in s.images)}


def test_s3_listing_and_reading(folder_tree, s3_bucket):
    local = list_images(SourceConfig(uri=str(folder_tree)))
    fs, bucket = storage.get_fs(s3_bucket)
    files = {
        f"{bucket}/data/{p.relative_to(folder_tree)}": p.read_bytes() for p in folder_tree.rglob("*") if p.is_file()
    }
    files[f"{bucket}/coco/images/b.png"] = (folder_tree / "b.png").read_bytes()
    fs.pipe(files)
    remote = list_images(SourceConfig(uri=f"{s3_bucket}/data"))
    assert [r.file_name for r in remote] == [r.file_name for r in local]
    assert [r.image_id for r in remote] == [r.image_id for r in local]
    assert [r.size_bytes for r in remote] == [r.size_bytes for r in local]
    assert all(r.version for r in remote)  # the ETag
    assert remote[2].url == f"{s3_bucket}/data/b.png"
    np.testing.assert_array_equal(load_rgb(remote[2].url), load_rgb(local[2].url))
    # a COCO JSON on S3 with the default image_root <json dir>/../images
    storage.write_json(f"{s3_bucket}/coco/annotations/i.json", {"images": [{"id": 5, "file_name": "b.png"}]})
    coco = list_images(SourceConfig(uri=f"{s3_bucket}/coco/annotations/i.json"))
    assert coco[0].url == f"{s3_bucket}/coco/images/b.png" and coco[0].size_bytes == local[2].size_bytes
