"""Robust decoding: every odd input gives a correct RGB array or an ImageDecodeError with the reason."""

from __future__ import annotations

import glob
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from u2seg_core.io import ImageDecodeError, iter_batches, load_rgb
from u2seg_core.manifest import ImageRecord, ShardManifest
from shared_paths import REAL_IMAGES_DIR

REAL_IMAGES = sorted(glob.glob(str(REAL_IMAGES_DIR / "*.jpg")))


def _save(im: Image.Image, path: Path, **kwargs) -> str:
    im.save(path, **kwargs)
    return str(path)


def _png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one): (H, W, 3) uint16 -> bytes."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file") as info:
        load_rgb(str(path))
    assert str(path) in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, ImageDecodeError) and str(copy) == str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_rgb(str(tmp_path / "nope.png"))


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageDecodeError, match="not an image format"):
        load_rgb(str(path))


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_rgb(str(path))


def test_one_pixel(tmp_path):
    path = _save(Image.new("RGB", (1, 1), (12, 34, 56)), tmp_path / "one.png")
    out = load_rgb(path)
    assert out.shape == (1, 1, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [12, 34, 56]


def test_huge_image_loads_and_limit_is_explicit(tmp_path):
    im = Image.new("L", (12000, 9000), 40)  # grayscale keeps the test fast; 108 MP is above PIL's bomb limit
    im.paste(230, (0, 0, 96, 48))  # a marker in the top-left corner
    path = _save(im, tmp_path / "huge.jpg", quality=90)
    out = load_rgb(path)
    assert out.shape == (9000, 12000, 3)
    assert np.abs(out[10, 10].astype(int) - 230).max() <= 4
    assert np.abs(out[-10, -10].astype(int) - 40).max() <= 4
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        load_rgb(path, max_pixels=100_000_000)


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red ...
    im.paste((0, 0, 0, 128), (16, 0, 32, 16))  # ... and 50% black
    path = _save(im, tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = load_rgb(path).astype(int)
    # R = 255 (1 - C)(1 - K) ...
    assert np.abs(out[8, 4] - [255, 0, 0]).max() <= 8
    assert np.abs(out[8, 28] - [127, 127, 127]).max() <= 8


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32896, 40000, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "gray16.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = load_rgb(path)
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert expected.tolist() == [[0, 1, 4, 128, 156, 255]]
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=-1))


def test_16bit_rgb_png(tmp_path):
    values = np.array([[[0, 65535, 32896], [12850, 51400, 257]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16_rgb(values))
    out = load_rgb(str(path)).astype(int)
    assert np.abs(out - values / 257.0).max() <= 1.0


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [0, 0, 0, 128], [200, 100, 0, 64]]], dtype=np.uint8)
    path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
    out = load_rgb(path).astype(float)
    alpha = rgba[..., 3:] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_palette_png_with_and_without_transparency(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3)
    index = np.array([[0, 1, 2, 1]], dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette)
    out = load_rgb(_save(im, tmp_path / "pal.png"))
    assert out[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 0]]
    out = load_rgb(_save(im, tmp_path / "pal_t.png", transparency=1))
    assert out[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255], [255, 255, 255]]


def test_grayscale_modes(tmp_path):
    gray = np.array([[0, 17, 128, 255]], dtype=np.uint8)
    out = load_rgb(_save(Image.fromarray(gray, mode="L"), tmp_path / "l.png"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))
    la = np.stack([gray, np.array([[255, 255, 0, 255]], dtype=np.uint8)], axis=-1)
    out = load_rgb(_save(Image.fromarray(la, mode="LA"), tmp_path / "la.png"))
    assert out[0, :, 0].tolist() == [0, 17, 255, 255]
    floats = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    out = load_rgb(_save(Image.fromarray(floats, mode="F"), tmp_path / "f.tif"))
    assert out[0, :, 1].tolist() == [0, 64, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(im, tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_rgb(path).astype(int)
    assert out.shape == (40, 20, 3)
    assert np.abs(out[5, 10] - [255, 0, 0]).max() <= 10  # the left half is now on top
    assert np.abs(out[35, 10] - [0, 0, 255]).max() <= 10


@pytest.mark.skipif(not REAL_IMAGES, reason="shared real photos not available")
def test_real_photos_load():
    for path in REAL_IMAGES:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
        out = load_rgb(path)
        expected = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
        assert out.shape == (*expected, 3) and out.dtype == np.uint8, path
        assert out.std() > 5, path


def test_bad_files_become_failure_records(tmp_path):
    good = _save(Image.new("RGB", (8, 6), (1, 2, 3)), tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    urls = [good, str(tmp_path / "empty.png"), str(tmp_path / "text.jpg"), str(tmp_path / "missing.png"), good]
    shard = ShardManifest(
        shard_index=0,
        source="test",
        images=[ImageRecord(image_id=i + 1, file_name=Path(u).name, url=u) for i, u in enumerate(urls)],
    )
    batches = list(iter_batches(shard, resolution=16, batch_size=3, stage="features"))
    loaded = [r.image_id for b in batches for r in b.records]
    failed = {f.image_id: f for b in batches for f in b.failures}
    assert loaded == [1, 5]
    assert sorted(failed) == [2, 3, 4]
    assert all(f.stage == "features" for f in failed.values())
    assert "empty file" in failed[2].reason
    assert "not an image format" in failed[3].reason
    assert "not found" in failed[4].reason and failed[4].file_name == "missing.png"
    assert batches[0].pixels.shape == (1, 3, 16, 16)
