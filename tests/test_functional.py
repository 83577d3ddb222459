"""The functional core against float64 references written from the formulas (tests/oracles.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from marginnce_loss import LocalizationMarginNCE, MarginNCE
from marginnce_loss import functional as MF

from .oracles import (
    alpha_ref,
    background_ref,
    margin_nce_ref,
    max_ref,
    normalized_features,
    thresholded_ref,
)

SETTINGS = settings(max_examples=25, deadline=None)

shapes = st.tuples(
    st.integers(1, 64),  # B
    st.integers(1, 64),  # C
    st.integers(1, 16),  # H
    st.integers(1, 16),  # W
    st.integers(0, 2**31 - 1),  # seed
)
margins = st.floats(-1.0, 1.0, allow_nan=False)


def _sim(b: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, b, generator=g, dtype=torch.float64) * 2 - 1) * scale


# ---------------------------------------------------------------- kernels vs references


@SETTINGS
@given(shapes)
def test_response_maps_match_reference(shape):
    b, c, h, w, seed = shape
    img, aud = normalized_features(b, c, h, w, seed)
    a = alpha_ref(img, aud)
    torch.testing.assert_close(MF.pairwise_response_maps(img, aud), a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(MF.response_map(img, aud), a[torch.arange(b), torch.arange(b)], rtol=1e-12, atol=1e-12)


@SETTINGS
@given(shapes, st.floats(0.0, 0.9), st.floats(0.02, 0.5))
def test_thresholded_similarity_matches_reference(shape, epsilon, beta):
    b, c, h, w, seed = shape
    img, aud = normalized_features(b, c, h, w, seed)
    out = MF.thresholded_similarity(img, aud, epsilon, beta)
    assert out.shape == (b, b) and out.dtype == torch.float64
    torch.testing.assert_close(out, thresholded_ref(img, aud, epsilon, beta), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(shapes)
def test_max_similarity_matches_reference(shape):
    b, c, h, w, seed = shape
    img, aud = normalized_features(b, c, h, w, seed)
    out = MF.max_similarity(img, aud)
    assert out.shape == (b, b) and out.dtype == torch.float64
    torch.testing.assert_close(out, max_ref(img, aud), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(shapes, st.floats(0.0, 0.9), st.floats(0.02, 0.5))
def test_background_similarity_matches_reference(shape, epsilon, beta):
    b, c, h, w, seed = shape
    img, aud = normalized_features(b, c, h, w, seed)
    out = MF.background_similarity(img, aud, epsilon, beta)
    assert out.shape == (b,)
    torch.testing.assert_close(out, background_ref(img, aud, epsilon, beta), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(st.integers(2, 24), st.integers(0, 2**31 - 1), margins, st.floats(0.02, 1.0), st.booleans(), st.integers(0, 3))
def test_margin_nce_matches_per_anchor_reference(b, seed, margin, tau, symmetric, k):
    sim = _sim(b, seed)
    extra = _sim(b, seed + 1)[:, :k] if k else None
    ref = margin_nce_ref(sim, margin, tau, symmetric, extra)
    out = MF.margin_nce(sim, margin, tau, symmetric, extra, reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(MF.margin_nce(sim, margin, tau, symmetric, extra), ref.mean(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        MF.margin_nce(sim, margin, tau, symmetric, extra, reduction="sum"), ref.sum(), rtol=1e-10, atol=1e-10
    )


# ---------------------------------------------------------------- properties


@SETTINGS
@given(st.integers(2, 64), st.integers(0, 2**31 - 1), st.floats(0.01, 1.0), st.booleans())
def test_margin_zero_is_cross_entropy(b, seed, tau, symmetric):
    sim = _sim(b, seed)
    target = torch.arange(b)
    expected = F.cross_entropy(sim / tau, target)
    if symmetric:
        expected = expected + F.cross_entropy(sim.t() / tau, target)
    torch.testing.assert_close(MF.margin_nce(sim, 0.0, tau, symmetric), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(MarginNCE(0.0, tau, symmetric)(sim), expected, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(st.integers(2, 64), st.integers(0, 2**31 - 1), margins, margins, st.booleans())
def test_loss_strictly_decreases_as_margin_decreases(b, seed, m1, m2, symmetric):
    assume(abs(m1 - m2) >= 1e-3)
    lo, hi = min(m1, m2), max(m1, m2)
    sim = _sim(b, seed)
    assert MF.margin_nce(sim, lo, 0.07, symmetric) < MF.margin_nce(sim, hi, 0.07, symmetric)


@SETTINGS
@given(shapes, margins, st.booleans(), st.sampled_from(["thresholded", "max"]))
def test_batch_permutation_invariance(shape, margin, symmetric, similarity):
    b, c, h, w, seed = shape
    assume(b >= 2)
    img, aud = normalized_features(b, c, h, w, seed)
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
    loss = LocalizationMarginNCE(similarity, margin, symmetric=symmetric)
    torch.testing.assert_close(loss(img, aud), loss(img[perm], aud[perm]), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(shapes, st.floats(-0.5, 0.9), st.floats(0.005, 2.0))
def test_eq1_between_min_and_max_of_alpha(shape, epsilon, beta):
    b, c, h, w, seed = shape
    img, aud = normalized_features(b, c, h, w, seed)
    a = alpha_ref(img, aud).flatten(-2)
    s = MF.thresholded_similarity(img, aud, epsilon, beta)
    assert torch.all(s >= a.min(-1).values - 1e-12) and torch.all(s <= a.max(-1).values + 1e-12)


def test_eq1_tends_to_mean_above_epsilon_as_beta_vanishes():
    img, aud = normalized_features(6, 8, 5, 5, seed=3)
    a = alpha_ref(img, aud).flatten(-2)
    values = a.flatten().sort().values
    k = len(values) // 2  # plenty of values on both sides; epsilon halfway between two neighbours
    epsilon = float(values[k - 1] + values[k]) / 2
    gap = float((a - epsilon).abs().min())
    assert gap > 0
    above = a > epsilon
    expected = (a * above).sum(-1) / above.sum(-1)
    valid = above.any(-1)
    errors = []
    for beta in (gap, gap / 10, gap / 100):
        s = MF.thresholded_similarity(img, aud, epsilon, beta)
        assert torch.isfinite(s).all()  # the log-space branch keeps tiny beta finite
        errors.append((s - expected)[valid].abs().max().item())
    assert errors[-1] < 1e-6
    assert errors[0] > errors[-1]


def test_max_similarity_gradient_reaches_only_argmax():
    img, aud = normalized_features(5, 6, 4, 3, seed=7)
    img.requires_grad_(True)
    s = MF.max_similarity(img, aud)
    a = alpha_ref(img.detach(), aud).flatten(-2)
    arg = a.argmax(-1)  # [B, B]
    for i in range(5):
        for j in range(5):
            (g,) = torch.autograd.grad(s[i, j], img, retain_graph=True)
            g = g.flatten(-2)  # [B, C, HW]
            nz = g.abs().sum(1) != 0  # [B, HW]
            expected = torch.zeros_like(nz)
            expected[i, arg[i, j]] = True
            assert torch.equal(nz, expected)
            torch.testing.assert_close(g[i, :, arg[i, j]], aud[j])


# ---------------------------------------------------------------- gradients (float64 gradcheck)
# The similarity kernels' backward passes are derived by hand (marginnce_loss/_kernels.py): each is
# checked here through its public function, in both memory layouts, with B' != B.

LAYOUTS = ("nchw", "channels_last")


def _gc(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def _leaves(b: int, b_aud: int, seed: int, layout: str = "nchw", c: int = 5, h: int = 2, w: int = 3):
    img, _ = normalized_features(b, c, h, w, seed=seed)
    _, aud = normalized_features(b_aud, c, 1, 1, seed=seed + 1)
    if layout == "channels_last":
        img = img.contiguous(memory_format=torch.channels_last)
    return img.requires_grad_(True), aud.requires_grad_(True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("recompute", [False, True], ids=["keep-maps", "recompute"])
@pytest.mark.parametrize(
    "epsilon,beta",
    [(0.1, 0.3), (0.2, 0.0015), (0.0, 0.001)],
    ids=["plain", "stable-weights", "stable-weights-tiny-beta"],  # (1 + |eps|) / beta > 700: log-space weights
)
def test_gradcheck_thresholded_similarity(layout, recompute, epsilon, beta):
    from marginnce_loss import _kernels

    assert _kernels.needs_stable_weights(epsilon, beta, torch.float64) == (beta < 0.01)
    img, aud = _leaves(3, 4, seed=1, layout=layout)
    _gc(lambda i, a: MF.thresholded_similarity(i, a, epsilon, beta, backend="eager", recompute=recompute), img, aud)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_max_similarity(layout):
    img, aud = _leaves(3, 4, seed=3, layout=layout)
    _gc(lambda i, a: MF.max_similarity(i, a, backend="eager"), img, aud)


@pytest.mark.parametrize("similarity", ["thresholded", "max"])
def test_double_backward_is_exact(similarity):
    """create_graph=True differentiates the dense formula, so second derivatives are autograd's."""
    img, aud = _leaves(3, 3, seed=5, c=4, h=2, w=2)
    if similarity == "thresholded":
        fn = lambda i, a: MF.thresholded_similarity(i, a, 0.1, 0.3, backend="eager")  # noqa: E731
    else:
        fn = lambda i, a: MF.max_similarity(i, a, backend="eager")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (img, aud))


def test_gradcheck_background_similarity():
    img, aud = _leaves(3, 3, seed=1)
    _gc(lambda i, a: MF.background_similarity(i, a, 0.0, 0.3), img, aud)


def test_gradcheck_response_maps():
    img, aud = _leaves(3, 3, seed=1)
    _gc(MF.response_map, img, aud)
    _gc(MF.pairwise_response_maps, img, aud)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_margin_nce(symmetric, reduction):
    sim = _sim(4, 0).requires_grad_(True)
    extra = _sim(4, 1)[:, :2].requires_grad_(True)
    _gc(lambda s, e: MF.margin_nce(s, -0.2, 0.5, symmetric, e, reduction), sim, extra)
    _gc(lambda s: MF.margin_nce(s, 0.3, 0.5, symmetric, None, reduction), sim)


@pytest.mark.parametrize("similarity", ["thresholded", "max"])
def test_gradcheck_localization_loss(similarity):
    img, aud = _leaves(3, 3, seed=4)
    loss = LocalizationMarginNCE(similarity, -0.2, tau=0.5, epsilon=0.0, beta=0.3, symmetric=True, backend="eager")
    _gc(loss, img, aud)


# ---------------------------------------------------------------- numerics


# Largest relative error against float64 that docs/the-loss.md states for each kernel and input dtype
# (measured by `python -m benchmarks.precision`: benchmarks/results/precision-*.md, 40 cases a row,
# rounded up): (loss, gradient). Max-MIL's half-precision gradient has no bound: a near tie of two
# responses can round either way and send the gradient to another location.
ACCURACY = {
    ("max-MIL", "float16"): (3e-3, None),
    ("max-MIL", "bfloat16"): (1.5e-2, None),
    ("max-MIL", "float32"): (2e-4, 1e-3),
    ("eq1", "float16"): (3e-4, 6e-3),
    ("eq1", "bfloat16"): (5e-3, 6e-2),
    ("eq1", "float32"): (1e-6, 1e-5),
}


@pytest.mark.parametrize("kernel,dtype", sorted(ACCURACY), ids=lambda v: v)
def test_loss_accuracy_per_dtype(kernel, dtype):
    """The precision table of docs/the-loss.md, pinned on four of the benchmark's cases (C = 64, B = 32)."""
    from benchmarks.precision import DTYPES, features, relative_errors

    loss_bound, grad_bound = ACCURACY[(kernel, dtype)]
    for kind, seed in (("random", 0), ("random", 1), ("aligned", 0), ("aligned", 1)):
        img, aud = features(kind, 32, 64, 7, 7, seed)
        err = relative_errors(kernel, DTYPES[dtype], img, aud)
        assert err["loss"] <= loss_bound, (kind, seed, err)
        if grad_bound is not None:
            assert err["grad"] <= grad_bound, (kind, seed, err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_similarities_give_the_float32_loss(dtype):
    """margin_nce runs its log-sum-exp in float32: a half-precision sim gives the loss of its float32 value."""
    sim = (torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)
    for symmetric in (False, True):
        out = MF.margin_nce(sim, -0.2, 0.01, symmetric)
        assert out.dtype == torch.float32
        assert torch.equal(out, MF.margin_nce(sim.float(), -0.2, 0.01, symmetric))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_no_overflow_for_large_logits(dtype):
    # |S / tau| up to 1e4
    sim = torch.tensor([[1.0, -1.0, 0.5], [0.9, 1.0, -0.3], [1.0, 1.0, 1.0]], dtype=dtype)
    for symmetric in (False, True):
        out = MF.margin_nce(sim, -0.2, 1e-4, symmetric, reduction="none")
        assert torch.isfinite(out).all()
        # float64 closed form via logsumexp (the per-anchor math.exp reference would overflow here)
        s = sim.double() / 1e-4
        s = s - torch.eye(3, dtype=torch.float64) * (-0.2 / 1e-4)
        exp = torch.logsumexp(s, 1) - s.diagonal()
        if symmetric:
            exp = exp + torch.logsumexp(s, 0) - s.diagonal()
        torch.testing.assert_close(out.double(), exp, rtol=1e-6, atol=1e-3)


def test_batch_of_one_with_extra_negatives():
    sim = torch.tensor([[0.7]], dtype=torch.float64)
    extra = torch.tensor([[0.2, 0.9]], dtype=torch.float64)
    out = MF.margin_nce(sim, -0.2, 0.07, extra_negatives=extra)
    torch.testing.assert_close(out, margin_nce_ref(sim, -0.2, 0.07, extra=extra).mean())
    out_sym = MF.margin_nce(sim, -0.2, 0.07, symmetric=True, extra_negatives=extra)
    torch.testing.assert_close(out_sym, out)  # the single column direction has only the positive: log 1 = 0


def test_float64_stays_float64():
    img, aud = normalized_features(6, 8, 3, 3, seed=9)
    tau, margin = 0.07, -0.2
    for similarity in ("thresholded", "max"):
        loss = LocalizationMarginNCE(similarity, margin, tau, symmetric=True)(img, aud)
        assert loss.dtype == torch.float64
    # no float32 constant in the margin: compare against a float64 reference at 1e-14
    sim = _sim(6, 3)
    ref = margin_nce_ref(sim, margin, tau).mean()
    assert abs(MF.margin_nce(sim, margin, tau).item() - ref.item()) < 1e-13


def test_reduction_none_shape_and_module_repr():
    sim = _sim(5, 1)
    assert MarginNCE(reduction="none")(sim).shape == (5,)
    assert "margin=-0.2" in repr(MarginNCE())
    assert math.isfinite(MarginNCE(symmetric=True)(sim).item())
