"""STEGO correspondence loss against a plain implementation written from the formulas (float64, loops)."""

import math

import pytest
import torch

from u2seg_core.config import StegoLossConfig
from u2seg_core.stego.loss import SamplingDraw, correspondence_loss, draw_sampling, super_perm


def bilinear_point(maps, x, y):
    """maps (C, h, w) at normalised (x, y) in [-1, 1], align_corners=True, border padding."""
    _, h, w = maps.shape
    px = min(max((float(x) + 1) / 2 * (w - 1), 0.0), w - 1)
    py = min(max((float(y) + 1) / 2 * (h - 1), 0.0), h - 1)
    x0, y0 = math.floor(px), math.floor(py)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    ax, ay = px - x0, py - y0
    top = (1 - ax) * maps[:, y0, x0] + ax * maps[:, y0, x1]
    bottom = (1 - ax) * maps[:, y1, x0] + ax * maps[:, y1, x1]
    return (1 - ay) * top + ay * bottom


def points(maps, coords):
    """(C, h, w), coords (S, S, 2) -> (S*S, C), row i*S+j = point coords[i, j]."""
    s = coords.shape[0]
    return torch.stack([bilinear_point(maps, *coords[i, j]) for i in range(s) for j in range(s)])


def unit(v):
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-10)


def reference_term(anchor_f, partner_f, anchor_c, partner_c, shift, cfg):
    """Lists over the batch of (P, C) points -> mean over batch and all anchor/partner pairs."""
    feature_corr = [(unit(a)[:, None, :] * unit(b)[None, :, :]).sum(-1).detach() for a, b in zip(anchor_f, partner_f)]
    if cfg.pointwise:
        batch_mean = torch.stack(feature_corr).mean()
        feature_corr = [f - f.mean(dim=1, keepdim=True) for f in feature_corr]
        centred_mean = torch.stack(feature_corr).mean()
        feature_corr = [f - centred_mean + batch_mean for f in feature_corr]
    losses = []
    for f, a, b in zip(feature_corr, anchor_c, partner_c):
        code_corr = (unit(a)[:, None, :] * unit(b)[None, :, :]).sum(-1)
        if cfg.zero_clamp:
            code_corr = torch.maximum(code_corr, torch.zeros_like(code_corr))
        if cfg.stabilize:
            code_corr = torch.minimum(code_corr, torch.full_like(code_corr, 0.8))
        losses.append(-code_corr * (f - shift))
    return torch.stack(losses).mean()


def reference_loss(feats, feats_pos, codes, codes_pos, cfg, draw):
    n = feats.shape[0]
    f1 = [points(feats[b], draw.coords_anchor[b]) for b in range(n)]
    c1 = [points(codes[b], draw.coords_anchor[b]) for b in range(n)]
    f2 = [points(feats_pos[b], draw.coords_partner[b]) for b in range(n)]
    c2 = [points(codes_pos[b], draw.coords_partner[b]) for b in range(n)]
    self_term = reference_term(f1, f1, c1, c1, cfg.pos_intra_shift, cfg)
    knn_term = reference_term(f1, f2, c1, c2, cfg.pos_inter_shift, cfg)
    random_terms = []
    for perm in draw.negative_perms:
        fn = [points(feats[int(perm[b])], draw.coords_partner[b]) for b in range(n)]
        cn = [points(codes[int(perm[b])], draw.coords_partner[b]) for b in range(n)]
        random_terms.append(reference_term(f1, fn, c1, cn, cfg.neg_inter_shift, cfg))
    random_term = torch.stack(random_terms).mean()  # equal-sized blocks: mean of means = mean of the concatenation
    total = cfg.pos_intra_weight * self_term + cfg.pos_inter_weight * knn_term + cfg.neg_inter_weight * random_term
    return total, self_term, knn_term, random_term


def random_inputs(seed, batch=4, channels=6, dim=5, size=(7, 9)):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, channels, *size, generator=g, dtype=torch.float64)
    feats_pos = torch.randn(batch, channels, *size, generator=g, dtype=torch.float64)
    codes = torch.randn(batch, dim, *size, generator=g, dtype=torch.float64, requires_grad=True)
    codes_pos = torch.randn(batch, dim, *size, generator=g, dtype=torch.float64, requires_grad=True)
    return feats, feats_pos, codes, codes_pos, g


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize(
    "cfg",
    [
        StegoLossConfig(),  # STEGO COCO ViT-B block
        StegoLossConfig(feature_samples=5, neg_samples=3, pointwise=False, stabilize=True,
                        pos_intra_shift=0.0, pos_inter_shift=-0.1, neg_inter_shift=0.3),
        StegoLossConfig(feature_samples=4, neg_samples=2, zero_clamp=False),
    ],
    ids=["stego-default", "no-pointwise-stabilize", "no-zero-clamp"],
)
def test_loss_matches_plain_reference_with_gradients(cfg):
    feats, feats_pos, codes, codes_pos, g = random_inputs(0)
    draw = draw_sampling(feats.shape[0], cfg, g)
    # exercise exact border points too
    draw.coords_anchor[0, 0, 0] = torch.tensor([1.0, -1.0])
    draw.coords_partner[1, 2, 3] = torch.tensor([-1.0, 1.0])

    ours = correspondence_loss(feats, feats_pos, codes, codes_pos, cfg, draw)
    g_codes, g_codes_pos = torch.autograd.grad(ours.total, (codes, codes_pos))
    ref_total, ref_self, ref_knn, ref_random = reference_loss(feats, feats_pos, codes, codes_pos, cfg, draw)
    r_codes, r_codes_pos = torch.autograd.grad(ref_total, (codes, codes_pos))

    for got, want in ((ours.total, ref_total), (ours.self_term, ref_self), (ours.knn_term, ref_knn),
                      (ours.random_term, ref_random)):
        assert rel_err(got.detach(), want.detach()) <= 1e-5, (float(got), float(want))
    assert rel_err(g_codes, r_codes) <= 1e-5
    assert rel_err(g_codes_pos, r_codes_pos) <= 1e-5
    assert r_codes.abs().sum() > 0 and r_codes_pos.abs().sum() > 0


def test_float32_path_close_to_float64_reference():
    cfg = StegoLossConfig()
    feats, feats_pos, codes, codes_pos, g = random_inputs(1)
    draw = draw_sampling(feats.shape[0], cfg, g)
    ours = correspondence_loss(feats.float(), feats_pos.float(), codes.float(), codes_pos.float(), cfg, draw)
    ref = reference_loss(feats, feats_pos, codes, codes_pos, cfg, draw)[0]
    assert rel_err(ours.total.detach().double(), ref.detach()) <= 1e-4


def test_features_get_no_gradient_and_shift_moves_loss():
    cfg = StegoLossConfig(feature_samples=3, neg_samples=1)
    feats, feats_pos, codes, codes_pos, g = random_inputs(2)
    feats.requires_grad_(True)
    draw = draw_sampling(feats.shape[0], cfg, g)
    loss = correspondence_loss(feats, feats_pos, codes, codes_pos, cfg, draw)
    assert torch.autograd.grad(loss.total, feats, allow_unused=True)[0] is None
    # a larger shift pushes every clamped pair harder apart: the loss grows
    larger_shift = cfg.model_copy(update={"pos_intra_shift": 0.9})
    shifted = correspondence_loss(feats, feats_pos, codes, codes_pos, larger_shift, draw)
    assert shifted.self_term > loss.self_term


def test_super_perm_has_no_fixed_points_and_draw_shapes():
    g = torch.Generator().manual_seed(0)
    for size in (2, 3, 8, 16):
        for _ in range(50):
            perm = super_perm(size, g)
            assert perm.shape == (size,)
            assert not (perm == torch.arange(size)).any()
            assert perm.min() >= 0 and perm.max() < size
    draw = draw_sampling(6, StegoLossConfig(), g)
    assert isinstance(draw, SamplingDraw)
    assert draw.coords_anchor.shape == (6, 11, 11, 2) and draw.coords_partner.shape == (6, 11, 11, 2)
    assert draw.negative_perms.shape == (5, 6)
    assert draw.coords_anchor.abs().max() <= 1
