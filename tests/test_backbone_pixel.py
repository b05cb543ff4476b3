"""The training-free `pixel` featurizer: references for its blocks, class separation on synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2lab

from u2seg_core.backbone import PixelFeaturizer, build_backbone
from u2seg_core.backbone import pixel
from u2seg_core.coco import rgb2id
from u2seg_core.config import BackboneConfig, SynthConfig
from u2seg_core.synth import generate_dataset
from shared_paths import REAL_IMAGES_DIR

REAL_IMAGES = sorted(REAL_IMAGES_DIR.glob("*.jpg"))


@pytest.fixture(scope="module")
def featurizer() -> PixelFeaturizer:
    return PixelFeaturizer("cpu")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[torch.Tensor, np.ndarray]:
    """6 synthetic 192-px images (uint8 (B,3,H,W)) and their panoptic segment ids (B,H,W)."""
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(str(out), SynthConfig(n=6, size=192, seed=5))
    images = [np.array(Image.open(p).convert("RGB")) for p in sorted((out / "images").glob("*.png"))]
    segments = [rgb2id(np.array(Image.open(p))) for p in sorted((out / "panoptic").glob("*.png"))]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), np.stack(segments)


def test_shapes_determinism_and_batch_independence(featurizer: PixelFeaturizer) -> None:
    pixels = torch.randint(0, 256, (3, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = featurizer(pixels)
    assert featurizer.embed_dim == 36 and featurizer.cls_dim == 72 and featurizer.patch_size == 8
    assert out.keys.shape == (3, 36, 6, 8) and out.cls.shape == (3, 72)
    assert torch.equal(out.keys, out.tokens) and out.keys.dtype == torch.float32
    again = PixelFeaturizer("cpu")(pixels)
    assert torch.equal(out.keys, again.keys) and torch.equal(out.cls, again.cls)
    torch.testing.assert_close(featurizer(pixels[1:2]).keys, out.keys[1:2], rtol=1e-5, atol=1e-5)
    expected_cls = torch.cat([out.keys.mean(dim=(2, 3)), out.keys.std(dim=(2, 3), unbiased=False)], dim=1)
    torch.testing.assert_close(out.cls, expected_cls)
    only_keys = featurizer(pixels, frozenset({"keys"}))
    assert only_keys.tokens is None and only_keys.cls is None
    assert build_backbone(BackboneConfig(arch="pixel", device="cpu")).embed_dim == 36


def test_lab_matches_skimage() -> None:
    rgb = np.random.default_rng(0).random((1, 3, 16, 16)).astype(np.float32)
    ours = pixel.srgb_to_lab(torch.from_numpy(rgb))[0].permute(1, 2, 0).numpy() * 100
    np.testing.assert_allclose(ours, rgb2lab(rgb[0].transpose(1, 2, 0)), atol=0.05)


def reference_colour_blocks(cell_rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Lightness, colour and vividness blocks of one (8, 8, 3) cell, pixel by pixel (float64)."""
    lab = rgb2lab(cell_rgb) / 100
    lightness, colour, chroma_sum = np.zeros(4), np.zeros(17), 0.0
    for L, a, b in lab.reshape(-1, 3):
        chroma = np.hypot(a, b)
        chroma_sum += chroma
        votes = np.exp(-0.5 * ((L - np.array(pixel.LIGHTNESS_BINS)) / pixel.LIGHTNESS_WIDTH) ** 2) + 1e-6
        lightness += votes / votes.sum()
        levels = np.exp(-0.5 * ((chroma - np.array(pixel.CHROMA_LEVELS)) / pixel.CHROMA_WIDTH) ** 2) + 1e-6
        levels /= levels.sum()
        centres = np.arange(8) * 2 * np.pi / 8
        hues = np.exp(pixel.HUE_KAPPA * (np.cos(np.arctan2(b, a) - centres) - 1))
        hues /= hues.sum()
        colour += np.concatenate([[levels[0]], levels[1] * hues, levels[2] * hues])
    n = 64
    vivid = np.tanh((chroma_sum / n - pixel.VIVID_CHROMA) / pixel.VIVID_WIDTH)
    return {"lightness": lightness / n, "colour": colour / n, "vividness": np.array([vivid])}


def test_colour_blocks_match_per_pixel_reference() -> None:
    rng = np.random.default_rng(1)
    rgb = 0.45 + 0.1 * rng.random((16, 24, 3))  # greyish cells
    rgb[:8, :8] = [0.9, 0.1, 0.1] + 0.05 * rng.random((8, 8, 3))  # a vivid red cell
    rgb[8:, 16:] = [0.45, 0.55, 0.35] + 0.1 * rng.random((8, 8, 3))  # a muted green cell
    blocks = pixel.cell_feature_blocks(torch.from_numpy(rgb).permute(2, 0, 1)[None].double())
    for row, col in ((0, 0), (1, 2), (0, 1)):
        reference = reference_colour_blocks(rgb[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8])
        for name, expected in reference.items():
            np.testing.assert_allclose(blocks[name][0, :, row, col].numpy(), expected, atol=2e-4, err_msg=name)
    assert blocks["vividness"][0, 0, 0, 0] > 0.9 and blocks["vividness"][0, 0, 1, 2] < 0.9


def test_texture_blocks_respond_to_orientation_and_frequency() -> None:
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    vertical_fine = 0.5 + 0.4 * np.sin(2 * np.pi * x / 4)  # vertical stripes, period 4 px
    horizontal_coarse = 0.5 + 0.4 * np.sin(2 * np.pi * y / 16)  # horizontal stripes, period 16 px
    pixels = torch.from_numpy(np.stack([np.repeat(p[None], 3, 0) for p in (vertical_fine, horizontal_coarse)]))
    blocks = pixel.cell_feature_blocks(pixels)
    orientation = blocks["orientation"][:, :, 2:6, 2:6].mean(dim=(2, 3))
    assert orientation[0].argmax() == 0  # gradient along x: bin at 0 rad
    assert orientation[1].argmax() == pixel.ORIENTATION_BINS // 2  # gradient along y: bin at pi/2
    frequency = blocks["frequency"][:, :, 2:6, 2:6].mean(dim=(2, 3))
    assert frequency[0].argmax() == 0 and frequency[1].argmax() > 0
    for name in ("lightness", "colour", "gradient_magnitude", "orientation", "frequency"):
        torch.testing.assert_close(blocks[name].sum(dim=1), torch.ones_like(blocks[name][:, 0]))


def pure_cells(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 8x8 cell: its segment id and whether the cell holds only that segment."""
    b, h, w = segments.shape
    cells = segments.reshape(b, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4).reshape(b, h // 8, w // 8, 64)
    return cells[..., 0], (cells == cells[..., :1]).all(-1)


def test_synthetic_classes_separate_under_cosine(featurizer, synthetic) -> None:
    pixels, segments = synthetic
    keys = featurizer(pixels).keys.permute(0, 2, 3, 1).numpy()
    keys = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    cell_segment, pure = pure_cells(segments)
    within, across, above_tau, embeddings, labels = [], [], [], [], []
    for b in range(len(keys)):
        f, seg = keys[b][pure[b]], cell_segment[b][pure[b]]
        similarity = f @ f.T
        stuff = seg // 1000 > 6  # category ids 1..6 are things, 7..11 stuff (synthetic ids: category * 1000 + k)
        for instance in np.unique(seg[~stuff]):
            inside = seg == instance
            if inside.sum() < 3:
                continue
            within.append(similarity[np.ix_(inside, inside)].mean())
            across.append(similarity[np.ix_(inside, stuff)].mean())
            above_tau.append((similarity[np.ix_(inside, stuff)] > 0.15).mean())
            embeddings.append(f[inside].mean(0))
            labels.append(instance // 1000)
    assert len(within) >= 10
    assert np.mean(within) > 0.85 and np.mean(across) < 0.0
    assert np.mean(above_tau) < 0.15, "objects must stand out of the background at MaskCut's tau"
    embeddings = np.stack(embeddings) / np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.array(labels)
    similarity = embeddings @ embeddings.T
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    different = labels[:, None] != labels[None]
    assert similarity[same].mean() > similarity[different].mean() + 0.25


@pytest.mark.parametrize("path", REAL_IMAGES, ids=[p.name for p in REAL_IMAGES])
def test_real_photos_featurize(featurizer, path: Path) -> None:
    with Image.open(path) as im:
        im.draft("RGB", (256, 256))
        im = im.convert("RGB")
        width = 128 * im.width // im.height // 8 * 8
        rgb = np.array(im.resize((width, 128), Image.Resampling.BILINEAR))
    out = featurizer(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    assert out.keys.shape == (1, 36, 16, width // 8)
    assert torch.isfinite(out.keys).all() and torch.isfinite(out.cls).all()
    assert out.keys.std(dim=(2, 3)).max() > 0.05
