r"""The functional core: one place per formula.

Notation (SPEC sections 1-3). ``img`` is a visual feature map :math:`V \in R^{B\times C\times H\times W}`,
``aud`` audio embeddings :math:`A \in R^{B\times C}`, both already L2-normalised over ``C``.
The response map of image ``i`` and audio ``j`` is

.. math:: \alpha_{ij}[h, w] = \langle V_i[:, h, w], A_j \rangle

and similarity matrices ``S`` are ``[B, B]`` with row ``i`` = image ``i``, column ``j`` = audio ``j``,
positives on the diagonal.

Precision: the similarity kernels take the matrix product in the input dtype and run every
element-wise step and reduction in float32 (float64 stays float64), and return that dtype.
:func:`margin_nce` always runs its log-sum-exp in float32 or wider.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._validation import (
    REDUCTIONS,
    check_choice,
    check_finite,
    check_pair,
    check_positive,
    check_same_batch,
    check_sim,
    opmath_dtype,
)

__all__ = [
    "response_map",
    "pairwise_response_maps",
    "thresholded_similarity",
    "max_similarity",
    "background_similarity",
    "margin_nce",
]

# float32 sigmoid underflows below about -87 (float64: -745); past half of that we switch
# the soft-threshold weights to a shifted log-space form that cannot underflow.
_STABLE_LIMIT = {torch.float32: 40.0, torch.float64: 350.0}


def response_map(img: Tensor, aud: Tensor) -> Tensor:
    r"""Localisation maps of each clip with its own audio, :math:`\alpha_{ii}`.

    .. math:: \alpha_{ii}[h, w] = \langle V_i[:, h, w], A_i \rangle

    Args:
        img: ``[B, C, H, W]`` visual features.
        aud: ``[B, C]`` audio embeddings (same ``B``).

    Returns:
        ``[B, H, W]`` in the input dtype.
    """
    check_pair(img, aud)
    check_same_batch(img, aud)
    return torch.einsum("bchw,bc->bhw", img, aud)


def pairwise_response_maps(img: Tensor, aud: Tensor) -> Tensor:
    r"""All response maps :math:`\alpha_{ij}` of every image with every audio.

    Args:
        img: ``[B, C, H, W]`` visual features.
        aud: ``[B', C]`` audio embeddings.

    Returns:
        ``[B, B', H, W]`` in the input dtype, ``out[i, j] = alpha_ij``.
    """
    check_pair(img, aud)
    return _pairwise(img, aud)


def _pairwise(img: Tensor, aud: Tensor) -> Tensor:
    # [B, C, HW]^T @ [C, B'] as one batched matmul -> [B, HW, B'] -> [B, B', H, W]
    b, c, h, w = img.shape
    alpha = torch.matmul(img.reshape(b, c, h * w).transpose(1, 2), aud.t())
    return alpha.transpose(1, 2).reshape(b, aud.shape[0], h, w)


def _sigmoid_weighted_mean(alpha: Tensor, epsilon: float, beta: float, sign: float = 1.0) -> Tensor:
    r"""Soft-thresholded spatial mean over the last two dimensions (the kernel of eq. 1).

    .. math::
        w = \sigma\!\left(s\,\frac{\alpha - \epsilon}{\beta}\right), \qquad
        \bar\alpha = \frac{\sum_{hw} w\,\alpha}{\sum_{hw} w}

    ``sign = +1`` weights the foreground (eq. 1); ``sign = -1`` gives
    :math:`w = 1 - \sigma((\alpha-\epsilon)/\beta)`, the LVS background ("trimap") weights.
    The input is promoted to float32 (float64 stays float64). When ``(1 + |epsilon|) / beta`` is so
    large that the weights of cosine responses could underflow, the weights are computed as
    ``exp(logsigmoid(z) - max logsigmoid(z))``, which is the same ratio and cannot become 0/0.

    Args:
        alpha: ``[..., H, W]`` response maps.
        epsilon: threshold.
        beta: sigmoid temperature (> 0).
        sign: ``+1.0`` or ``-1.0``.

    Returns:
        ``[...]`` in float32 or float64.
    """
    a = alpha.to(opmath_dtype(alpha.dtype)).flatten(-2)
    z = (a - epsilon) * (sign / beta)
    if (1.0 + abs(epsilon)) / beta > _STABLE_LIMIT[a.dtype]:
        logw = torch.nn.functional.logsigmoid(z)
        w = torch.exp(logw - logw.amax(dim=-1, keepdim=True).detach())
    else:
        w = torch.sigmoid(z)
    return (w * a).sum(-1) / w.sum(-1)


def thresholded_similarity(img: Tensor, aud: Tensor, epsilon: float = 0.65, beta: float = 0.03) -> Tensor:
    r"""Thresholded similarity, paper eq. 1 (LVS-style).

    .. math::
        w_{ij} = \sigma\!\left(\frac{\alpha_{ij} - \epsilon}{\beta}\right), \qquad
        S_{ij} = \frac{\sum_{hw} w_{ij}\,\alpha_{ij}}{\sum_{hw} w_{ij}}

    Args:
        img: ``[B, C, H, W]`` visual features, L2-normalised over ``C``.
        aud: ``[B', C]`` audio embeddings, L2-normalised over ``C`` (``B' = B`` in training).
        epsilon: threshold (paper: 0.65).
        beta: sigmoid temperature, > 0 (paper: 0.03).

    Returns:
        ``[B, B']`` similarities in float32 (float64 for float64 input).
    """
    check_pair(img, aud)
    epsilon = check_finite("epsilon", epsilon)
    beta = check_positive("beta", beta)
    return _sigmoid_weighted_mean(_pairwise(img, aud), epsilon, beta)


def max_similarity(img: Tensor, aud: Tensor) -> Tensor:
    r"""Max-MIL similarity (EZ-VSL).

    .. math:: S_{ij} = \max_{hw} \alpha_{ij}[h, w]

    The gradient of each ``S_ij`` reaches only the arg-max location of ``alpha_ij``.

    Args:
        img: ``[B, C, H, W]`` visual features, L2-normalised over ``C``.
        aud: ``[B', C]`` audio embeddings, L2-normalised over ``C``.

    Returns:
        ``[B, B']`` similarities in float32 (float64 for float64 input).
    """
    check_pair(img, aud)
    alpha = _pairwise(img, aud)
    return alpha.flatten(-2).max(dim=-1).values.to(opmath_dtype(alpha.dtype))


def background_similarity(img: Tensor, aud: Tensor, epsilon: float = 0.4, beta: float = 0.03) -> Tensor:
    r"""LVS background ("trimap") similarity of each image with its own audio, the hard negative.

    .. math::
        n_i = 1 - \sigma\!\left(\frac{\alpha_{ii} - \epsilon_2}{\beta}\right), \qquad
        N_i = \frac{\sum_{hw} n_i\,\alpha_{ii}}{\sum_{hw} n_i}

    Args:
        img: ``[B, C, H, W]`` visual features, L2-normalised over ``C``.
        aud: ``[B, C]`` audio embeddings, L2-normalised over ``C``.
        epsilon: background threshold ``epsilon2`` (LVS with trimap: 0.4; without: the positive epsilon).
        beta: sigmoid temperature, > 0.

    Returns:
        ``[B]`` in float32 (float64 for float64 input).
    """
    epsilon = check_finite("epsilon", epsilon)
    beta = check_positive("beta", beta)
    return _sigmoid_weighted_mean(response_map(img, aud), epsilon, beta, sign=-1.0)


def margin_nce(
    sim: Tensor,
    margin: float = -0.2,
    tau: float = 0.07,
    symmetric: bool = False,
    extra_negatives: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""marginNCE, paper eq. 3: InfoNCE with a margin ``m`` on the positive logit.

    .. math::
        \ell_i = -\log \frac{e^{(S_{ii}-m)/\tau}}
            {e^{(S_{ii}-m)/\tau} + \sum_{j\neq i} e^{S_{ij}/\tau} + \sum_k e^{N_{ik}/\tau}}

    ``m < 0`` loosens the decision boundary (paper: -0.2), ``m = 0`` is plain InfoNCE
    (``F.cross_entropy(sim / tau, arange(B))``), ``m > 0`` is the usual strict margin.
    With ``symmetric=True`` the column direction (audio ``j`` as anchor against every image,
    margin on the same diagonal) is added per anchor index, as EZ-VSL sums the two directions:
    ``reduction="mean"`` gives ``mean_i l_i^row + mean_j l_j^col``. ``extra_negatives`` (``N``)
    join the row (image-anchor) direction only. The log-sum-exp runs in float32 or wider whatever
    the input dtype, so half-precision input gives a finite, float32-accurate loss.

    Args:
        sim: ``[B, B]`` similarities, row ``i`` = image ``i``, column ``j`` = audio ``j``.
        margin: ``m``, finite.
        tau: temperature, finite and > 0.
        symmetric: add the column direction.
        extra_negatives: optional ``[B, K]`` further negative similarities per row
            (e.g. LVS's background similarity, ``background_similarity(...).unsqueeze(1)``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]`` per-anchor losses, the two
            directions summed per index when symmetric).

    Returns:
        Scalar (or ``[B]`` for ``reduction="none"``) in float32, float64 for float64 input.
    """
    check_sim(sim, extra_negatives)
    margin = check_finite("margin", margin)
    tau = check_positive("tau", tau)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__} {symmetric!r}")
    check_choice("reduction", reduction, REDUCTIONS)

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
