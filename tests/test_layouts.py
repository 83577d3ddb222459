"""Every kernel is right for any strides of its tensor inputs, at one and two intra-op threads.

Issue 22: a permuted ``img`` (``x.transpose(2, 3)`` of a ``[B, C, W, H]`` tensor) crashed eq. 1's
backward in the one-thread batched CPU branch (the gradient took ``img``'s strides, then ``.view``
failed). Here hypothesis draws the image and audio layouts (contiguous, channels-last, transposed
spatial dims, strided slices, expanded), the kernel, the backend, the gradient's shape (the loss's
reductions, the ``[B, B']`` similarities, the response maps), which inputs require grad and the
thread count, and compares the forward and the gradients reaching the *storage* tensors (the leaves
the views are taken of) against the float64 oracles of ``tests/oracles.py`` through the same views.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from marginnce_loss import LocalizationMarginNCE
from marginnce_loss import functional as MF

from .conftest import torch_threads
from .oracles import alpha_ref, background_ref, margin_nce_ref, max_ref, thresholded_ref

View = Callable[[torch.Tensor], torch.Tensor]


def _img_layout(name: str, b: int, c: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, View]:
    """``(storage, view)`` with ``view(storage)`` a ``[B, C, H, W]`` tensor, unit-length over C, in layout ``name``."""
    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=1)

    if name == "contiguous":
        return unit(b, c, h, w), lambda s: s
    if name == "channels_last":
        return unit(b, c, h, w).permute(0, 2, 3, 1).contiguous(), lambda s: s.permute(0, 3, 1, 2)
    if name == "transposed":  # the reported layout: a [B, C, W, H] tensor seen as [B, C, H, W]
        return unit(b, c, w, h), lambda s: s.transpose(2, 3)
    if name == "slice":  # every other column and a channel offset: no dense layout at all
        store = torch.randn(b, c + 1, h, 2 * w, generator=g, dtype=torch.float64)
        store[:, 1:, :, ::2] = unit(b, c, h, w)
        return store, lambda s: s[:, 1:, :, ::2]
    if name == "expanded":  # stride 0 along W
        return unit(b, c, h, 1), lambda s: s.expand(-1, -1, -1, w)
    raise AssertionError(name)


def _aud_layout(name: str, b: int, c: int, g: torch.Generator) -> tuple[torch.Tensor, View]:
    """``(storage, view)`` with ``view(storage)`` a ``[B, C]`` tensor, unit-length over C, in layout ``name``."""
    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)

    if name == "contiguous":
        return unit(b, c), lambda s: s
    if name == "transposed":
        return unit(b, c).t().contiguous(), lambda s: s.t()
    if name == "slice":
        store = torch.randn(2 * b, c + 2, generator=g, dtype=torch.float64)
        store[::2, 2:] = unit(b, c)
        return store, lambda s: s[::2, 2:]
    if name == "expanded":  # one audio for the whole batch, stride 0 along B
        return unit(1, c), lambda s: s.expand(b, -1)
    raise AssertionError(name)


IMG_LAYOUTS = ("contiguous", "channels_last", "transposed", "slice", "expanded")
AUD_LAYOUTS = ("contiguous", "transposed", "slice", "expanded")


def _loss_ref(similarity: Callable, margin: float, tau: float, reduction: str, symmetric: bool) -> Callable:
    def ref(img: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        sim = similarity(img, aud)
        # eq. 3 differentiably in float64 (margin_nce_ref is the anchor-by-anchor check of this formula)
        logits = (sim - margin * torch.eye(sim.shape[0], dtype=sim.dtype)) / tau
        target = torch.arange(sim.shape[0])
        per = F.cross_entropy(logits, target, reduction="none")
        if symmetric:
            per = per + F.cross_entropy(logits.t(), target, reduction="none")
        assert torch.allclose(per.detach(), margin_nce_ref(sim.detach(), margin, tau, symmetric), rtol=1e-10, atol=0)
        return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]  # symmetric mean: rows + cols means
    return ref


def _kernel(name: str, backend: str, reduction: str) -> tuple[Callable, Callable]:
    """``(ours, oracle)`` for kernel ``name``."""
    if name == "thresholded":
        return (lambda i, a: MF.thresholded_similarity(i, a, 0.3, 0.1, backend=backend)), (
            lambda i, a: thresholded_ref(i, a, 0.3, 0.1))
    if name == "max":
        return (lambda i, a: MF.max_similarity(i, a, backend=backend)), max_ref
    if name == "background":
        return (lambda i, a: MF.background_similarity(i, a, 0.2, 0.1)), (lambda i, a: background_ref(i, a, 0.2, 0.1))
    if name == "response_map":
        return MF.response_map, (lambda i, a: (i * a[:, :, None, None]).sum(1))
    if name == "pairwise":
        return MF.pairwise_response_maps, alpha_ref
    similarity, symmetric = ("thresholded", False) if name == "loss-thresholded" else ("max", True)
    module = LocalizationMarginNCE(similarity, margin=-0.2, tau=0.5, epsilon=0.3, beta=0.1, symmetric=symmetric,
                                   reduction=reduction, backend=backend, check_inputs=False)
    ref_sim = (lambda i, a: thresholded_ref(i, a, 0.3, 0.1)) if similarity == "thresholded" else max_ref
    return module, _loss_ref(ref_sim, -0.2, 0.5, reduction, symmetric)


KERNELS = ("thresholded", "max", "background", "response_map", "pairwise", "loss-thresholded", "loss-max")


def _check(kernel: str, backend: str, img_layout: str, aud_layout: str, reduction: str, grads: str, dtype: torch.dtype,
           threads: int, shape: tuple[int, int, int, int], seed: int) -> None:
    b, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    img_store, img_view = _img_layout(img_layout, b, c, h, w, g)
    aud_store, aud_view = _aud_layout(aud_layout, b, c, g)
    ours, oracle = _kernel(kernel, backend, reduction)
    need = {"both": (True, True), "img": (True, False), "aud": (False, True)}[grads]

    # the oracle runs on the inputs as rounded to dtype: only the kernel's own rounding is measured
    img_store, aud_store = img_store.to(dtype).double(), aud_store.to(dtype).double()
    expected_leaves = [img_store.clone().requires_grad_(need[0]), aud_store.clone().requires_grad_(need[1])]
    expected = oracle(img_view(expected_leaves[0]), aud_view(expected_leaves[1]))
    weights = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    wanted = [t for t, n in zip(expected_leaves, need) if n]
    expected_grads = torch.autograd.grad((expected * weights).sum(), wanted)

    leaves = [img_store.to(dtype).requires_grad_(need[0]), aud_store.to(dtype).requires_grad_(need[1])]
    with torch_threads(threads):
        got = ours(img_view(leaves[0]), aud_view(leaves[1]))
        got_grads = torch.autograd.grad((got * weights.to(got.dtype)).sum(), [t for t, n in zip(leaves, need) if n])
    rtol = 1e-9 if dtype == torch.float64 else 5e-5
    what = f"{kernel}/{backend} img={img_layout} aud={aud_layout} {reduction} grads={grads} {dtype} threads={threads}"
    assert got.shape == expected.shape, what
    for label, x, y in [("value", got, expected)] + [(f"grad {i}", x, y) for i, (x, y) in enumerate(zip(got_grads, expected_grads))]:
        assert x.shape == y.shape, f"{what}: {label} shape"
        # relative to the gradient's size, or 1 where it cancels to ~0 (an expanded aud makes the rows' loss
        # independent of img): the float32 rounding of a zero gradient is not an error
        scale = y.detach().abs().max().clamp_min(1.0)
        err = ((x.detach().double() - y.detach()).abs().max() / scale).item()
        assert err <= rtol, f"{what}: {label} relative error {err:.3g} > {rtol:g}"


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.sampled_from(KERNELS),
    img_layout=st.sampled_from(IMG_LAYOUTS),
    aud_layout=st.sampled_from(AUD_LAYOUTS),
    reduction=st.sampled_from(("none", "mean", "sum")),
    grads=st.sampled_from(("both", "img", "aud")),
    dtype=st.sampled_from((torch.float32, torch.float64)),
    threads=st.sampled_from((1, 2)),
    shape=st.tuples(st.integers(2, 6), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)),
    seed=st.integers(0, 2**31 - 1),
)
def test_eager_kernels_are_right_for_any_layout(kernel, img_layout, aud_layout, reduction, grads, dtype, threads, shape, seed):
    _check(kernel, "eager", img_layout, aud_layout, reduction, grads, dtype, threads, shape, seed)


def test_reported_transposed_layout_one_thread():
    """The issue's case, every reduction and requires_grad pattern: eq. 1's batched one-thread backward."""
    for reduction in ("none", "mean", "sum"):
        for grads in ("both", "img", "aud"):
            for kernel in ("thresholded", "loss-thresholded"):
                _check(kernel, "eager", "transposed", "contiguous", reduction, grads, torch.float32, 1, (4, 6, 3, 5), 0)


def test_compiled_layouts():
    """The compiled backend on non-dense layouts (compiling costs ~20 s per graph on a loaded CPU: one case,
    the reported transposed img with a strided aud slice; test_fused checks NCHW and channels-last compiled)."""
    _check("loss-thresholded", "compiled", "transposed", "slice", "mean", "both", torch.float32, 1, (4, 5, 3, 4), 3)


# ------------------------------------------------------------ replayed upstream reports (issue 22)
def test_replay_pytorch_64529_expanded_grad_into_custom_backward():
    """pytorch/pytorch#64529: ``.sum()`` hands a custom Function's backward an expanded (stride-0) gradient."""
    img = _img_layout("contiguous", 4, 5, 3, 3, torch.Generator().manual_seed(5))[0]
    aud = _aud_layout("contiguous", 4, 5, torch.Generator().manual_seed(6))[0]
    for ours, ref in ((lambda i, a: MF.thresholded_similarity(i, a, 0.3, 0.1, backend="eager"),
                       lambda i, a: thresholded_ref(i, a, 0.3, 0.1)),
                      (lambda i, a: MF.max_similarity(i, a, backend="eager"), max_ref)):
        for threads in (1, 2):
            leaves = [img.clone().requires_grad_(), aud.clone().requires_grad_()]
            with torch_threads(threads):
                got = torch.autograd.grad(ours(*leaves).sum(), leaves)
            expected = torch.autograd.grad(ref(*leaves).sum(), leaves)
            for x, y in zip(got, expected):
                assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


def test_replay_pytorch_30303_expanded_input_through_einsum():
    """pytorch/pytorch#30303: an expanded input's gradient through einsum/reshape (the response maps use both)."""
    g = torch.Generator().manual_seed(7)
    base = F.normalize(torch.randn(1, 4, dtype=torch.float64, generator=g), dim=1).requires_grad_()
    img = F.normalize(torch.randn(3, 4, 2, 2, dtype=torch.float64, generator=g), dim=1)
    for ours, ref in ((MF.response_map, lambda i, a: (i * a[:, :, None, None]).sum(1)), (MF.pairwise_response_maps, alpha_ref)):
        weights = torch.randn(ref(img, base.expand(3, -1)).shape, dtype=torch.float64, generator=g)
        (got,) = torch.autograd.grad((ours(img, base.expand(3, -1)) * weights).sum(), base)
        (expected,) = torch.autograd.grad((ref(img, base.expand(3, -1).contiguous()) * weights).sum(), base)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
