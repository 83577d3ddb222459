r"""Unvalidated tensor kernels shared by the eager and the compiled backends.

Every formula of paper sections 2.1-2.2 (and EZ-VSL's max-MIL, LVS's background) lives here once:
:func:`pairwise` (the response maps), :func:`sigmoid_weighted_mean` (eq. 1 and the LVS background
kernel, as plain differentiable ops), :func:`margin_nce_core` (eq. 3), and the two custom
``torch.autograd.Function`` s of the fast path, whose backward passes are derived by hand:

- :class:`MaxSimilarity` (EZ-VSL's max-MIL similarity) keeps only the ``[B, B']`` arg-max indices
  and sends each ``g_ij`` to one position: ``O(B^2 C)`` work instead of the two dense
  ``B x B' x HW x C`` products autograd does through a dense ``[B, B', H, W]`` one-hot gradient.
- :class:`ThresholdedSimilarity` (eq. 1) stores no element-wise ``[B, B', HW]`` intermediate:
  the backward forms ``dS/dalpha`` in one element-wise pass from ``alpha`` (kept from the forward
  while it fits ``_KEEP_BYTES``, recomputed a block at a time otherwise or with ``recompute=True``)
  and ``S``, ``Z`` (``[B, B']``), then runs the two gradient products.

Layout: every response-map product is one plain matrix product of the rows ``X = [B*HW, C]`` of
``img`` (a view of a channels-last ``img``, a copy of an NCHW one, as ``einsum`` makes) with
``A^T``, the maps laid out ``[B, HW, B']``; one large product beats ``B`` small batched ones
(``A @ V_i``), and the copy costs less than the difference. The ``img`` gradient is formed as rows
too and written in ``img``'s layout. On CPU the element-wise steps and, past ``_KEEP_BYTES``, the
products themselves run a block of images at a time (see ``_BLOCK_BYTES``): temporaries stay
bounded, and the response maps of a large batch never exist whole.

The public, validated entry points are in :mod:`marginnce_loss.functional`; nothing here checks
its arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as nnf
from torch.utils.checkpoint import checkpoint

from ._numeric import needs_stable_weights, opmath_dtype


# --------------------------------------------------------------------------- response maps
def _is_channels_last(img: Tensor) -> bool:
    """True when ``img`` [B, C, H, W] is laid out as [B, H, W, C] (and not also NCHW-contiguous)."""
    return (not img.is_contiguous()) and img.is_contiguous(memory_format=torch.channels_last)


def _rows(img: Tensor) -> Tensor:
    """``img`` as ``[B*HW, C]`` rows (a view for channels-last ``img``, a copy otherwise)."""
    b, c, h, w = img.shape
    return img.permute(0, 2, 3, 1).reshape(b * h * w, c)


def _alpha_block(img: Tensor, aud: Tensor, i0: int, i1: int) -> Tensor:
    """Response maps of images ``i0:i1`` with every audio, ``[i1 - i0, B', HW]`` in the input dtype.

    No copy of ``img``: NCHW gives a batched product ``A @ V_i`` (contiguous result); channels-last
    gives one ``[k*HW, C] @ [C, B']`` product (``[k, HW, B']`` in memory, returned transposed).
    """
    b, c, h, w = img.shape
    hw, bp = h * w, aud.shape[0]
    if _is_channels_last(img):
        return torch.mm(_rows(img)[i0 * hw : i1 * hw], aud.t()).view(i1 - i0, hw, bp).transpose(1, 2)
    # explicit bmm: torch.matmul folds this into one mm through a copy of img when img requires grad
    return torch.bmm(aud.expand(i1 - i0, -1, -1), img.reshape(b, c, hw)[i0:i1])


def pairwise(img: Tensor, aud: Tensor) -> Tensor:
    r"""All response maps, ``out[i, j] = alpha_ij = <V_i[:, h, w], A_j>``: ``[B, B', H, W]``, input dtype.

    One matrix product, laid out so that no copy of ``img`` is made (see :func:`_alpha_block`):
    ``[B, B', HW]`` contiguous for NCHW ``img``, a permuted view of ``[B, HW, B']`` for channels-last.
    """
    b, _, h, w = img.shape
    return _alpha_block(img, aud, 0, b).unflatten(-1, (h, w))


def _rows_block(img: Tensor, i0: int, i1: int) -> Tensor:
    """Rows ``(i, p)`` of images ``i0:i1`` as ``[k*HW, C]``: a view of channels-last ``img``, a copy of NCHW."""
    return _rows(img[i0:i1])


def _alpha_rows(x: Tensor, aud: Tensor, k: int) -> Tensor:
    """Response maps of a block from its rows ``x`` ``[k*HW, C]``: one product, ``[k, HW, B']`` (input dtype)."""
    return torch.mm(x, aud.t()).view(k, -1, aud.shape[0])


def _empty_grad(img: Tensor) -> Tensor:
    """An uninitialised gradient for ``img``: channels-last when ``img`` is, NCHW-contiguous otherwise.

    Not ``empty_like``: a permuted ``img``'s strides (``x.transpose(2, 3)``) break the backward's ``view`` s.
    """
    fmt = torch.channels_last if _is_channels_last(img) else torch.contiguous_format
    return torch.empty(img.shape, dtype=img.dtype, device=img.device, memory_format=fmt)


def _write_rows(grad_img: Tensor, rows: Tensor, i0: int, i1: int) -> None:
    """Store ``rows`` ``[k*HW, C]`` (a gradient at the positions ``(i, p)``) as images ``i0:i1`` of ``grad_img``."""
    _, c, h, w = grad_img.shape
    if _is_channels_last(grad_img):
        _rows(grad_img)[i0 * h * w : i1 * h * w].copy_(rows)
    else:
        grad_img[i0:i1].copy_(rows.view(i1 - i0, h, w, c).permute(0, 3, 1, 2))


# Images are processed in blocks whose [k*HW, B'] / [k*HW, C] temporaries stay below this size,
# so that big batches never hold whole [B, B', HW] temporaries (and the allocator can reuse block
# memory instead of page-faulting fresh memory for every large tensor). Not smaller: each block is
# a handful of parallel ops, and many small ones stall when the cores are shared (measured on a
# loaded 2-core machine: 2 MiB blocks ran 2-4x slower than 32 MiB ones). One block on GPUs and
# inside torch.compile (which fuses instead).
_BLOCK_BYTES = 1 << 25

# What the forward may keep for the backward instead of recomputing it: eq. 1's response maps
# ([B*HW, B'], at most _KEEP_BYTES) and the rows copy of an NCHW ``img`` ([B*HW, C], at most
# _KEEP_ROWS_BYTES). Past these the backward recomputes the maps (eq. 1: a fourth matrix product)
# and copies the rows again, a block at a time, so the loss's own memory stays O(B^2) plus a few
# blocks: at B = 1024, 14 x 14, C = 512 the maps alone would be 784 MiB and the rows 392 MiB.
# Keeping is never slower; the bounds are a memory choice (see docs/benchmarks.md).
_KEEP_BYTES = 1 << 29
_KEEP_ROWS_BYTES = 1 << 28


def _blocks(img: Tensor, aud: Tensor) -> list[tuple[int, int]]:
    """Image ranges ``[(i0, i1), ...]`` of the eager CPU kernels (see ``_BLOCK_BYTES``)."""
    b, c, h, w = img.shape
    if img.device.type != "cpu" or torch.compiler.is_compiling():
        return [(0, b)]
    per_image = h * w * max(aud.shape[0], c) * 4
    k = max(1, min(b, _BLOCK_BYTES // per_image))
    return [(i, min(i + k, b)) for i in range(0, b, k)]


def _fits(img: Tensor, aud: Tensor, maps: bool, rows: bool = True) -> bool:
    """Whether the rows copy (with ``rows``; none for channels-last ``img``) fits ``_KEEP_ROWS_BYTES``
    and the response maps (with ``maps``) fit ``_KEEP_BYTES``."""
    if torch.compiler.is_compiling():
        return True
    b, c, h, w = img.shape
    n = b * h * w * img.element_size()
    rows_ok = not rows or _is_channels_last(img) or n * c <= _KEEP_ROWS_BYTES
    return rows_ok and (not maps or n * aud.shape[0] <= _KEEP_BYTES)


def _batched(img: Tensor, aud: Tensor) -> bool:
    """Eq. 1 on an NCHW-contiguous ``img`` with one CPU thread and ``B' < 4 HW``: batched products, no copies.

    ``A @ V_i`` per image (maps ``[k, B', HW]``), ``A^T G_i`` straight into the NCHW gradient and
    ``addbmm`` for the audio gradient. The rule is measured (``python -m benchmarks.run --threads 1``
    times both, ``eager`` and ``eager-rows``; C = 512): with one thread the batched products were
    ahead at 14 x 14 up to B = 512 and at 7 x 7 up to B = 64-128, behind at 7 x 7 from B = 256
    (0.91x vs 1.01x of upstream) and level at 14 x 14, B = 1024; ``B' < 4 HW`` separates the two.
    With several threads ``addbmm`` runs one small parallel product per image and stalls on
    shared cores (0.86 s instead of 0.03 s measured), so the rows product is used there.
    """
    _, _, h, w = img.shape
    return (
        img.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and img.is_contiguous()
        and torch.get_num_threads() == 1
        and aud.shape[0] < 4 * h * w
    )


# --------------------------------------------------------------------------- eq. 1 kernel
def _soft_weights(a: Tensor, epsilon: float, beta: float, sign: float, stable: bool, dim: int = -1) -> Tensor:
    r"""``w = sigma(sign * (a - epsilon) / beta)`` over dimension ``dim``, up to a factor per slice.

    With ``stable`` the weights are ``exp(logsigmoid(z) - max logsigmoid(z))`` (the max over ``dim``
    detached): the same ratios, and the largest weight is 1, so ``sum w`` cannot underflow to 0.
    """
    z = torch.sub(a, epsilon).mul_(sign / beta)
    if stable:
        logw = nnf.logsigmoid(z)
        return torch.exp(logw - logw.amax(dim=dim, keepdim=True).detach())
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


def _eq1_grad_alpha(
    a: Tensor, sim: Tensor, z_sum: Tensor, grad: Tensor, epsilon: float, beta: float, stable: bool, dim: int
) -> Tensor:
    r"""``dL/dalpha`` of eq. 1 from ``alpha`` and the saved ``S``, ``Z = sum w`` (all in float32/64).

    With ``w_k = sigma((a_k - epsilon) / beta)``, ``S = sum_k w_k a_k / Z``:

    .. math::
        \frac{\partial S}{\partial a_k} = \frac{w_k + (a_k - S)\, w_k (1 - w_k) / \beta}{Z}

    In the stable form ``w`` carries a constant factor per ``(i, j)`` that cancels in ``S`` and is
    the same in ``Z``, so the formula holds with ``1 - w_k = sigma(-z_k)``. ``dim`` is the spatial
    dimension of ``a``; ``sim``, ``z_sum`` and ``grad`` broadcast against ``a`` (size 1 there).
    """
    w = _soft_weights(a, epsilon, beta, 1.0, stable, dim)
    if stable:
        slope = torch.sigmoid((epsilon - a) / beta).mul_(w)
    else:
        slope = torch.addcmul(w, w, w, value=-1.0)  # w (1 - w)
    # in place where possible: this is the one element-wise pass over [k, HW, B'] of the backward
    out = torch.sub(a, sim).mul_(slope)
    del slope
    return out.mul_(1.0 / beta).add_(w).mul_(grad / z_sum)


class ThresholdedSimilarity(torch.autograd.Function):
    r"""Eq. 1 with a hand-derived backward that keeps no element-wise ``[B, B', HW]`` intermediate.

    ``apply(img [B, C, H, W], aud [B', C], epsilon, beta, recompute) -> S [B, B']`` (float32/64).
    The response maps are one product of the rows ``X = [B*HW, C]`` of ``img`` with ``A^T``,
    laid out ``[B, HW, B']``; the element-wise steps run a block of images at a time (see
    :func:`_blocks`). Saved for backward: ``img``, ``aud``, ``S``, ``Z`` and, unless ``recompute``
    or they exceed ``_KEEP_BYTES`` / ``_KEEP_ROWS_BYTES``, the response maps and the rows copy of an NCHW ``img``; past
    that bound the forward works block by block and keeps nothing of size ``B x B' x H x W``. The
    backward forms ``G = g * dS/dalpha`` a block at a time (see :func:`_eq1_grad_alpha`),
    recomputing the block's maps when they were not kept, and runs two products per block,
    ``dL/dX = G A`` and ``dL/dA += G^T X``: three products per step in all, four when recomputed.
    Under ``create_graph=True`` the backward differentiates the dense formula instead, so
    higher-order gradients are exact.
    """

    @staticmethod
    def forward(ctx, img: Tensor, aud: Tensor, epsilon: float, beta: float, recompute: bool) -> Tensor:  # type: ignore[override]
        op = opmath_dtype(img.dtype)
        stable = needs_stable_weights(epsilon, beta, op)
        batched = _batched(img, aud)
        dim = -1 if batched else 1  # the spatial dimension of the maps: [k, B', HW] or [k, HW, B']
        keep = not recompute and _fits(img, aud, maps=True, rows=not batched)
        rows = alpha = None
        if keep:  # one product for the whole batch; its maps stay for the backward
            if batched:
                alpha = _alpha_block(img, aud, 0, img.shape[0])
            else:
                rows = _rows(img)
                alpha = _alpha_rows(rows, aud, img.shape[0])
        sims, sums = [], []
        for i0, i1 in _blocks(img, aud):
            if alpha is not None:  # kept
                a = alpha[i0:i1]
            else:
                a = _alpha_block(img, aud, i0, i1) if batched else _alpha_rows(_rows_block(img, i0, i1), aud, i1 - i0)
            a = a.to(op)
            w = _soft_weights(a, epsilon, beta, 1.0, stable, dim=dim)
            z_sum = w.sum(dim)
            sums.append(z_sum)
            sims.append(w.mul_(a).sum(dim).div_(z_sum))
            del a, w
        sim, z_sum = torch.cat(sims), torch.cat(sums)
        ctx.save_for_backward(img, aud, sim, z_sum, alpha, rows if keep and not _is_channels_last(img) else None)
        ctx.batched = batched
        ctx.epsilon, ctx.beta, ctx.stable = epsilon, beta, stable
        return sim

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        img, aud, sim, z_sum, alpha, rows = ctx.saved_tensors
        need_img, need_aud = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the dense formula
            with torch.enable_grad():
                dense = thresholded_dense(img, aud, ctx.epsilon, ctx.beta)
                inputs = [t for t, n in ((img, need_img), (aud, need_aud)) if n]
                grads = list(torch.autograd.grad(dense, inputs, grad, create_graph=True))
            return (grads.pop(0) if need_img else None), (grads.pop(0) if need_aud else None), None, None, None
        op = opmath_dtype(img.dtype)
        grad_img = _empty_grad(img) if need_img else None
        grad_aud = aud.new_zeros(aud.shape) if need_aud else None
        batched = ctx.batched
        dim = -1 if batched else 1
        b, c, h, w = img.shape
        hw = h * w
        for i0, i1 in _blocks(img, aud):
            k = i1 - i0
            if batched:
                x = img.reshape(b, c, hw)[i0:i1]  # [k, C, HW], a view
                a = alpha[i0:i1] if alpha is not None else _alpha_block(img, aud, i0, i1)
            else:
                x = rows[i0 * hw : i1 * hw] if rows is not None else _rows_block(img, i0, i1)
                a = alpha[i0:i1] if alpha is not None else _alpha_rows(x, aud, k)
            g_alpha = _eq1_grad_alpha(
                a.to(op), sim[i0:i1].unsqueeze(dim), z_sum[i0:i1].unsqueeze(dim), grad[i0:i1].unsqueeze(dim),
                ctx.epsilon, ctx.beta, ctx.stable, dim=dim,
            ).to(img.dtype)
            del a
            if batched:  # g_alpha [k, B', HW]
                if grad_img is not None:
                    torch.bmm(aud.t().expand(k, -1, -1), g_alpha, out=grad_img.view(b, c, hw)[i0:i1])
                if grad_aud is not None:
                    grad_aud.addbmm_(g_alpha, x.transpose(1, 2))  # k products summed in place, no copy
                continue
            g_rows = g_alpha.view(-1, aud.shape[0])  # [k*HW, B']
            if grad_img is not None:
                if _is_channels_last(img):
                    torch.mm(g_rows, aud, out=_rows(grad_img)[i0 * hw : i1 * hw])
                else:
                    _write_rows(grad_img, torch.mm(g_rows, aud), i0, i1)
            if grad_aud is not None:
                grad_aud.addmm_(g_rows.t(), x)
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
    grad: Tensor, index: Tensor, img: Tensor, aud: Tensor, need_img: bool, need_aud: bool, rows: Tensor | None = None
) -> tuple[Tensor | None, Tensor | None]:
    r"""Scatter each ``g_ij`` to the arg-max ``p_ij`` only, ``O(B B' C)``.

    .. math::
        \frac{\partial L}{\partial V_i[:, p]} = \sum_{j:\,p_{ij} = p} g_{ij} A_j, \qquad
        \frac{\partial L}{\partial A_j} = \sum_i g_{ij}\, V_i[:, p_{ij}]

    Both sums are weighted bag sums of rows (``embedding_bag``), a block of images at a time: the
    audio gradient gathers rows ``(i, p_ij)`` of the block's rows ``[k*HW, C]`` (``rows`` when the
    forward kept them, else a view of channels-last ``img`` or a block-sized copy of NCHW); the
    image gradient sums audio rows into the bags ``(i, p)`` (each image's ``B'`` entries sorted by
    position) and is written in ``img``'s layout.
    """
    b, c, h, w = img.shape
    hw = h * w
    g = grad.to(img.dtype)
    grad_img = _empty_grad(img) if need_img else None
    grad_aud = aud.new_zeros(aud.shape) if need_aud else None
    for i0, i1 in _blocks(img, aud):
        k = i1 - i0
        base = torch.arange(k, device=index.device).unsqueeze(1) * hw  # first row of each image
        if grad_aud is not None:
            table = rows[i0 * hw : i1 * hw] if rows is not None else _rows_block(img, i0, i1)
            local = index[i0:i1] + base  # [k, B']: row (i, p_ij) of the block
            grad_aud += nnf.embedding_bag(
                local.t().contiguous(), table, per_sample_weights=g[i0:i1].t().contiguous(), mode="sum"
            )
            del table  # a block-sized copy for NCHW img: gone before the image gradient's rows exist
        if grad_img is not None:
            positions, order = torch.sort(index[i0:i1], dim=1, stable=True)  # per image, by position
            keys = (positions + base).reshape(-1)  # bag (i, p) of each entry, non-decreasing
            # bag q starts after the entries of bags < q: the exclusive prefix sum of the bag sizes
            # (a static-shape scatter: inductor's searchsorted lowering fails on CUDA, torch 2.11)
            sizes = torch.zeros(k * hw, device=keys.device, dtype=keys.dtype).index_add_(0, keys, torch.ones_like(keys))
            offsets = sizes.cumsum(0) - sizes
            weights = g[i0:i1].gather(1, order).reshape(-1)
            # [k*HW, C]
            bags = nnf.embedding_bag(order.reshape(-1), aud, offsets, per_sample_weights=weights, mode="sum")
            _write_rows(grad_img, bags, i0, i1)
    return grad_img, grad_aud


class MaxSimilarity(torch.autograd.Function):
    r"""Max-MIL similarity ``S_ij = max_hw alpha_ij`` with a sparse arg-max backward.

    ``apply(img [B, C, H, W], aud [B', C], alpha=None) -> S [B, B']`` (float32/64). ``alpha``, when
    given, must be ``pairwise(img, aud)`` already computed (detached) by the caller; it is not kept.
    Otherwise a block of images at a time (see :func:`_blocks`) the block's rows ``[k*HW, C]`` are
    multiplied by ``A^T`` (one product, response maps laid out ``[k, HW, B']``) and reduced over
    ``HW``: the response maps of a batch larger than one block never exist whole. Saved for
    backward: ``img``, ``aud``, the ``[B, B']`` arg-max indices and, for an NCHW ``img`` whose rows
    copy fits ``_KEEP_ROWS_BYTES``, that copy (the backward copies block by block otherwise); the backward
    is :func:`_max_backward_sparse` (no ``[B, B', HW]`` tensor at all). Ties go to the first
    maximal position, as ``torch.max`` and autograd do. Under ``create_graph=True`` the backward
    differentiates the dense formula instead, so higher-order gradients are exact.
    """

    @staticmethod
    def forward(ctx, img: Tensor, aud: Tensor, alpha: Tensor | None = None) -> Tensor:  # type: ignore[override]
        rows = None
        if alpha is not None:
            values, index = alpha.flatten(-2).max(dim=-1)
        else:
            hw = img.shape[2] * img.shape[3]
            if not _is_channels_last(img) and _fits(img, aud, maps=False):
                rows = _rows(img)  # one copy, kept for the backward
            parts = []
            for i0, i1 in _blocks(img, aud):
                x = rows[i0 * hw : i1 * hw] if rows is not None else _rows_block(img, i0, i1)
                parts.append(_alpha_rows(x, aud, i1 - i0).max(dim=1))
            values = torch.cat([p.values for p in parts])
            index = torch.cat([p.indices for p in parts])
        ctx.save_for_backward(img, aud, index, rows)
        return values.to(opmath_dtype(values.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        img, aud, index, rows = ctx.saved_tensors
        need_img, need_aud = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the dense formula
            with torch.enable_grad():
                alpha = pairwise(img, aud).flatten(-2)
                dense = alpha.gather(-1, index.unsqueeze(-1)).squeeze(-1).to(grad.dtype)
                inputs = [t for t, n in ((img, need_img), (aud, need_aud)) if n]
                grads = list(torch.autograd.grad(dense, inputs, grad, create_graph=True))
            return (grads.pop(0) if need_img else None), (grads.pop(0) if need_aud else None), None
        grad_img, grad_aud = _max_backward_sparse(grad, index, img, aud, need_img, need_aud, rows)
        return grad_img, grad_aud, None


def maximum(img: Tensor, aud: Tensor, alpha: Tensor | None = None) -> Tensor:
    """Max-MIL similarity through :class:`MaxSimilarity` (``[B, B']``, float32/64)."""
    return MaxSimilarity.apply(img, aud, alpha)


# --------------------------------------------------------------------------- eq. 3
def margin_nce_core(
    sim: Tensor,
    margin: float,
    tau: float | Tensor,
    symmetric: bool = False,
    extra_negatives: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""marginNCE (paper eq. 3) without argument checks; see :func:`marginnce_loss.functional.margin_nce`.
    A tensor ``tau`` (learnable) goes through the same plain autograd ops, so its gradient is exact.

    .. math:: \ell_i = -\log\operatorname{softmax}_j\!\left(\frac{S_{ij} - m\,\delta_{ij}}{\tau}\right)_{j=i}
    """
    dtype = opmath_dtype(sim.dtype)
    if extra_negatives is not None:
        dtype = torch.promote_types(dtype, opmath_dtype(extra_negatives.dtype))
    if isinstance(tau, Tensor):  # a learnable temperature: autograd carries d loss / d tau through these ops
        tau = tau.to(dtype=dtype, device=sim.device)
    logits = sim.to(dtype) / tau
    b = logits.shape[0]
    # (S_ii - m) / tau on the diagonal, S_ij / tau elsewhere (the constant in the logits' dtype)
    logits = logits - torch.eye(b, dtype=dtype, device=logits.device) * (margin / tau)

    # -log_softmax picked at the positive: the same operations as F.cross_entropy(logits, arange(B)),
    # so margin 0 reproduces the upstream loss sites up to rounding (the loss runs in its opmath dtype).
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
    tau: float | Tensor,
    symmetric: bool,
    reduction: str,
) -> Tensor:
    """``margin_nce_core(thresholded(img, aud, epsilon, beta, recompute), margin, tau, symmetric, None, reduction)``."""
    return margin_nce_core(thresholded(img, aud, epsilon, beta, recompute), margin, tau, symmetric, None, reduction)


def max_loss(img: Tensor, aud: Tensor, margin: float, tau: float | Tensor, symmetric: bool, reduction: str) -> Tensor:
    """``margin_nce_core(maximum(img, aud), margin, tau, symmetric, None, reduction)``."""
    return margin_nce_core(maximum(img, aud), margin, tau, symmetric, None, reduction)


def max_xmil(img: Tensor, aud: Tensor, tau: float, margin: float) -> tuple[Tensor, Tensor]:
    """EZ-VSL's ``(loss, Slogits)``: one product for both, the loss through the sparse backward."""
    alpha = pairwise(img, aud)
    sim = maximum(img, aud, alpha.detach())
    return margin_nce_core(sim, margin, tau, True, None, "mean"), alpha / tau
