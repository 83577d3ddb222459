r"""marginNCE over the global batch of a data-parallel job (negatives from every rank).

With ``W`` ranks holding ``B_r`` pairs each (``N = sum_r B_r``), the single-process loss on the
concatenated global batch is

.. math::
    L = \frac{1}{N} \sum_{a=1}^{N} \ell^{row}_a \;\big[+\; \frac{1}{N} \sum_{a=1}^{N} \ell^{col}_a\big]

(paper eq. 3, section 2.2; the bracket with ``symmetric=True``, EZ-VSL's two directions). Rank ``r`` holds global rows
``o_r .. o_r + B_r - 1`` with ``o_r = sum_{s<r} B_s``. It gathers every rank's audio embeddings
(and, when symmetric, image features) *with gradients*, scores its local anchors against the
global batch and returns

.. math:: L_r = \frac{W}{N} \sum_{a \in \text{rank } r} \big(\ell^{row}_a \,[+\, \ell^{col}_a]\big)

which is the mean over the local anchors when all ranks hold ``B`` pairs (``W/N = 1/B``).

Why this scaling gives exactly the single-process gradient under DDP: the gather's backward
(:class:`GatherWithGrad`) all-reduces (sums) the gradient of the gathered tensor and keeps the
rank's own slice, so on rank ``r`` the features ``f_r`` receive
:math:`\partial(\sum_s L_s)/\partial f_r` (every rank's loss, including the paths through the other
ranks' copies of ``f_r``), and the local parameter gradient is
:math:`\partial(\sum_s L_s)/\partial f_r \cdot \partial f_r / \partial\theta`. DDP averages over ranks:

.. math::
    \frac{1}{W}\sum_r \frac{\partial (\sum_s L_s)}{\partial f_r}\frac{\partial f_r}{\partial\theta}
    = \frac{1}{W}\frac{\partial}{\partial\theta} \sum_s L_s
    = \frac{1}{W}\frac{\partial}{\partial\theta}\Big(W \cdot \frac{1}{N}\sum_a \ell_a\Big)
    = \frac{\partial L}{\partial\theta}.

The forward values agree too: :math:`\frac{1}{W}\sum_r L_r = L`. Rule for every scalar reduction:
*the mean over ranks of the returned value is the single-process loss on the global batch, and
DDP's averaged gradient is its gradient*. Hence ``reduction="sum"`` returns ``W * sum_{local} l_a``
and ``reduction="mean"`` returns ``(W / N) * sum_{local} l_a``. ``reduction="none"`` returns the
unscaled ``[B_r]`` per-anchor losses (directions summed per index when symmetric): concatenated
over ranks they are the single-process ``"none"`` output; scaling them is the caller's business.

Unequal per-rank batch sizes are supported: every call first all-gathers each rank's
``(B, C, H, W, dtype)`` (one small collective), pads to the largest ``B`` for the feature gather and
drops the padding. Mismatched ``C``, ``H``, ``W`` or dtype across ranks raise on *every* rank (they
all see the same gathered shapes), so no rank is left waiting in a collective.

Every rank must call the loss, and later ``backward``, in the same order (the gathers are
collectives in forward and backward).

The gather does not use ``torch.distributed.nn.functional.all_gather``: on torch 2.14 with gloo its
backward returns wrong gradients when the incoming gradient is non-contiguous (as after a transpose
or ``einsum``); :class:`GatherWithGrad` makes the gradient contiguous before reducing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import functional as F
from ._validation import (
    REDUCTIONS,
    check_bool,
    check_choice,
    check_finite,
    check_has_negatives,
    check_pair,
    check_positive,
)

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "GatherWithGrad",
    "all_gather_with_grad",
    "gathered_localization_margin_nce",
]

# dtype codes for the cross-rank consistency check (sent as integers with the shapes)
_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and its default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank(group: Any | None = None) -> int:
    """This process's rank in ``group`` (default group if ``None``); ``0`` without a process group."""
    return dist.get_rank(group) if is_distributed() else 0


def world_size(group: Any | None = None) -> int:
    """Number of ranks in ``group`` (default group if ``None``); ``1`` without a process group."""
    return dist.get_world_size(group) if is_distributed() else 1


class GatherWithGrad(torch.autograd.Function):
    r"""All-gather along dim 0 whose backward routes each rank's gradient to the owning rank.

    Forward: ``out = cat([x_0, ..., x_{W-1}], dim=0)`` where ``x_s`` is rank ``s``'s input, of shape
    ``[sizes[s], *rest]`` (``rest`` equal on all ranks; dim-0 sizes may differ: inputs are padded to
    ``max(sizes)`` for the collective and the padding is dropped).

    Backward: the loss of the job is :math:`\sum_s L_s`, and rank ``s`` holds
    :math:`g_s = \partial L_s / \partial\,\mathrm{out}`. The gradient of ``x_r`` is
    :math:`\big(\sum_s g_s\big)[o_r : o_r + B_r]`: an all-reduce (sum) of a contiguous copy of the
    incoming gradient, then the own slice. (An all-reduce rather than a reduce-scatter: gloo has no
    reduce-scatter and unequal sizes need none.) The incoming gradient is copied, never reduced in
    place, because autograd may share that tensor with other nodes.

    Call it as ``GatherWithGrad.apply(x, sizes, group)`` or through :func:`all_gather_with_grad`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: tuple[int, ...], group: Any | None) -> Tensor:  # type: ignore[override]
        r = dist.get_rank(group)
        b = x.shape[0]
        if sizes[r] != b:
            raise ValueError(f"sizes: expected sizes[{r}] == x.shape[0] == {b} on rank {r}, got {sizes[r]}")
        bmax = max(sizes)
        local = x.contiguous()
        if b < bmax:
            local = torch.cat([local, local.new_zeros((bmax - b,) + tuple(local.shape[1:]))], dim=0)
        buffers = [torch.empty_like(local) for _ in sizes]
        dist.all_gather(buffers, local, group=group)
        ctx.offset = sum(sizes[:r])
        ctx.size = b
        ctx.group = group
        return torch.cat([buf[:s] for buf, s in zip(buffers, sizes)], dim=0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[ctx.offset : ctx.offset + ctx.size], None, None


def _gather_shapes(x: Tensor, group: Any | None) -> list[tuple[int, ...]]:
    """Every rank's ``(*x.shape, dtype code)``; ``x.dim()`` must be equal on all ranks."""
    if x.dtype not in _DTYPE_CODES:
        raise TypeError(f"x: expected one of dtypes {tuple(_DTYPE_CODES)}, got {x.dtype}")
    mine = torch.tensor(list(x.shape) + [_DTYPE_CODES[x.dtype]], dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(mine) for _ in range(world_size(group))]
    dist.all_gather(shapes, mine, group=group)
    return [tuple(int(v) for v in s.tolist()) for s in shapes]


def _check_consistent(name: str, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Raise on every rank alike when trailing dims or dtypes differ across ranks; return dim-0 sizes."""
    first = shapes[0]
    for r, s in enumerate(shapes):
        if s[1:-1] != first[1:-1]:
            raise ValueError(
                f"{name}: expected the same shape after the batch dimension on every rank, got shape {s[:-1]} "
                f"on rank {r} and {first[:-1]} on rank 0"
            )
        if s[-1] != first[-1]:
            raise TypeError(
                f"{name}: expected the same dtype on every rank, got {_CODE_DTYPES[s[-1]]} on rank {r} "
                f"and {_CODE_DTYPES[first[-1]]} on rank 0"
            )
    return tuple(s[0] for s in shapes)


def all_gather_with_grad(x: Tensor, group: Any | None = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, with gradients routed back to the owners.

    See :class:`GatherWithGrad` for the backward. Dim-0 sizes may differ across ranks; the other
    dims and the dtype must agree (checked on every rank alike: ``ValueError`` / ``TypeError``).
    Without a process group, or with a world size of 1, returns ``x`` itself.

    Args:
        x: ``[B_r, ...]`` floating-point tensor, non-empty.
        group: process group (default group if ``None``).

    Returns:
        ``[sum_r B_r, ...]``.

    Raises:
        TypeError: ``x`` not a tensor; dtypes that differ across ranks.
        ValueError: a 0-d ``x``; trailing dimensions that differ across ranks.

    Example:
        >>> x = torch.arange(6.0).view(3, 2)
        >>> all_gather_with_grad(x) is x              # no process group: x itself
        True
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x: expected at least one dimension (the batch), got a 0-d tensor")
    if world_size(group) == 1:
        return x
    sizes = _check_consistent("x", _gather_shapes(x, group))
    return GatherWithGrad.apply(x, sizes, group)


def _margin_nce_at_offset(sim: Tensor, offset: int, margin: float, tau: float | Tensor) -> Tensor:
    r"""Per-anchor marginNCE for ``[B, N]`` scores whose row ``i`` has its positive at column ``offset + i``.

    Expressed through eq. 3's one implementation (``functional._margin_nce``, unchecked): the square
    block ``sim[:, offset:offset + B]`` carries the positives on its diagonal and every other column
    is an extra negative of its row, so ``l_i`` is eq. 3 over the full row. Returns ``[B]``.
    """
    b = sim.shape[0]
    square = sim[:, offset : offset + b]
    others = torch.cat([sim[:, :offset], sim[:, offset + b :]], dim=1)
    extra = others if others.shape[1] > 0 else None
    return F._margin_nce(square, margin, tau, False, extra, "none")


def gathered_localization_margin_nce(
    img: Tensor,
    aud: Tensor,
    similarity: Callable[[Tensor, Tensor], Tensor],
    margin: float = -0.2,
    tau: float = 0.07,
    symmetric: bool = False,
    reduction: str = "mean",
    group: Any | None = None,
) -> Tensor:
    r"""Rank-local share of marginNCE over the global (all-rank) batch; see the module docstring.

    Row direction (image anchors): ``S = similarity(img, aud_all)`` is ``[B_r, N]`` with local row
    ``i``'s positive at global column ``o_r + i``. Column direction (``symmetric=True``, audio
    anchors): ``similarity(img_all, aud)`` is ``[N, B_r]``; its transpose gives local audio ``j``
    against every image, positive at ``o_r + j``. Each direction is eq. 3 over the full row
    (margin on the positive only).

    Scaling (mean over ranks of the value = single-process loss on the global batch; DDP's averaged
    gradient = its gradient): ``"mean"`` returns ``(W/N) * sum_local (l_row [+ l_col])``,
    ``"sum"`` returns ``W * sum_local (...)``, ``"none"`` the unscaled ``[B_r]`` per-anchor losses.
    Without a process group or with ``W = 1`` this is ``margin_nce(similarity(img, aud), ...)``.

    Args:
        img: ``[B_r, C, H, W]`` local visual features, L2-normalised over ``C``.
        aud: ``[B_r, C]`` local audio embeddings, L2-normalised over ``C``.
        similarity: kernel mapping ``([B, C, H, W], [B', C])`` to ``[B, B']`` (e.g.
            :func:`~marginnce_loss.functional.max_similarity`).
        margin: ``m``, finite.
        tau: temperature, > 0.
        symmetric: add the column (audio-anchor) direction, EZ-VSL style.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        group: process group (default group if ``None``).

    Returns:
        Scalar, or ``[B_r]`` for ``"none"``; float32 (float64 for float64 input).

    Raises:
        TypeError: bad tensors (see :func:`~marginnce_loss.functional.response_map`), ``similarity``
            not callable, ``margin`` / ``tau`` not real numbers, ``symmetric`` not a bool; a dtype
            that differs across ranks.
        ValueError: bad shapes, ``B_r`` differing between ``img`` and ``aud``, ``B < 2`` without
            other ranks, ``margin`` / ``tau`` not finite, ``tau <= 0``, unknown ``reduction``;
            ``C``, ``H`` or ``W`` differing across ranks (raised on every rank alike).

    Example:
        >>> import torch
        >>> from marginnce_loss import functional as MF
        >>> img = torch.nn.functional.normalize(torch.randn(4, 8, 3, 3), dim=1)
        >>> aud = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> local = gathered_localization_margin_nce(img, aud, MF.max_similarity, tau=0.03)
        >>> torch.equal(local, MF.margin_nce(MF.max_similarity(img, aud), -0.2, 0.03))  # no process group
        True
    """
    check_pair(img, aud, same_batch=True)
    if not callable(similarity):
        raise TypeError(f"similarity: expected a callable (img, aud) -> [B, B'], got {type(similarity).__name__}")
    margin = check_finite("margin", margin)
    tau = check_positive("tau", tau)
    check_bool("symmetric", symmetric)
    check_choice("reduction", reduction, REDUCTIONS)
    if world_size(group) == 1:
        check_has_negatives(img)
    return _gathered_loss(img, aud, similarity, margin, tau, symmetric, reduction, group)


def _gathered_loss(
    img: Tensor,
    aud: Tensor,
    similarity: Callable[[Tensor, Tensor], Tensor],
    margin: float,
    tau: float | Tensor,
    symmetric: bool,
    reduction: str,
    group: Any | None,
) -> Tensor:
    """:func:`gathered_localization_margin_nce` without argument checks (the caller has made them)."""
    w = world_size(group)
    if w == 1:
        return F._margin_nce(similarity(img, aud), margin, tau, symmetric, None, reduction)

    sizes = _check_consistent("img", _gather_shapes(img, group))
    r = dist.get_rank(group)
    offset, n = sum(sizes[:r]), sum(sizes)

    aud_all = GatherWithGrad.apply(aud, sizes, group)
    loss = _margin_nce_at_offset(similarity(img, aud_all), offset, margin, tau)
    if symmetric:
        img_all = GatherWithGrad.apply(img, sizes, group)
        loss = loss + _margin_nce_at_offset(similarity(img_all, aud).t(), offset, margin, tau)

    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum() * w
    return loss.sum() * (w / n)
