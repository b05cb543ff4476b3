"""STEGO inference: flip averaging, probes, and the two dense-CRF implementations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from u2seg_core.backbone import PixelFeaturizer
from u2seg_core.config import StegoConfig
from u2seg_core.stego.checkpoint import SemanticHead
from u2seg_core.stego.crf import dense_crf, dense_crf_torch
from u2seg_core.stego.head import StegoHead
from u2seg_core.stego.infer import SemanticSegmenter
from u2seg_core.stego.probe import ClusterProbe, LinearProbe

CRF = StegoConfig().crf_params


def two_region_image(height=40, width=56, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.int64)
    image[:, : width // 2] = (200, 30, 40)
    image[:, width // 2 :] = (20, 160, 90)
    image[height // 2 :, :, 2] += 60
    return np.clip(image + rng.integers(0, 25, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def segmenter_parts():
    torch.manual_seed(0)
    backbone = PixelFeaturizer("cpu")
    model = SemanticHead(
        StegoHead(backbone.embed_dim, dim=6), ClusterProbe(6, 4), LinearProbe(6, 4), {"n_classes": 4}
    )
    pixels = torch.from_numpy(np.stack([two_region_image(32, 32, s) for s in range(2)])).permute(0, 3, 1, 2)
    return backbone, model, pixels.contiguous()


def test_codes_average_the_image_and_its_mirror(segmenter_parts):
    backbone, model, pixels = segmenter_parts
    segmenter = SemanticSegmenter(backbone, model)
    with torch.no_grad():
        plain = model.head(backbone(pixels).tokens)
        mirrored = model.head(backbone(pixels.flip(-1)).tokens).flip(-1)
        torch.testing.assert_close(segmenter.codes(pixels), (plain + mirrored) / 2)
        # a left-right symmetric image gets left-right symmetric codes
        symmetric = torch.cat([pixels[..., :16], pixels[..., :16].flip(-1)], dim=-1)
        codes = segmenter.codes(symmetric)
        torch.testing.assert_close(codes, codes.flip(-1))


def test_predict_is_the_argmax_of_the_probe_on_upsampled_codes(segmenter_parts):
    backbone, model, pixels = segmenter_parts
    for probe in ("cluster", "linear"):
        segmenter = SemanticSegmenter(backbone, model, probe=probe)
        labels = segmenter.predict(pixels)
        assert labels.shape == (2, 32, 32) and labels.dtype == np.uint8
        with torch.no_grad():
            codes = F.interpolate(segmenter.codes(pixels), size=(32, 32), mode="bilinear", align_corners=False)
            scores = model.cluster_probe.similarity(codes) if probe == "cluster" else model.linear_probe.conv(codes)
        np.testing.assert_array_equal(labels, scores.argmax(1).numpy())


def test_segmenter_rejects_mismatched_heads(segmenter_parts):
    backbone, model, _ = segmenter_parts
    wrong = SemanticHead(StegoHead(backbone.embed_dim + 1, 6), ClusterProbe(6, 4))
    with pytest.raises(ValueError, match="features but backbone"):
        SemanticSegmenter(backbone, wrong)
    with pytest.raises(ValueError, match="linear probe"):
        SemanticSegmenter(backbone, SemanticHead(model.head, model.cluster_probe), probe="linear")


def test_torch_crf_matches_pydensecrf():
    images = [two_region_image(seed=s) for s in range(2)]
    rng = np.random.default_rng(1)
    log_probs = torch.log_softmax(torch.from_numpy(rng.standard_normal((2, 5, 40, 56))).float() * 1.5, dim=1)
    reference = np.stack([dense_crf(im, lp.numpy(), CRF) for im, lp in zip(images, log_probs)])
    batched = dense_crf_torch(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), log_probs, CRF).numpy()
    np.testing.assert_allclose(batched, reference, atol=1e-4)
    np.testing.assert_allclose(reference.sum(axis=1), 1.0, atol=1e-4)
    # the CRF changed the labels (colour-coherent regions), so the comparison is not vacuous
    assert (reference.argmax(1) != log_probs.numpy().argmax(1)).mean() > 0.2


def test_crf_backends_give_the_same_maps(segmenter_parts):
    backbone, model, pixels = segmenter_parts
    maps = [SemanticSegmenter(backbone, model, crf=CRF, crf_backend=b).predict(pixels) for b in ("torch", "pydensecrf")]
    assert (maps[0] == maps[1]).mean() > 0.999
