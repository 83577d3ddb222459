"""Adapters against the upstream loss sites (EZ-VSL ``model.py`` @ 95ff5bf, LVS ``model.py`` @ 8fe8cbb,
cross-entropy on logits as SLAVC's ``model.py`` @ 05b429c), written in tests/oracles.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from marginnce_loss import functional as MF
from marginnce_loss.adapters import ezvsl, lvs, reference

from .oracles import (
    margin_cross_entropy_ref,
    normalized_features,
    trained_like_features,
    upstream_ezvsl_max_xmil_loss,
    upstream_lvs_logits,
)

INPUTS = {
    "random": lambda b, c, h, w, s: normalized_features(b, c, h, w, s, dtype=torch.float32),
    "trained": lambda b, c, h, w, s: trained_like_features(b, c, h, w, s, dtype=torch.float32),
}
SHAPES = [(2, 8, 7, 7), (16, 64, 7, 7), (48, 128, 14, 14)]


@pytest.mark.parametrize("kind", sorted(INPUTS))
@pytest.mark.parametrize("shape", SHAPES)
def test_ezvsl_margin_zero_is_upstream(kind, shape):
    img, aud = INPUTS[kind](*shape, 11)
    loss, slogits = ezvsl.max_xmil_loss(img, aud, tau=0.03, margin=0.0)
    up_loss, up_slogits = upstream_ezvsl_max_xmil_loss(img, aud, tau=0.03)
    assert slogits.shape == up_slogits.shape == (shape[0], shape[0], shape[2], shape[3])
    torch.testing.assert_close(loss, up_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(slogits, up_slogits, rtol=1e-5, atol=1e-5)


def test_ezvsl_margin_subtracts_m_over_tau_from_diagonal_logits():
    img, aud = normalized_features(12, 32, 7, 7, 3, dtype=torch.float64)
    loss, slogits = ezvsl.max_xmil_loss(img, aud, tau=0.03, margin=-0.2)
    expected, up_slogits = upstream_ezvsl_max_xmil_loss(img, aud, tau=0.03, margin=-0.2)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slogits, up_slogits, rtol=1e-12, atol=1e-12)


def test_ezvsl_gradients_match_upstream():
    img, aud = trained_like_features(16, 64, 7, 7, 5)
    g1 = torch.autograd.grad(ezvsl.max_xmil_loss(img.requires_grad_(), aud.requires_grad_())[0], (img, aud))
    g2 = torch.autograd.grad(upstream_ezvsl_max_xmil_loss(img, aud)[0], (img, aud))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(INPUTS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("trimap,neg", [(True, True), (False, True), (True, False)])
def test_lvs_margin_zero_is_upstream(kind, shape, trimap, neg):
    img, aud = INPUTS[kind](*shape, 13)
    out = lvs.lvs_logits(img, aud, margin=0.0, trimap=trimap, hard_negative=neg)
    up = upstream_lvs_logits(img, aud, trimap=trimap, neg=neg)
    assert out.shape == up.shape == (shape[0], 1 + shape[0] + int(neg))
    torch.testing.assert_close(out, up, rtol=1e-5, atol=1e-5)
    target = torch.zeros(shape[0], dtype=torch.long)
    torch.testing.assert_close(F.cross_entropy(out, target), F.cross_entropy(up, target), rtol=1e-5, atol=0)


def test_lvs_margin_moves_only_the_positive_column():
    img, aud = normalized_features(8, 16, 7, 7, 2, dtype=torch.float64)
    base = lvs.lvs_logits(img, aud, margin=0.0)
    moved = lvs.lvs_logits(img, aud, margin=-0.3)
    torch.testing.assert_close(moved[:, 0], base[:, 0] + 0.3 / 0.07)
    torch.testing.assert_close(moved[:, 1:], base[:, 1:])
    torch.testing.assert_close(moved, upstream_lvs_logits(img, aud, margin=-0.3), rtol=1e-12, atol=1e-12)


def test_lvs_exclude_diagonal_is_margin_nce_with_background_negative():
    img, aud = normalized_features(10, 16, 7, 7, 4, dtype=torch.float64)
    m = -0.2
    logits = lvs.lvs_logits(img, aud, margin=m, diagonal="exclude")
    assert torch.isinf(logits[:, 1:11].diagonal()).all()
    ce = F.cross_entropy(logits, torch.zeros(10, dtype=torch.long))
    sim = MF.thresholded_similarity(img, aud, 0.65, 0.03)
    bg = MF.background_similarity(img, aud, 0.4, 0.03)
    torch.testing.assert_close(ce, MF.margin_nce(sim, m, 0.07, extra_negatives=bg[:, None]), rtol=1e-12, atol=1e-12)
    # and the gradients stay finite despite the -inf logits
    img.requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(lvs.lvs_logits(img, aud, diagonal="exclude"), torch.zeros(10, dtype=torch.long)), img)
    assert torch.isfinite(g).all()


def test_lvs_upstream_diagonal_quirk_is_minus_99_s_ii():
    img, aud = normalized_features(6, 16, 7, 7, 8, dtype=torch.float64)
    logits = lvs.lvs_logits(img, aud)
    sim = MF.thresholded_similarity(img, aud, 0.65, 0.03)
    torch.testing.assert_close(logits[:, 1:7].diagonal(), -99 * sim.diagonal() / 0.07)


@pytest.mark.parametrize("margin", [0.0, -0.2])
def test_reference_loss_is_eq1_plus_eq3(margin):
    img, aud = trained_like_features(12, 32, 7, 7, 6, dtype=torch.float64)
    value, maps = reference.loss(img, aud, margin=margin)
    sim = MF.thresholded_similarity(img, aud, 0.65, 0.03)
    torch.testing.assert_close(value, MF.margin_nce(sim, margin, 0.07), rtol=1e-12, atol=1e-12)
    if margin == 0.0:
        torch.testing.assert_close(value, F.cross_entropy(sim / 0.07, torch.arange(12)), rtol=1e-12, atol=1e-12)
    assert maps.shape == (12, 7, 7) and not maps.requires_grad
    torch.testing.assert_close(maps, (img * aud[:, :, None, None]).sum(1))


def test_adapters_keep_float64():
    img, aud = normalized_features(4, 8, 3, 3, 1)
    assert ezvsl.max_xmil_loss(img, aud)[0].dtype == torch.float64
    assert lvs.lvs_logits(img, aud).dtype == torch.float64
    assert reference.loss(img, aud)[0].dtype == torch.float64


def test_ezvsl_single_clip_is_zero_like_upstream():
    # upstream's validate()/test.py call the loss with batch_size=1; cross-entropy over one logit is 0
    img, aud = normalized_features(1, 16, 7, 7, 0, dtype=torch.float32)
    for margin in (0.0, -0.2):
        loss, slogits = ezvsl.max_xmil_loss(img.requires_grad_(), aud, margin=margin)
        up_loss, up_slogits = upstream_ezvsl_max_xmil_loss(img, aud)
        assert loss.item() == up_loss.item() == 0.0
        torch.testing.assert_close(slogits, up_slogits)
        loss.backward()  # attached to the graph, zero gradient
        assert torch.count_nonzero(img.grad) == 0
        img.grad = None


@pytest.mark.parametrize("symmetric", [False, True])
def test_margin_cross_entropy_is_shifted_cross_entropy(symmetric):
    from marginnce_loss.adapters import margin_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 7, generator=g, dtype=torch.float64) * 10
    m, tau = -0.2, 0.03
    target = torch.arange(7)
    expected = margin_cross_entropy_ref(logits, m, tau, symmetric)
    torch.testing.assert_close(margin_cross_entropy(logits, m, tau, symmetric), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(margin_cross_entropy(logits, 0.0, tau, symmetric),
                               F.cross_entropy(logits, target) + (F.cross_entropy(logits.t(), target) if symmetric else 0),
                               rtol=1e-12, atol=1e-12)
    one = torch.tensor([[3.0]])
    assert margin_cross_entropy(one, m, tau).item() == F.cross_entropy(one, torch.tensor([0])).item() == 0.0
