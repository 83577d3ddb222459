"""A learnable temperature (issue 22): ``tau`` a 0-d tensor that requires grad, in ``margin_nce``,
``MarginNCE``, ``LocalizationMarginNCE`` and ``margin_cross_entropy``. The loss and the gradient
reaching ``tau`` equal those of ``F.cross_entropy((S - m I) / tau, arange(B))`` (paper eq. 3: the
scale applies to the margin-shifted similarities), checked by gradcheck in float64."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from marginnce_loss import LocalizationMarginNCE, MarginNCE
from marginnce_loss import functional as MF
from marginnce_loss.adapters import margin_cross_entropy

from .oracles import margin_nce_ref, normalized_features, thresholded_ref


def _sim(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, b, generator=g, dtype=torch.float64) * 2 - 1


def _ce_oracle(sim, margin, tau, symmetric=False, reduction="mean"):
    """Eq. 3 as the issue states it: cross-entropy of the margin-shifted similarities over tau."""
    logits = (sim - margin * torch.eye(sim.shape[0], dtype=sim.dtype)) / tau
    target = torch.arange(sim.shape[0])
    rows = F.cross_entropy(logits, target, reduction="none")
    per = rows + F.cross_entropy(logits.t(), target, reduction="none") if symmetric else rows
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_margin_nce_learnable_tau_matches_cross_entropy_and_gradchecks(symmetric, reduction):
    sim = _sim(5).requires_grad_()
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    got = MF.margin_nce(sim, -0.2, tau, symmetric, reduction=reduction)
    expected = _ce_oracle(sim, -0.2, tau, symmetric, reduction)
    w = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g_got = torch.autograd.grad((got * w).sum(), (sim, tau))
    g_exp = torch.autograd.grad((expected * w).sum(), (sim, tau))
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    for x, y in zip(g_got, g_exp):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)
    assert g_got[1].abs() > 0  # the temperature learns
    assert torch.autograd.gradcheck(lambda s, t: MF.margin_nce(s, -0.2, t, symmetric, reduction=reduction), (sim, tau))
    # the anchor-by-anchor oracle agrees on the value
    per = MF.margin_nce(sim.detach(), -0.2, tau.detach(), symmetric, reduction="none")
    assert torch.allclose(per, margin_nce_ref(sim.detach(), -0.2, 0.3, symmetric), rtol=1e-12, atol=0)


def test_clip_style_logit_scale_in_the_module():
    """A CLIP ``logit_scale`` parameter: tau = 1 / logit_scale.exp(), assigned afresh each step."""
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))
    loss_fn = MarginNCE(margin=-0.2, tau=0.07)
    sim = _sim(6, 2)
    for _ in range(2):  # two steps: the second needs a fresh graph, which the assignment gives
        loss_fn.tau = 1 / logit_scale.exp()
        value = loss_fn(sim)
        (grad,) = torch.autograd.grad(value, logit_scale)
        expected = _ce_oracle(sim, -0.2, 1 / logit_scale.exp())
        (g_exp,) = torch.autograd.grad(expected, logit_scale)
        assert torch.allclose(value, expected, rtol=1e-12) and torch.allclose(grad, g_exp, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda s: MarginNCE(-0.2, 1 / s.exp())(sim), (logit_scale,))


def test_parameter_tau_is_held_not_registered_and_checked():
    tau = torch.nn.Parameter(torch.tensor(0.1))
    loss_fn = MarginNCE(tau=tau)
    assert loss_fn.tau is tau and list(loss_fn.parameters()) == []
    loss_fn(_sim(4).float()).backward()
    assert tau.grad is not None and tau.grad.abs() > 0
    with pytest.raises(ValueError, match="tau: expected a finite float > 0"):
        loss_fn.tau = torch.nn.Parameter(torch.tensor(-0.1))
    with pytest.raises(TypeError, match="tau: expected a learnable temperature as a 0-d"):
        MarginNCE(tau=torch.nn.Parameter(torch.tensor([0.1])))
    with pytest.raises(TypeError, match="margin: expected .* without grad"):  # only tau may learn
        MarginNCE(margin=torch.nn.Parameter(torch.tensor(-0.2)))


@pytest.mark.parametrize("similarity", ["thresholded", "max"])
def test_localization_loss_learnable_tau_gradchecks(similarity):
    img, aud = normalized_features(4, 5, 3, 3, seed=3)
    img, aud = img.requires_grad_(), aud.requires_grad_()
    tau = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    def loss(i, a, t):
        return LocalizationMarginNCE(similarity, margin=-0.2, tau=t, epsilon=0.3, beta=0.1, symmetric=True,
                                     backend="eager", check_inputs=False)(i, a)

    assert torch.autograd.gradcheck(loss, (img, aud, tau))
    if similarity == "thresholded":
        expected = _ce_oracle(thresholded_ref(img, aud, 0.3, 0.1), -0.2, tau, symmetric=True)
        got = loss(img, aud, tau)
        g_got = torch.autograd.grad(got, (img, aud, tau))
        g_exp = torch.autograd.grad(expected, (img, aud, tau))
        assert torch.allclose(got, expected, rtol=1e-10)
        for x, y in zip(g_got, g_exp):
            assert torch.allclose(x, y, rtol=1e-8, atol=1e-12)


def test_compiled_with_learnable_tau_falls_back_to_eager_warning_once_per_call_site():
    img, aud = normalized_features(4, 5, 3, 3, seed=4, dtype=torch.float32)
    tau = torch.nn.Parameter(torch.tensor(0.2))
    module = LocalizationMarginNCE("thresholded", tau=tau, backend="compiled", check_inputs=False)
    eager = LocalizationMarginNCE("thresholded", tau=tau, backend="eager", check_inputs=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # the default filter: once per call site
        for _ in range(3):
            value = module(img, aud)
    messages = [str(w.message) for w in caught if "learnable tau" in str(w.message)]
    assert len(messages) == 1, messages
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert torch.equal(value, eager(img, aud))
    (grad,) = torch.autograd.grad(value, tau)
    assert grad.abs() > 0


@pytest.mark.parametrize("symmetric", [False, True])
def test_margin_cross_entropy_with_the_tau_the_logits_were_divided_by(symmetric):
    """Already-scaled logits: with the tensor tau the gradient reaching it is right (a float tau cannot be)."""
    sim = _sim(5, 5)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def ours(t):
        return margin_cross_entropy(sim / t, margin=-0.2, tau=t, symmetric=symmetric)

    expected = _ce_oracle(sim, -0.2, tau, symmetric)
    got = ours(tau)
    (g_got,) = torch.autograd.grad(got, tau)
    (g_exp,) = torch.autograd.grad(expected, tau)
    assert torch.allclose(got, expected, rtol=1e-12) and torch.allclose(g_got, g_exp, rtol=1e-9)
    assert torch.autograd.gradcheck(ours, (tau,))
    # the documented pitfall, measured: a float tau treats -m / tau as a constant, the gradient is off
    (g_float,) = torch.autograd.grad(margin_cross_entropy(sim / tau, -0.2, 0.2, symmetric), tau)
    assert not torch.allclose(g_float, g_exp, rtol=1e-3)


def test_replay_openai_clip_46_clamped_logit_scale():
    """openai/CLIP#46: CLIP clamps the learned scale at 100 (``logit_scale.exp().clamp(max=100)``); through
    MarginNCE the gradient is CE's: zero once clamped, nonzero below the clamp."""
    sim = _sim(4, 8)
    for start, clamped in ((math.log(1 / 0.07), False), (math.log(200.0), True)):
        logit_scale = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
        tau = 1 / logit_scale.exp().clamp(max=100)
        (grad,) = torch.autograd.grad(MarginNCE(-0.2, tau)(sim), logit_scale)
        (expected,) = torch.autograd.grad(_ce_oracle(sim, -0.2, 1 / logit_scale.exp().clamp(max=100)), logit_scale)
        assert torch.allclose(grad, expected, rtol=1e-10, atol=0)
        assert (grad == 0) == clamped
