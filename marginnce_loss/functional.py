r"""The functional core: one place per formula.

Notation (paper section 2.1). ``img`` is a visual feature map :math:`V \in R^{B\times C\times H\times W}`,
``aud`` audio embeddings :math:`A \in R^{B\times C}`, both already L2-normalised over ``C``.
The response map of image ``i`` and audio ``j`` is

.. math:: \alpha_{ij}[h, w] = \langle V_i[:, h, w], A_j \rangle

and similarity matrices ``S`` are ``[B, B]`` with row ``i`` = image ``i``, column ``j`` = audio ``j``,
positives on the diagonal.

Precision: the similarity kernels take the matrix product in the input dtype and run every
element-wise step and reduction in float32 (float64 stays float64), and return that dtype.
:func:`margin_nce` always runs its log-sum-exp in float32 or wider. Half-precision features give a
loss as accurate as their dtype allows, not as float32 (bfloat16 max-MIL: up to 1e-2 relative,
mostly the rounding of the features; measured by ``python -m benchmarks.precision``, tabled in
``docs/the-loss.md``).

Backends (``backend=`` on the similarity kernels, :class:`~marginnce_loss.LocalizationMarginNCE` and
the adapters): ``"eager"`` runs the kernels of :mod:`marginnce_loss._kernels` (hand-derived
backward passes: sparse arg-max for max-MIL, one-pass ``dS/dalpha`` for eq. 1); ``"compiled"``
builds the same with ``torch.compile`` (inductor, dynamic shapes); ``"auto"`` (default) is
compiled on CUDA and eager elsewhere. See :mod:`marginnce_loss._compiled`.

Structure (as torchmetrics' functional steps): each public function checks its arguments once and
then calls a private, unchecked step (``_thresholded_similarity``, ``_max_similarity``,
``_margin_nce``, ...); the modules, the adapters and :mod:`marginnce_loss.distributed` check once
and call those steps, so no tensor is checked twice in one call.

Example:
    >>> import torch
    >>> from marginnce_loss import functional as MF
    >>> g = torch.Generator().manual_seed(0)
    >>> img = torch.nn.functional.normalize(torch.randn(4, 8, 7, 7, generator=g), dim=1)
    >>> aud = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    >>> sim = MF.thresholded_similarity(img, aud)          # paper eq. 1
    >>> sim.shape
    torch.Size([4, 4])
    >>> bool(sim.abs().max() <= 1)
    True
    >>> MF.margin_nce(sim, margin=-0.2, tau=0.07).shape     # paper eq. 3, mean over anchors
    torch.Size([])
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _compiled, _kernels
from ._compiled import BACKENDS
from ._validation import (
    REDUCTIONS,
    check_bool,
    check_choice,
    check_finite,
    check_pair,
    check_positive,
    check_sim,
    check_temperature,
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
    r"""Localisation maps of each clip with its own audio, :math:`\alpha_{ii}` (paper section 2.1).

    .. math:: \alpha_{ii}[h, w] = \langle V_i[:, h, w], A_i \rangle

    Args:
        img: ``[B, C, H, W]`` visual features.
        aud: ``[B, C]`` audio embeddings (same ``B``).

    Returns:
        ``[B, H, W]`` in the input dtype.

    Raises:
        TypeError: ``img`` / ``aud`` not floating-point tensors of one dtype.
        ValueError: shapes other than ``[B, C, H, W]`` / ``[B, C]``, different ``B``, ``C`` or devices.

    Example:
        >>> img = torch.zeros(2, 3, 4, 5); img[:, 0] = 1.0
        >>> aud = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> response_map(img, aud)[:, 0, 0]
        tensor([1., 0.])
    """
    check_pair(img, aud, same_batch=True)
    return _response_map(img, aud)


def _response_map(img: Tensor, aud: Tensor) -> Tensor:
    return torch.einsum("bchw,bc->bhw", img, aud)


def pairwise_response_maps(img: Tensor, aud: Tensor) -> Tensor:
    r"""All response maps :math:`\alpha_{ij}` of every image with every audio (paper section 2.1).

    Args:
        img: ``[B, C, H, W]`` visual features.
        aud: ``[B', C]`` audio embeddings.

    Returns:
        ``[B, B', H, W]`` in the input dtype, ``out[i, j] = alpha_ij``.

    Raises:
        TypeError: ``img`` / ``aud`` not floating-point tensors of one dtype.
        ValueError: shapes other than ``[B, C, H, W]`` / ``[B', C]``, different ``C`` or devices.

    Example:
        >>> pairwise_response_maps(torch.ones(2, 3, 4, 5), torch.ones(6, 3)).shape
        torch.Size([2, 6, 4, 5])
    """
    check_pair(img, aud)
    return _kernels.pairwise(img, aud)


def thresholded_similarity(
    img: Tensor,
    aud: Tensor,
    epsilon: float = 0.65,
    beta: float = 0.03,
    backend: str = "auto",
    recompute: bool = False,
) -> Tensor:
    r"""Thresholded similarity, paper eq. 1 (section 2.1; LVS-style).

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
        epsilon: threshold (paper: 0.65; meaningful on cosine responses in [-1, 1]).
        beta: sigmoid temperature, > 0 (paper: 0.03).
        backend: ``"auto"`` (compiled on CUDA, eager otherwise), ``"eager"`` or ``"compiled"``
            (``torch.compile``; falls back to eager with one warning if compilation is unavailable).
        recompute: recompute the response maps in backward instead of keeping them from the
            forward: saves ``B * B' * H * W`` elements of memory for one more matrix product
            (done anyway past the 512 MiB bound above).

    Returns:
        ``[B, B']`` similarities in float32 (float64 for float64 input).

    Raises:
        TypeError: bad tensors (see :func:`pairwise_response_maps`), ``recompute`` not a bool,
            ``epsilon`` / ``beta`` not real numbers.
        ValueError: bad shapes, ``epsilon`` not finite, ``beta <= 0``, unknown ``backend``.

    Example:
        >>> img = torch.nn.functional.normalize(torch.ones(2, 3, 4, 4), dim=1)
        >>> aud = torch.nn.functional.normalize(torch.ones(2, 3), dim=1)
        >>> sim = thresholded_similarity(img, aud, backend="eager")
        >>> sim.shape, sim.dtype
        (torch.Size([2, 2]), torch.float32)
        >>> torch.allclose(sim, torch.ones(2, 2))          # every response is 1, so is their mean
        True
    """
    check_pair(img, aud)
    epsilon = check_finite("epsilon", epsilon)
    beta = check_positive("beta", beta)
    check_bool("recompute", recompute)
    check_choice("backend", backend, BACKENDS)
    return _thresholded_similarity(img, aud, epsilon, beta, backend, recompute)


def _thresholded_similarity(
    img: Tensor, aud: Tensor, epsilon: float, beta: float, backend: str = "auto", recompute: bool = False
) -> Tensor:
    return _compiled.thresholded(img, aud, epsilon=epsilon, beta=beta, recompute=recompute, backend=backend)


def max_similarity(img: Tensor, aud: Tensor, backend: str = "auto") -> Tensor:
    r"""Max-MIL similarity (EZ-VSL, ``model.py`` ``EZVSL.max_xmil_loss`` @ stoneMo/EZ-VSL 95ff5bf).

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

    Raises:
        TypeError: bad tensors (see :func:`pairwise_response_maps`).
        ValueError: bad shapes, unknown ``backend``.

    Example:
        >>> img = torch.zeros(1, 2, 1, 3); img[0, 0] = torch.tensor([[0.1, 0.9, 0.3]])
        >>> max_similarity(img, torch.tensor([[1.0, 0.0]]), backend="eager")
        tensor([[0.9000]])
    """
    check_pair(img, aud)
    check_choice("backend", backend, BACKENDS)
    return _max_similarity(img, aud, backend)


def _max_similarity(img: Tensor, aud: Tensor, backend: str = "auto") -> Tensor:
    return _compiled.maximum(img, aud, backend=backend)


def _similarity_loss(
    img: Tensor,
    aud: Tensor,
    *,
    similarity: str,
    epsilon: float,
    beta: float,
    margin: float,
    tau: float | Tensor,
    symmetric: bool,
    reduction: str,
    backend: str = "auto",
) -> Tensor:
    """``margin_nce(S(img, aud), margin, tau, symmetric, reduction=reduction)`` as one kernel; unchecked.

    ``S`` is :func:`max_similarity` for ``similarity="max"``, else :func:`thresholded_similarity`.
    Under ``backend="compiled"`` the similarity, its threshold and reductions and the loss are one
    compiled graph, forward and backward (a learnable ``tau`` runs eager, see
    :mod:`marginnce_loss._compiled`). The caller has checked every argument (``check_pair`` with
    ``same_batch``, ``check_has_negatives``, the scalars).
    """
    if similarity == "max":
        return _compiled.max_loss(
            img, aud, margin=margin, tau=tau, symmetric=symmetric, reduction=reduction, backend=backend
        )
    return _compiled.thresholded_loss(
        img, aud, epsilon=epsilon, beta=beta, recompute=False, margin=margin, tau=tau, symmetric=symmetric,
        reduction=reduction, backend=backend,
    )


def _max_xmil_loss(
    img: Tensor, aud: Tensor, *, tau: float, margin: float, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """EZ-VSL's ``(margin_nce(max_similarity(img, aud), margin, tau, symmetric=True), alpha / tau)``
    from one matrix product (compiled as one graph under ``backend="compiled"``); checked inputs, ``B >= 2``."""
    return _compiled.max_xmil(img, aud, tau=tau, margin=margin, backend=backend)


def background_similarity(img: Tensor, aud: Tensor, epsilon: float = 0.4, beta: float = 0.03) -> Tensor:
    r"""LVS background ("trimap") similarity of each image with its own audio, the hard negative.

    LVS, ``model.py`` ``AVENet.forward`` @ hche11/Localizing-Visual-Sounds-the-Hard-Way 8fe8cbb:

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

    Raises:
        TypeError: bad tensors (see :func:`response_map`), ``epsilon`` / ``beta`` not real numbers.
        ValueError: bad shapes, ``epsilon`` not finite, ``beta <= 0``.

    Example:
        >>> img = torch.nn.functional.normalize(torch.ones(3, 2, 4, 4), dim=1)
        >>> aud = torch.nn.functional.normalize(torch.ones(3, 2), dim=1)
        >>> torch.allclose(background_similarity(img, aud), torch.ones(3))   # constant maps: their value
        True
    """
    check_pair(img, aud, same_batch=True)
    epsilon = check_finite("epsilon", epsilon)
    beta = check_positive("beta", beta)
    return _background_similarity(img, aud, epsilon, beta)


def _background_similarity(img: Tensor, aud: Tensor, epsilon: float, beta: float) -> Tensor:
    return _kernels.sigmoid_weighted_mean(_response_map(img, aud), epsilon, beta, sign=-1.0)


def margin_nce(
    sim: Tensor,
    margin: float = -0.2,
    tau: float | Tensor = 0.07,
    symmetric: bool = False,
    extra_negatives: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""marginNCE, paper eq. 3 (section 2.2): InfoNCE (eq. 2) with a margin ``m`` on the positive logit.

    .. math::
        \ell_i = -\log \frac{e^{(S_{ii}-m)/\tau}}
            {e^{(S_{ii}-m)/\tau} + \sum_{j\neq i} e^{S_{ij}/\tau} + \sum_k e^{N_{ik}/\tau}}

    ``m < 0`` loosens the decision boundary (paper: -0.2), ``m = 0`` is plain InfoNCE
    (``F.cross_entropy(sim / tau, arange(B))``), ``m > 0`` is the usual strict margin.
    With ``symmetric=True`` the column direction (audio ``j`` as anchor against every image,
    margin on the same diagonal) is added per anchor index, as EZ-VSL sums the two directions:
    ``reduction="mean"`` gives ``mean_i l_i^row + mean_j l_j^col``. ``extra_negatives`` (``N``)
    join the row (image-anchor) direction only. The log-sum-exp runs in float32 or wider whatever
    the input dtype, so a half-precision ``sim`` gives the loss of that ``sim`` to float32 accuracy
    (the rounding of ``sim`` itself is the caller's: see the precision table in ``docs/the-loss.md``).

    A learnable temperature (CLIP-style): ``tau`` may be a 0-d tensor that requires grad, e.g.
    ``tau = 1 / logit_scale.exp()`` with ``logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))``
    computed afresh each step. The scale applies to the margin-shifted similarities (eq. 3): the loss
    and the gradient reaching ``tau`` are those of ``F.cross_entropy((sim - m I) / tau, arange(B))``
    (plain autograd ops, exact).

    ``sim`` should hold similarities in ``[-1, 1]`` (cosines), not logits: the loss divides by
    ``tau`` itself (for logits use :func:`marginnce_loss.adapters.margin_cross_entropy`);
    :class:`~marginnce_loss.MarginNCE` warns on the first call when it is not so.

    Args:
        sim: ``[B, B]`` similarities, row ``i`` = image ``i``, column ``j`` = audio ``j``.
        margin: ``m``, finite (a float, numpy scalar or 0-d array, 0-d tensor).
        tau: temperature, finite and > 0: a float (numpy scalar, 0-d tensor), or a 0-d floating tensor
            that requires grad (learnable; its value is checked with one host sync).
        symmetric: add the column direction.
        extra_negatives: optional ``[B, K]`` further negative similarities per row
            (e.g. LVS's background similarity, ``background_similarity(...).unsqueeze(1)``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]`` per-anchor losses, the two
            directions summed per index when symmetric).

    Returns:
        Scalar (or ``[B]`` for ``reduction="none"``) in float32, float64 for float64 input.

    Raises:
        TypeError: ``sim`` / ``extra_negatives`` not floating-point tensors; ``margin`` / ``tau``
            not real numbers; ``symmetric`` not a bool.
        ValueError: ``sim`` not ``[B, B]``; ``B = 1`` without ``extra_negatives``;
            ``extra_negatives`` not ``[B, K]`` on ``sim``'s device; ``margin`` / ``tau`` not
            finite; ``tau <= 0``; unknown ``reduction``.

    Example:
        >>> sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        >>> plain = torch.nn.functional.cross_entropy(sim / 0.07, torch.arange(2))
        >>> torch.allclose(margin_nce(sim, margin=0.0, tau=0.07), plain)
        True
        >>> bool(margin_nce(sim, margin=-0.2) < margin_nce(sim, margin=0.0))   # looser boundary, lower loss
        True
    """
    check_sim(sim, extra_negatives)
    margin = check_finite("margin", margin)
    tau = check_temperature("tau", tau)
    check_bool("symmetric", symmetric)
    check_choice("reduction", reduction, REDUCTIONS)
    return _margin_nce(sim, margin, tau, symmetric, extra_negatives, reduction)


#: eq. 3 without checks (``_kernels.margin_nce_core``), for callers that have checked their arguments.
_margin_nce = _kernels.margin_nce_core
