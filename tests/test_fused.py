"""The fast path: hand-derived backward passes against float64 references (their float64
gradchecks and double backward are in tests/test_functional.py, through the public functions with
``backend="eager"``), the compiled backend (inductor on CPU; CUDA when present) against eager,
recompilation, memory kept for backward, and the compile-unavailable fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from marginnce_loss import LocalizationMarginNCE
from marginnce_loss import _compiled as C
from marginnce_loss import _kernels as K
from marginnce_loss import functional as MF
from marginnce_loss.adapters import ezvsl, lvs, reference

from .conftest import torch_threads
from .oracles import margin_nce_ref, max_ref, normalized_features, thresholded_ref, trained_like_features

LAYOUTS = ("nchw", "channels_last")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _layout(img: torch.Tensor, layout: str) -> torch.Tensor:
    return img.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else img.contiguous()


def _leaves(img, aud, layout="nchw", dtype=None):
    img = _layout(img if dtype is None else img.to(dtype), layout).detach().requires_grad_()
    aud = (aud if dtype is None else aud.to(dtype)).detach().requires_grad_()
    return img, aud


def _weights(shape, seed=0):
    """Fixed random upstream gradient, so every entry of S matters to the check."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _value_and_grads(fn, img, aud, weights=None):
    out = fn(img, aud)
    target = out if out.dim() == 0 else (out * weights.to(out.dtype)).sum()
    gi, ga = torch.autograd.grad(target, (img, aud))
    return out.detach(), gi, ga


def assert_rel(actual, expected, rtol, what=""):
    """max |actual - expected| <= rtol * max |expected| (dtype of ``expected``)."""
    actual = actual.to(expected.dtype)
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def _ref_thr(eps, beta):
    return lambda i, a: thresholded_ref(i, a, eps, beta)


def _ref_max(i, a):
    return max_ref(i, a)


# --------------------------------------------------------------------------- float64 references
CASES = [("random", 6, 32, 5, 5), ("trained", 8, 48, 7, 7), ("random", 5, 16, 14, 14)]


def _features(kind, b, c, h, w, seed):
    if kind == "trained":
        return trained_like_features(b, c, h, w, seed, dtype=torch.float64)
    return normalized_features(b, c, h, w, seed)


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    """The NCHW audio gradient takes a different product with one intra-op thread."""
    with torch_threads(request.param):
        yield request.param


@pytest.mark.parametrize("blocks", ["one block", "block of 2", "block of 1", "nothing kept, block of 2"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}x{c[3]}x{c[4]}")
@pytest.mark.parametrize("kernel", ["thresholded", "thresholded-recompute", "max"])
def test_eager_kernels_match_float64_references(kernel, case, layout, blocks, monkeypatch, threads):
    img64, aud64 = _features(*case, seed=7)
    if blocks.startswith("nothing kept"):  # past the bounds: rows copied and maps recomputed per block
        monkeypatch.setattr(K, "_KEEP_BYTES", 0)
        monkeypatch.setattr(K, "_KEEP_ROWS_BYTES", 0)
    if blocks != "one block":  # CPU eager works a block of images at a time: force several blocks
        per_image = case[3] * case[4] * max(case[1], case[2]) * 4
        monkeypatch.setattr(K, "_BLOCK_BYTES", per_image * int(blocks[-1]))
        assert len(K._blocks(img64, aud64)) == -(-case[1] // int(blocks[-1]))
    b = img64.shape[0]
    if kernel == "max":
        ours, ref = K.maximum, _ref_max
    else:
        ours = lambda i, a: K.thresholded(i, a, 0.65, 0.03, kernel.endswith("recompute"))  # noqa: E731
        ref = _ref_thr(0.65, 0.03)
    weights = _weights((b, b))
    expected = _value_and_grads(ref, *_leaves(img64, aud64), weights)
    got = _value_and_grads(ours, *_leaves(img64, aud64, layout, torch.float32), weights)
    for name, x, y in zip(("S", "grad img", "grad aud"), got, expected):
        assert_rel(x, y, 2e-5, f"{kernel} {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stable_weight_regime_matches_float64(layout):
    """(1 + eps) / beta = 165 > 80: float32 takes the shifted log-space weights, same S and gradient."""
    img64, aud64 = trained_like_features(6, 32, 7, 7, 9, dtype=torch.float64)
    eps, beta = 0.65, 0.01
    assert K.needs_stable_weights(eps, beta, torch.float32) and not K.needs_stable_weights(eps, beta, torch.float64)
    weights = _weights((6, 6), 1)
    expected = _value_and_grads(_ref_thr(eps, beta), *_leaves(img64, aud64), weights)
    got = _value_and_grads(lambda i, a: K.thresholded(i, a, eps, beta), *_leaves(img64, aud64, layout, torch.float32), weights)
    for name, x, y in zip(("S", "grad img", "grad aud"), got, expected):
        assert_rel(x, y, 5e-5, name)


@pytest.mark.parametrize("kernel", ["thresholded", "max"])
def test_eager_kernels_match_dense_autograd_float32(kernel):
    """Same float32 inputs: hand-derived backward vs autograd through the dense formula, 1e-5."""
    img, aud = trained_like_features(12, 64, 7, 7, 3)
    if kernel == "max":
        ours, dense = K.maximum, K.max_dense
    else:
        ours, dense = (lambda i, a: K.thresholded(i, a, 0.65, 0.03)), (lambda i, a: K.thresholded_dense(i, a, 0.65, 0.03))
    weights = _weights((12, 12), 2)
    got = _value_and_grads(ours, *_leaves(img, aud), weights)
    expected = _value_and_grads(dense, *_leaves(img, aud), weights)
    for name, x, y in zip(("S", "grad img", "grad aud"), got, expected):
        assert_rel(x, y, 1e-5, name)
    assert got[1].is_contiguous() and got[1].shape == img.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_thresholded(dtype):
    """Products in the input dtype, element-wise work in float32: S float32, gradients in the input dtype."""
    img64, aud64 = trained_like_features(8, 32, 5, 5, 4, dtype=torch.float64)
    weights = _weights((8, 8), 3)
    got = _value_and_grads(lambda i, a: K.thresholded(i, a, 0.65, 0.03), *_leaves(img64, aud64, dtype=dtype), weights)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == dtype
    # float64 reference on the rounded inputs: only the computation's own rounding is measured
    rounded = _leaves(img64.to(dtype).double(), aud64.to(dtype).double())
    expected = _value_and_grads(_ref_thr(0.65, 0.03), *rounded, weights)
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    for name, x, y in zip(("S", "grad img", "grad aud"), got, expected):
        assert_rel(x, y, tol, f"{dtype} {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_max(dtype):
    """The arg-max of a half-precision map is the half-precision one: compare with autograd in that dtype."""
    img, aud = trained_like_features(8, 32, 5, 5, 4)
    weights = _weights((8, 8), 3)
    got = _value_and_grads(K.maximum, *_leaves(img, aud, dtype=dtype), weights)
    expected = _value_and_grads(K.max_dense, *_leaves(img, aud, dtype=dtype), weights)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == dtype
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    for name, x, y in zip(("grad img", "grad aud"), got[1:], expected[1:]):
        assert_rel(x.double(), y.double(), 1e-2, f"{dtype} {name}")


def test_max_ties_follow_torch_max_index():
    """A map with two equal maxima: the whole gradient goes to the index torch.max returns, as autograd's."""
    img = torch.zeros(2, 2, 1, 2, dtype=torch.float64)
    img[:, 0] = 1.0  # both positions give the same response for every audio
    aud = F.normalize(torch.tensor([[1.0, 0.5], [1.0, -0.5]], dtype=torch.float64), dim=1)
    weights = _weights((2, 2), 4)
    got = _value_and_grads(K.maximum, *_leaves(img, aud), weights)
    expected = _value_and_grads(K.max_dense, *_leaves(img, aud), weights)
    for x, y in zip(got, expected):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# --------------------------------------------------------------------------- what is kept for backward
def _saved_shapes(fn, img, aud):
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(img, aud)
    return shapes


@pytest.mark.parametrize("layout", LAYOUTS)
def test_saved_for_backward(layout, threads):
    b, c, h, w = 6, 8, 4, 5
    img, aud = _leaves(*normalized_features(b, c, h, w, seed=1, dtype=torch.float32), layout=layout)
    big = b * b * h * w

    def sizes(fn):
        return sorted(torch.Size(s).numel() for s in _saved_shapes(fn, img, aud))

    inputs, pairs = [b * c * h * w, b * c], [b * b]
    rows = [b * c * h * w] if layout == "nchw" else []  # the [B*HW, C] copy of an NCHW img (a view otherwise)
    eq1_rows = [] if threads == 1 else rows  # one thread: eq. 1 runs batched products on NCHW img, no copy
    assert big not in inputs
    assert sizes(lambda i, a: K.thresholded(i, a, 0.65, 0.03)) == sorted(inputs + 2 * pairs + [big] + eq1_rows)  # + alpha
    assert sizes(lambda i, a: K.thresholded(i, a, 0.65, 0.03, True)) == sorted(inputs + 2 * pairs)  # S, Z only
    assert sizes(K.maximum) == sorted(inputs + pairs + rows)  # the arg-max indices (and the rows copy)
    assert sizes(lambda i, a: K.thresholded_dense(i, a, 0.65, 0.03)).count(big) >= 2  # autograd keeps more


@pytest.mark.parametrize("layout", LAYOUTS)
def test_past_keep_bytes_nothing_batch_sized_is_saved(layout, monkeypatch, threads):
    """The maps are kept up to _KEEP_BYTES, the rows copy of NCHW img up to _KEEP_ROWS_BYTES, to the byte;
    past both nothing of batch size but the inputs is saved (default recompute=False)."""
    b, c, h, w = 6, 8, 4, 5
    img, aud = _leaves(*normalized_features(b, c, h, w, seed=1, dtype=torch.float32), layout=layout)
    big, img_size = b * b * h * w, b * c * h * w
    eq1 = lambda i, a: K.thresholded(i, a, 0.65, 0.03)  # noqa: E731

    def saved(fn):
        return [torch.Size(s).numel() for s in _saved_shapes(fn, img, aud)]

    monkeypatch.setattr(K, "_KEEP_BYTES", big * 4)  # exactly fits: kept
    assert big in saved(eq1)
    monkeypatch.setattr(K, "_KEEP_BYTES", big * 4 - 1)  # one byte short: recomputed
    assert big not in saved(eq1)
    monkeypatch.setattr(K, "_KEEP_BYTES", 1 << 40)
    copies = layout == "nchw"  # channels-last rows are a view: never a copy to keep
    monkeypatch.setattr(K, "_KEEP_ROWS_BYTES", img_size * 4)
    assert saved(K.maximum).count(img_size) == 1 + copies
    assert saved(eq1).count(img_size) == 1 + (copies and threads > 1)  # one thread: eq. 1 makes no copy
    monkeypatch.setattr(K, "_KEEP_ROWS_BYTES", img_size * 4 - 1)
    assert saved(K.maximum).count(img_size) == 1
    if copies and threads > 1:
        assert big not in saved(eq1)  # the maps come with the product over the whole rows: not kept either
    monkeypatch.setattr(K, "_KEEP_BYTES", 0)
    monkeypatch.setattr(K, "_KEEP_ROWS_BYTES", 0)
    monkeypatch.setattr(K, "_BLOCK_BYTES", h * w * c * 4 * 2)  # blocks of 2 images
    for fn in (eq1, K.maximum):
        sizes = saved(fn)
        assert sorted(sizes)[-2:] == [b * c, img_size] and sum(sizes) <= img_size + b * c + 2 * b * b, sizes


# --------------------------------------------------------------------------- public API
def test_backend_argument_is_validated():
    img, aud = normalized_features(3, 4, 2, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend"):
        MF.thresholded_similarity(img, aud, backend="fast")
    with pytest.raises(ValueError, match="backend"):
        MF.max_similarity(img, aud, backend=None)
    with pytest.raises(ValueError, match="backend"):
        LocalizationMarginNCE(backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        ezvsl.max_xmil_loss(img, aud, backend="Eager")
    with pytest.raises(ValueError, match="backend"):
        lvs.lvs_logits(img, aud, backend="")
    with pytest.raises(ValueError, match="backend"):
        reference.loss(img, aud, backend="jit")
    with pytest.raises(TypeError, match="recompute"):
        MF.thresholded_similarity(img, aud, recompute=1)


def test_auto_backend_is_compiled_on_cuda_only():
    assert C.resolve_backend("auto", torch.device("cpu")) == "eager"
    assert C.resolve_backend("auto", torch.device("cuda", 0)) == "compiled"
    # max-MIL: compiled gradients on CUDA unverified (all zero on the one GPU check), so auto stays eager
    for name in C.KERNELS:
        expected = "eager" if name in C.CUDA_UNVERIFIED else "compiled"
        assert C.resolve_backend("auto", torch.device("cuda", 0), name) == expected, name
        assert C.resolve_backend("auto", torch.device("cpu"), name) == "eager", name
        assert C.resolve_backend("compiled", torch.device("cuda", 0), name) == "compiled", name
    assert C.CUDA_UNVERIFIED == {"max", "max_loss", "max_xmil"}
    assert C.resolve_backend("eager", torch.device("cuda", 0)) == "eager"
    assert C.resolve_backend("compiled", torch.device("cpu")) == "compiled"


def test_module_and_adapters_match_references_with_eager_backend():
    img64, aud64 = normalized_features(8, 32, 7, 7, 6)  # losses of order log B: no cancellation
    img, aud = img64.float(), aud64.float()
    loss = LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07, backend="eager")(img, aud)
    expected = margin_nce_ref(thresholded_ref(img64, aud64), -0.2, 0.07).mean()
    assert_rel(loss, expected, 1e-5, "reference model loss")
    loss = LocalizationMarginNCE("max", margin=-0.2, tau=0.03, symmetric=True, backend="eager")(img, aud)
    expected = margin_nce_ref(max_ref(img64, aud64), -0.2, 0.03, symmetric=True).mean()
    assert_rel(loss, expected, 1e-5, "EZ-VSL loss")
    value, _ = reference.loss(img, aud, backend="eager")
    assert_rel(value, margin_nce_ref(thresholded_ref(img64, aud64), -0.2, 0.07).mean(), 1e-5, "adapter")
    with pytest.raises(ValueError, match="B >= 2"):
        LocalizationMarginNCE(backend="eager")(img[:1], aud[:1])


# --------------------------------------------------------------------------- compile fallback
def _plain(x, y):
    return x * 2 + y


def test_fallback_warns_once_when_the_compiler_cannot_be_built():
    def broken(fn):
        raise RuntimeError("no C++ compiler found")

    kernel = C.CompiledKernel(_plain, "test kernel", compiler=broken)
    x, y = torch.arange(3.0), torch.ones(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1, out2 = kernel(x, y), kernel(x, y)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        "marginnce_loss: backend='compiled' is unavailable for test kernel (RuntimeError: no C++ compiler found); "
        "running the eager kernels instead"
    ]
    torch.testing.assert_close(out1, _plain(x, y))
    torch.testing.assert_close(out2, _plain(x, y))
    assert isinstance(kernel.failure, RuntimeError)


def test_fallback_when_the_compiled_call_fails_and_caller_errors_propagate():
    calls = []

    def failing_at_run(fn):
        def run(*args):
            calls.append(args)
            raise OSError("linker failed")

        return run

    kernel = C.CompiledKernel(_plain, "k2", compiler=failing_at_run)
    with pytest.warns(RuntimeWarning, match="k2.*OSError: linker failed"):
        torch.testing.assert_close(kernel(torch.ones(2), torch.ones(2)), torch.full((2,), 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        kernel(torch.ones(2), torch.ones(2))
    assert len(calls) == 1  # disabled after the first failure

    kernel = C.CompiledKernel(_plain, "k3", compiler=failing_at_run)
    with pytest.raises(RuntimeError, match="size"):  # eager fails too: the caller's error, nothing disabled
        kernel(torch.ones(2), torch.ones(3))
    assert kernel.failure is None


def test_dynamic_shapes_three_batch_sizes_compile_at_most_twice():
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def loss(img, aud):
        return K.max_loss(img, aud, -0.2, 0.03, True, "mean")

    kernel = C.CompiledKernel(loss, "count", compiler=lambda fn: C.compile_dynamic(fn, backend=counting_backend))
    for b in (3, 5, 9):
        img, aud = _leaves(*normalized_features(b, 8, 3, 3, seed=b, dtype=torch.float32))
        kernel(img, aud).backward()
        assert img.grad is not None
    assert kernel.failure is None
    assert 1 <= len(graphs) <= 2


# --------------------------------------------------------------------------- compiled (inductor) parity
def _compiled_vs_eager(make, img, aud, weights, rtol=1e-5):
    got = _value_and_grads(make("compiled"), *_leaves(img, aud), weights)
    expected = _value_and_grads(make("eager"), *_leaves(img, aud), weights)
    for name, x, y in zip(("value", "grad img", "grad aud"), got, expected):
        assert_rel(x, y, rtol, name)
    return got


COMPILED = {
    "thresholded_similarity": lambda be: (lambda i, a: MF.thresholded_similarity(i, a, 0.65, 0.03, backend=be)),
    "max_similarity": lambda be: (lambda i, a: MF.max_similarity(i, a, backend=be)),
    "reference loss": lambda be: LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07, backend=be),
    "EZ-VSL loss": lambda be: LocalizationMarginNCE("max", margin=-0.2, tau=0.03, symmetric=True, backend=be),
}


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_matches_eager_on_cpu(name):
    """Inductor's C++ backend: forward and gradients within 1e-5 of eager; new batch sizes reuse the graph."""
    from torch._dynamo.utils import counters

    # losses on random features (of order log B; a trained-like loss is ~1e-3, all cancellation)
    features = normalized_features if name.endswith("loss") else trained_like_features
    breaks = sum(counters["graph_break"].values())
    for b, seed in ((6, 1), (10, 2), (7, 3)):
        img, aud = features(b, 32, 7, 7, seed, dtype=torch.float32)
        before = counters["stats"]["unique_graphs"]
        _compiled_vs_eager(COMPILED[name], img, aud, _weights((b, b), seed))
        if b != 6:
            assert counters["stats"]["unique_graphs"] == before, "a new batch size recompiled"
    assert sum(counters["graph_break"].values()) == breaks, dict(counters["graph_break"])  # one graph each
    assert C.KERNELS[{"thresholded_similarity": "thresholded", "max_similarity": "max", "reference loss": "thresholded_loss",
                      "EZ-VSL loss": "max_loss"}[name]].failure is None


def test_compiled_recompute_keeps_no_response_maps():
    b, c, h, w = 6, 16, 4, 4
    img, aud = trained_like_features(b, c, h, w, 5)
    weights = _weights((b, b), 5)
    got = _value_and_grads(lambda i, a: MF.thresholded_similarity(i, a, backend="compiled", recompute=True), *_leaves(img, aud), weights)
    expected = _value_and_grads(lambda i, a: MF.thresholded_similarity(i, a, backend="eager"), *_leaves(img, aud), weights)
    for x, y in zip(got, expected):
        assert_rel(x, y, 1e-5)
    shapes = _saved_shapes(lambda i, a: MF.thresholded_similarity(i, a, backend="compiled", recompute=True), *_leaves(img, aud))
    # the inputs and scalars only: nothing of size B x B' x H x W
    assert all(s in ((b, c, h, w), (b, c)) or torch.Size(s).numel() <= b * b for s in shapes), shapes


# --------------------------------------------------------------------------- CUDA
@CUDA
@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_matches_eager_on_cuda(name):
    features = normalized_features if name.endswith("loss") else trained_like_features
    img, aud = features(16, 64, 7, 7, 8, dtype=torch.float32)
    weights = _weights((16, 16), 8)
    got = _compiled_vs_eager(COMPILED[name], img.cuda(), aud.cuda(), weights.cuda())
    assert got[1].device.type == "cuda"


@CUDA
@pytest.mark.parametrize("kernel", ["thresholded", "max"])
def test_cuda_eager_kernels_match_float64_reference(kernel):
    img64, aud64 = trained_like_features(16, 64, 7, 7, 9, dtype=torch.float64)
    ours = K.maximum if kernel == "max" else (lambda i, a: K.thresholded(i, a, 0.65, 0.03))
    ref = _ref_max if kernel == "max" else _ref_thr(0.65, 0.03)
    weights = _weights((16, 16), 9)
    expected = _value_and_grads(ref, *_leaves(img64, aud64), weights)
    got = _value_and_grads(ours, *_leaves(img64.cuda(), aud64.cuda(), dtype=torch.float32), weights.cuda())
    for x, y in zip(got, expected):
        assert_rel(x.cpu(), y, 2e-5)  # float32 products (PyTorch's default: TF32 off for matmul)


def test_one_thread_eq1_products_follow_the_measured_rule():
    """One thread, NCHW: batched products (no rows copy saved) while B' < 4 HW, the rows product from there."""
    with torch_threads(1):
        for b, h, w, copy in ((7, 2, 1, False), (8, 2, 1, True)):
            img64, aud64 = normalized_features(b, 5, h, w, seed=2)  # C = 5: no size coincides with B^2
            img, aud = _leaves(img64, aud64, dtype=torch.float32)
            sizes = [torch.Size(s).numel() for s in _saved_shapes(lambda i, a: K.thresholded(i, a, 0.65, 0.03), img, aud)]
            assert sizes.count(img.numel()) == 1 + copy, (b, sizes)
            weights = _weights((b, b))
            expected = _value_and_grads(_ref_thr(0.65, 0.03), *_leaves(img64, aud64), weights)
            got = _value_and_grads(lambda i, a: K.thresholded(i, a, 0.65, 0.03), img, aud, weights)
            for x, y in zip(got, expected):
                assert_rel(x, y, 2e-5)


def test_explicit_compiled_max_on_cuda_warns_once():
    """The warning an explicit ``backend="compiled"`` max-MIL kernel gives on CUDA: once per kernel."""
    kernel = C.CompiledKernel(lambda x: x, "probe")
    with pytest.warns(RuntimeWarning, match="unverified"):
        kernel.warn_unverified_on_cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel.warn_unverified_on_cuda()  # second time: silent

