r"""Unvalidated tensor kernels shared by the eager and the compiled backends.

Every formula of SPEC sections 1-3 that the package computes lives here once:
:func:`pairwise` (the response maps), :func:`sigmoid_weighted_mean` (eq. 1 and the LVS background
kernel, as plain differentiable ops), :func:`margin_nce_core` (eq. 3), and the two custom
``torch.autograd.Function`` s of the fast path, whose backward passes are derived by hand:

- :class:`MaxSimilarity` (EZ-VSL's max-MIL similarity) keeps only the ``[B, B']`` arg-max indices
  and sends each ``g_ij`` to one position: ``O(B^2 C)`` work instead of the two dense
  ``B x B' x HW x C`` products autograd does through a dense ``[B, B', H, W]`` one-hot gradient.
- :class:`ThresholdedSimilarity` (eq. 1) stores no element-wise ``[B, B', HW]`` intermediate:
  the backward forms ``dS/dalpha`` in one element-wise pass from ``alpha`` (saved, or recomputed
  with ``recompute=True``) and ``S``, ``Z`` (``[B, B']``), then runs the two gradient products.

The public, validated entry points are in :mod:`marginnce_loss.functional`; nothing here checks
its arguments.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as nnf
from torch.utils.checkpoint import checkpoint

from ._validation import opmath_dtype

# float32 sigmoid leaves the normal range below about -87 (float64: -708); past a margin from that we switch
# the soft-threshold weights to a shifted log-space form that cannot underflow.
_STABLE_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}


# --------------------------------------------------------------------------- response maps
def _is_channels_last(img: Tensor) -> bool:
    """True when ``img`` [B, C, H, W] is laid out as [B, H, W, C] (and not also NCHW-contiguous)."""
    return (not img.is_contiguous()) and img.is_contiguous(memory_format=torch.channels_last)


def pairwise(img: Tensor, aud: Tensor) -> Tensor:
    r"""All response maps, ``out[i, j] = alpha_ij = <V_i[:, h, w], A_j>``: ``[B, B', H, W]``, input dtype.

    One matrix product, laid out so that no copy of ``img`` is made: an NCHW ``img`` gives a
    batched product ``A @ V_i`` (``[B, B', HW]`` contiguous); a channels-last ``img`` gives a single
    ``[B*HW, C] @ [C, B']`` product (``[B, H, W, B']`` in memory, returned as a permuted view).
    """
    b, c, h, w = img.shape
    if _is_channels_last(img):
        x_rows = img.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view
        return torch.mm(x_rows, aud.t()).view(b, h, w, aud.shape[0]).permute(0, 3, 1, 2)
    # explicit bmm: torch.matmul folds this into one mm through a copy of img when img requires grad
    return torch.bmm(aud.expand(b, -1, -1), img.reshape(b, c, h * w)).view(b, aud.shape[0], h, w)


def pairwise_backward(
    grad: Tensor, img: Tensor, aud: Tensor, need_img: bool = True, need_aud: bool = True
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    r"""The two gradient products of :func:`pairwise` for ``grad = dL/dalpha`` ``[B, B', HW]``.

    .. math::
        \frac{\partial L}{\partial V_i[:, p]} = \sum_j G_{ij}[p]\,A_j, \qquad
        \frac{\partial L}{\partial A_j} = \sum_{i, p} G_{ij}[p]\,V_i[:, p]

    Laid out like the forward (no copy of ``img``): NCHW uses a batched product and a
    batch-reduced product (``addbmm``); channels-last uses two plain matrix products and returns a
    channels-last ``img`` gradient.
    """
    b, c, h, w = img.shape
    bp = aud.shape[0]
    grad_img = grad_aud = None
    if _is_channels_last(img):
        g_rows = grad.permute(0, 2, 1).reshape(b * h * w, bp)  # a view of the forward's layout
        if need_img:
            grad_img = torch.mm(g_rows, aud).view(b, h, w, c).permute(0, 3, 1, 2)
        if need_aud:
            grad_aud = torch.mm(g_rows.t(), img.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return grad_img, grad_aud
    g = grad.reshape(b, bp, h * w)
    x = img.reshape(b, c, h * w)
    if need_img:
        grad_img = torch.bmm(aud.t().expand(b, -1, -1), g).view(b, c, h, w)
    if need_aud:
        grad_aud = torch.addbmm(aud.new_zeros(bp, c), g, x.transpose(1, 2), beta=0)
    return grad_img, grad_aud


# --------------------------------------------------------------------------- eq. 1 kernel
def needs_stable_weights(epsilon: float, beta: float, dtype: torch.dtype) -> bool:
    """Whether the soft-threshold weights of cosine responses could underflow (see ``_STABLE_LIMIT``)."""
    return (1.0 + abs(epsilon)) / beta > _STABLE_LIMIT[opmath_dtype(dtype)]


def _soft_weights(a: Tensor, epsilon: float, beta: float, sign: float, stable: bool) -> Tensor:
    r"""``w = sigma(sign * (a - epsilon) / beta)`` over the last dimension, up to a per-row factor.

    With ``stable`` the weights are ``exp(logsigmoid(z) - max logsigmoid(z))`` (the max detached):
    the same ratios, and the largest weight is 1, so ``sum w`` cannot underflow to 0.
    """
    z = torch.sub(a, epsilon).mul_(sign / beta)
    if stable:
        logw = nnf.logsigmoid(z)
        return torch.exp(logw - logw.amax(dim=-1, keepdim=True).detach())
    return z.sigmoid_()


def sigmoid_weighted_mean(alpha: Tensor, epsilon: float, beta: float, sign: float = 1.0) -> Tensor:
    r"""Soft-thresholded spatial mean over the last two dimensions (the kernel of eq. 1), plain autograd.

    .. math::
        w = \sigma\!\left(s\,\frac{\alpha - \epsilon}{\beta}\right), \qquad
        \bar\alpha = \frac{\sum_{hw} w\,\alpha}{\sum_{hw} w}

    ``sign = +1`` weights the foreground (eq. 1); ``sign = -1`` gives the LVS background weights
    ``1 - sigma((alpha - epsilon) / beta)``. Runs in float32 (float64 stays float64); see
    :func:`_soft_weights` for the underflow-safe form used when ``(1 + |epsilon|) / beta`` is large.
    Returns ``[...]`` for ``alpha`` of shape ``[..., H, W]``.
    """
    a = alpha.to(opmath_dtype(alpha.dtype)).flatten(-2)
    w = _soft_weights(a, epsilon, beta, sign, needs_stable_weights(epsilon, beta, a.dtype))
    return (w * a).sum(-1) / w.sum(-1)


def thresholded_dense(img: Tensor, aud: Tensor, epsilon: float, beta: float) -> Tensor:
    """Eq. 1 as plain differentiable ops (autograd keeps its ``[B, B', HW]`` intermediates)."""
    return sigmoid_weighted_mean(pairwise(img, aud), epsilon, beta)


def _eq1_grad_alpha(a: Tensor, sim: Tensor, z_sum: Tensor, grad: Tensor, epsilon: float, beta: float, stable: bool) -> Tensor:
    r"""``dL/dalpha`` of eq. 1 from ``alpha`` and the saved ``S``, ``Z = sum w`` (all in float32/64).

    With ``w_k = sigma((a_k - epsilon) / beta)``, ``S = sum_k w_k a_k / Z``:

    .. math::
        \frac{\partial S}{\partial a_k} = \frac{w_k + (a_k - S)\, w_k (1 - w_k) / \beta}{Z}

    In the stable form ``w`` carries a constant per-row factor that cancels in ``S`` and is the same
    in ``Z``, so the formula holds with ``1 - w_k = sigma(-z_k)``.
    """
    w = _soft_weights(a, epsilon, beta, 1.0, stable)
    if stable:
        slope = torch.sigmoid((epsilon - a) / beta).mul_(w)
    else:
        slope = torch.addcmul(w, w, w, value=-1.0)  # w (1 - w)
    # in place where possible: this is the one element-wise pass over [B, B', HW] of the backward
    out = torch.sub(a, sim.unsqueeze(-1)).mul_(slope)
    del slope
    return out.mul_(1.0 / beta).add_(w).mul_((grad / z_sum).unsqueeze(-1))


class ThresholdedSimilarity(torch.autograd.Function):
    r"""Eq. 1 with a hand-derived backward that keeps no element-wise ``[B, B', HW]`` intermediate.

    ``apply(img [B, C, H, W], aud [B', C], epsilon, beta, recompute) -> S [B, B']`` (float32/64).
    Saved for backward: ``img``, ``aud``, ``S``, ``Z`` and, unless ``recompute``, the response maps
    ``alpha`` (input dtype). The backward forms ``G = g * dS/dalpha`` (see :func:`_eq1_grad_alpha`)
    in one pass and runs the two products of :func:`pairwise_backward`: three matrix products per
    step in all, four with ``recompute=True`` (which keeps nothing of size ``B x B' x HW`` between
    forward and backward). Under ``create_graph=True`` the backward differentiates the dense formula
    instead, so higher-order gradients are exact.
    """

    @staticmethod
    def forward(ctx, img: Tensor, aud: Tensor, epsilon: float, beta: float, recompute: bool) -> Tensor:  # type: ignore[override]
        alpha = pairwise(img, aud)
        a = alpha.to(opmath_dtype(alpha.dtype)).flatten(-2)
        stable = needs_stable_weights(epsilon, beta, a.dtype)
        w = _soft_weights(a, epsilon, beta, 1.0, stable)
        z_sum = w.sum(-1)
        sim = (w * a).sum(-1) / z_sum
        ctx.save_for_backward(img, aud, sim, z_sum, None if recompute else alpha)
        ctx.epsilon, ctx.beta, ctx.stable = epsilon, beta, stable
        return sim

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        img, aud, sim, z_sum, alpha = ctx.saved_tensors
        need_img, need_aud = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the dense formula
            with torch.enable_grad():
                dense = thresholded_dense(img, aud, ctx.epsilon, ctx.beta)
                inputs = [t for t, n in ((img, need_img), (aud, need_aud)) if n]
                grads = list(torch.autograd.grad(dense, inputs, grad, create_graph=True))
            return (grads.pop(0) if need_img else None), (grads.pop(0) if need_aud else None), None, None, None
        if alpha is None:
            alpha = pairwise(img, aud)
        a = alpha.to(opmath_dtype(alpha.dtype)).flatten(-2)
        g_alpha = _eq1_grad_alpha(a, sim, z_sum, grad, ctx.epsilon, ctx.beta, ctx.stable).to(img.dtype)
        grad_img, grad_aud = pairwise_backward(g_alpha, img, aud, need_img, need_aud)
        return grad_img, grad_aud, None, None, None


def thresholded(img: Tensor, aud: Tensor, epsilon: float, beta: float, recompute: bool = False) -> Tensor:
    """Eq. 1 through :class:`ThresholdedSimilarity` (``[B, B']``, float32/64)."""
    if recompute and torch.compiler.is_compiling():
        # Traced by torch.compile, the backward's recomputed product would be merged with the
        # forward's and saved; an activation-checkpointed region is recomputed in backward instead.
        return checkpoint(ThresholdedSimilarity.apply, img, aud, epsilon, beta, False, use_reentrant=False)
    return ThresholdedSimilarity.apply(img, aud, epsilon, beta, recompute)


# --------------------------------------------------------------------------- max-MIL kernel
def max_dense(img: Tensor, aud: Tensor) -> Tensor:
    """Max-MIL similarity as plain differentiable ops (autograd's backward is a dense one-hot product)."""
    alpha = pairwise(img, aud)
    return alpha.flatten(-2).max(dim=-1).values.to(opmath_dtype(alpha.dtype))


def _max_backward_sparse(
    grad: Tensor, index: Tensor, img: Tensor, aud: Tensor, need_img: bool, need_aud: bool
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    r"""Scatter each ``g_ij`` to the arg-max ``p_ij`` only, ``O(B B' C)``.

    .. math::
        \frac{\partial L}{\partial V_i[:, p]} = \sum_{j:\,p_{ij} = p} g_{ij} A_j, \qquad
        \frac{\partial L}{\partial A_j} = \sum_i g_{ij}\, V_i[:, p_{ij}]

    Both sums are weighted bag sums of rows (``embedding_bag``): the audio gradient gathers rows
    ``(i, p_ij)`` of ``img`` seen as a ``[B*HW, C]`` table (a view for channels-last ``img``, one
    copy otherwise); the image gradient sums audio rows into the ``B*HW`` bags ``(i, p)``, sorted by
    bag, giving ``[B, H, W, C]`` in memory, transposed back for an NCHW ``img``.
    """
    b, c, h, w = img.shape
    hw = h * w
    bp = aud.shape[0]
    g = grad.to(img.dtype)
    rows = index + torch.arange(b, device=index.device).unsqueeze(1) * hw  # [B, B'] row (i, p_ij)
    grad_img = grad_aud = None
    if need_aud:
        table = img.permute(0, 2, 3, 1).reshape(b * hw, c)
        grad_aud = nnf.embedding_bag(rows.t().contiguous(), table, per_sample_weights=g.t().contiguous(), mode="sum")
    if need_img:
        keys = rows.reshape(-1)
        keys_sorted, order = torch.sort(keys, stable=True)
        audio_index = torch.remainder(order, bp)  # entry k = i * B' + j of the flattened [B, B']
        offsets = torch.searchsorted(keys_sorted, torch.arange(b * hw, device=keys.device, dtype=keys.dtype))
        grad_rows = nnf.embedding_bag(
            audio_index, aud, offsets, per_sample_weights=g.reshape(-1)[order], mode="sum"
        )
        grad_img = grad_rows.view(b, h, w, c).permute(0, 3, 1, 2)
        if not _is_channels_last(img):
            grad_img = grad_img.contiguous()  # the input's layout (one transpose)
    return grad_img, grad_aud


class MaxSimilarity(torch.autograd.Function):
    r"""Max-MIL similarity ``S_ij = max_hw alpha_ij`` with a sparse arg-max backward.

    ``apply(img [B, C, H, W], aud [B', C], alpha=None) -> S [B, B']`` (float32/64). ``alpha``, when
    given, must be ``pairwise(img, aud)`` already computed (detached) by the caller; it is not kept.
    Saved for backward: ``img``, ``aud`` and the ``[B, B']`` arg-max indices; the backward is
    :func:`_max_backward_sparse` (no ``[B, B', HW]`` tensor at all). Ties go to the index
    ``torch.max`` returns, as in autograd. Under ``create_graph=True`` the backward differentiates
    the dense formula instead, so higher-order gradients are exact.
    """

    @staticmethod
    def forward(ctx, img: Tensor, aud: Tensor, alpha: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if alpha is None:
            alpha = pairwise(img, aud)
        values, index = alpha.flatten(-2).max(dim=-1)
        ctx.save_for_backward(img, aud, index)
        return values.to(opmath_dtype(values.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        img, aud, index = ctx.saved_tensors
        need_img, need_aud = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the dense formula
            with torch.enable_grad():
                alpha = pairwise(img, aud).flatten(-2)
                dense = alpha.gather(-1, index.unsqueeze(-1)).squeeze(-1).to(grad.dtype)
                inputs = [t for t, n in ((img, need_img), (aud, need_aud)) if n]
                grads = list(torch.autograd.grad(dense, inputs, grad, create_graph=True))
            return (grads.pop(0) if need_img else None), (grads.pop(0) if need_aud else None), None
        grad_img, grad_aud = _max_backward_sparse(grad, index, img, aud, need_img, need_aud)
        return grad_img, grad_aud, None


def maximum(img: Tensor, aud: Tensor, alpha: Optional[Tensor] = None) -> Tensor:
    """Max-MIL similarity through :class:`MaxSimilarity` (``[B, B']``, float32/64)."""
    return MaxSimilarity.apply(img, aud, alpha)


# --------------------------------------------------------------------------- eq. 3
def margin_nce_core(
    sim: Tensor,
    margin: float,
    tau: float,
    symmetric: bool = False,
    extra_negatives: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""marginNCE (paper eq. 3) without argument checks; see :func:`marginnce_loss.functional.margin_nce`.

    .. math:: \ell_i = -\log\operatorname{softmax}_j\!\left(\frac{S_{ij} - m\,\delta_{ij}}{\tau}\right)_{j=i}
    """
    dtype = opmath_dtype(sim.dtype)
    if extra_negatives is not None:
        dtype = torch.promote_types(dtype, opmath_dtype(extra_negatives.dtype))
    logits = sim.to(dtype) / tau
    b = logits.shape[0]
    # (S_ii - m) / tau on the diagonal, S_ij / tau elsewhere (the constant in the logits' dtype)
    logits = logits - torch.eye(b, dtype=dtype, device=logits.device) * (margin / tau)

    # -log_softmax picked at the positive: the same operations as F.cross_entropy(logits, arange(B)),
    # so margin 0 reproduces the upstream loss sites to the last bits.
    if extra_negatives is None:
        row_logits = logits
    else:
        row_logits = torch.cat([logits, extra_negatives.to(dtype) / tau], dim=1)
    rows = -torch.log_softmax(row_logits, dim=1).diagonal()
    cols = -torch.log_softmax(logits, dim=0).diagonal() if symmetric else None

    if reduction == "mean":
        return rows.mean() if cols is None else rows.mean() + cols.mean()
    if reduction == "sum":
        return rows.sum() if cols is None else rows.sum() + cols.sum()
    return rows if cols is None else rows + cols


# --------------------------------------------------------------------------- fused losses
def thresholded_loss(
    img: Tensor,
    aud: Tensor,
    epsilon: float,
    beta: float,
    recompute: bool,
    margin: float,
    tau: float,
    symmetric: bool,
    reduction: str,
) -> Tensor:
    """``margin_nce_core(thresholded(img, aud, epsilon, beta, recompute), margin, tau, symmetric, None, reduction)``."""
    return margin_nce_core(thresholded(img, aud, epsilon, beta, recompute), margin, tau, symmetric, None, reduction)


def max_loss(img: Tensor, aud: Tensor, margin: float, tau: float, symmetric: bool, reduction: str) -> Tensor:
    """``margin_nce_core(maximum(img, aud), margin, tau, symmetric, None, reduction)``."""
    return margin_nce_core(maximum(img, aud), margin, tau, symmetric, None, reduction)


def max_xmil(img: Tensor, aud: Tensor, tau: float, margin: float) -> Tuple[Tensor, Tensor]:
    """EZ-VSL's ``(loss, Slogits)``: one product for both, the loss through the sparse backward."""
    alpha = pairwise(img, aud)
    sim = maximum(img, aud, alpha.detach())
    return margin_nce_core(sim, margin, tau, True, None, "mean"), alpha / tau
