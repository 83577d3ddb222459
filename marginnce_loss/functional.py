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

Backends (``backend=`` on the similarity kernels, :class:`~marginnce_loss.LocalizationMarginNCE` and
the adapters): ``"eager"`` runs the kernels of :mod:`marginnce_loss._kernels` (hand-derived
backward passes: sparse arg-max for max-MIL, one-pass ``dS/dalpha`` for eq. 1); ``"compiled"``
builds the same with ``torch.compile`` (inductor, dynamic shapes); ``"auto"`` (default) is
compiled on CUDA and eager elsewhere. See :mod:`marginnce_loss._compiled`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _compiled, _kernels
from ._compiled import BACKENDS
from ._kernels import pairwise as _pairwise
from ._kernels import sigmoid_weighted_mean as _sigmoid_weighted_mean
from ._validation import (
    REDUCTIONS,
    check_choice,
    check_finite,
    check_pair,
    check_positive,
    check_same_batch,
    check_sim,
)

__all__ = [
    "response_map",
    "pairwise_response_maps",
    "thresholded_similarity",
    "max_similarity",
    "background_similarity",
    "margin_nce",
    "BACKENDS",
]

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


def thresholded_similarity(
    img: Tensor,
    aud: Tensor,
    epsilon: float = 0.65,
    beta: float = 0.03,
    backend: str = "auto",
    recompute: bool = False,
) -> Tensor:
    r"""Thresholded similarity, paper eq. 1 (LVS-style).

    .. math::
        w_{ij} = \sigma\!\left(\frac{\alpha_{ij} - \epsilon}{\beta}\right), \qquad
        S_{ij} = \frac{\sum_{hw} w_{ij}\,\alpha_{ij}}{\sum_{hw} w_{ij}}

    The backward is derived by hand (:class:`~marginnce_loss._kernels.ThresholdedSimilarity`):
    ``dS_ij/dalpha = (w + (alpha - S_ij) w (1 - w) / beta) / sum_hw w``, formed in one element-wise
    pass, then the two gradient products. Nothing element-wise of size ``B x B' x H x W`` is kept
    for backward; the response maps themselves are, unless ``recompute=True`` or they exceed 512 MiB
    (or the ``[B*HW, C]`` copy of an NCHW ``img`` that comes with them exceeds 256 MiB), past which
    they are recomputed a block of images at a time.

    Args:
        img: ``[B, C, H, W]`` visual features, L2-normalised over ``C`` (NCHW or channels-last).
        aud: ``[B', C]`` audio embeddings, L2-normalised over ``C`` (``B' = B`` in training).
        epsilon: threshold (paper: 0.65).
        beta: sigmoid temperature, > 0 (paper: 0.03).
        backend: ``"auto"`` (compiled on CUDA, eager otherwise), ``"eager"`` or ``"compiled"``
            (``torch.compile``; falls back to eager with one warning if compilation is unavailable).
        recompute: recompute the response maps in backward instead of keeping them from the
            forward: saves ``B * B' * H * W`` elements of memory for one more matrix product
            (done anyway past the 512 MiB bound above).

    Returns:
        ``[B, B']`` similarities in float32 (float64 for float64 input).
    """
    check_pair(img, aud)
    epsilon = check_finite("epsilon", epsilon)
    beta = check_positive("beta", beta)
    _check_bool("recompute", recompute)
    return _compiled.run("thresholded", backend, img.device, img, aud, epsilon, beta, recompute)


def max_similarity(img: Tensor, aud: Tensor, backend: str = "auto") -> Tensor:
    r"""Max-MIL similarity (EZ-VSL).

    .. math:: S_{ij} = \max_{hw} \alpha_{ij}[h, w]

    The gradient of each ``S_ij`` reaches only the arg-max location of ``alpha_ij``; the backward
    (:class:`~marginnce_loss._kernels.MaxSimilarity`) uses that sparsity directly, ``O(B B' C)``
    work, keeping only the ``[B, B']`` arg-max indices from the forward.

    Args:
        img: ``[B, C, H, W]`` visual features, L2-normalised over ``C`` (NCHW or channels-last).
        aud: ``[B', C]`` audio embeddings, L2-normalised over ``C``.
        backend: ``"auto"`` | ``"eager"`` | ``"compiled"``, as in :func:`thresholded_similarity`.

    Returns:
        ``[B, B']`` similarities in float32 (float64 for float64 input).
    """
    check_pair(img, aud)
    return _compiled.run("max", backend, img.device, img, aud)


def _similarity_loss(
    img: Tensor,
    aud: Tensor,
    similarity: str,
    epsilon: float,
    beta: float,
    margin: float,
    tau: float,
    symmetric: bool,
    reduction: str,
    backend: str = "auto",
) -> Tensor:
    """``margin_nce(S(img, aud), margin, tau, symmetric, reduction=reduction)`` as one kernel.

    ``S`` is :func:`max_similarity` for ``similarity="max"``, else :func:`thresholded_similarity`.
    Under ``backend="compiled"`` the similarity, its threshold and reductions and the loss are one
    compiled graph, forward and backward. Scalars are taken as validated (the module does it);
    the tensors are checked here.
    """
    check_pair(img, aud)
    check_same_batch(img, aud)
    if img.shape[0] < 2:
        raise ValueError(
            f"img: expected B >= 2 (a single pair has no negative, the loss would be identically 0), "
            f"got shape {tuple(img.shape)}"
        )
    if similarity == "max":
        return _compiled.run("max_loss", backend, img.device, img, aud, margin, tau, symmetric, reduction)
    return _compiled.run(
        "thresholded_loss", backend, img.device, img, aud, epsilon, beta, False, margin, tau, symmetric, reduction
    )


def _max_xmil_loss(img: Tensor, aud: Tensor, tau: float, margin: float, backend: str = "auto"):
    """EZ-VSL's ``(margin_nce(max_similarity(img, aud), margin, tau, symmetric=True), alpha / tau)``
    from one matrix product (compiled as one graph under ``backend="compiled"``); validated inputs, ``B >= 2``."""
    return _compiled.run("max_xmil", backend, img.device, img, aud, tau, margin)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


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
    _check_bool("symmetric", symmetric)
    check_choice("reduction", reduction, REDUCTIONS)
    return _kernels.margin_nce_core(sim, margin, tau, symmetric, extra_negatives, reduction)
