"""``nn.Module`` wrappers over :mod:`marginnce_loss.functional` (no formula lives here).

Arguments are checked once, at construction (and when :attr:`margin` / :attr:`tau` are assigned,
e.g. by a margin schedule); ``forward`` checks its tensors once and calls the unchecked steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F
from ._validation import (
    REDUCTIONS,
    check_bool,
    check_choice,
    check_finite,
    check_has_negatives,
    check_pair,
    check_positive,
    check_sim,
    check_temperature,
    warn_out_of_range,
    warn_unnormalized,
)
from .distributed import _gathered_loss, world_size

__all__ = ["MarginNCE", "LocalizationMarginNCE", "SIMILARITIES"]

SIMILARITIES = ("thresholded", "max")


class _MarginNCEBase(nn.Module):
    """The eq. 3 settings both modules share, validated on construction and on assignment."""

    _margin: float
    _tau: float | Tensor

    def __init__(self, margin: float, tau: float | Tensor, symmetric: bool, reduction: str, check_inputs: bool) -> None:
        super().__init__()
        self.margin = margin  # the setters check and convert
        self.tau = tau
        self.symmetric = check_bool("symmetric", symmetric)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.check_inputs = check_bool("check_inputs", check_inputs)
        self._inputs_checked = False

    def __setattr__(self, name: str, value: Any) -> None:
        # margin and tau go through their checked properties, also for an nn.Parameter tau (which
        # nn.Module would otherwise register as this loss's parameter, bypassing the check)
        if name in ("margin", "tau"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def margin(self) -> float:
        """``m`` of eq. 3; assignable (a float, numpy scalar, 0-d array or tensor; checked), e.g. a schedule."""
        return self._margin

    @margin.setter
    def margin(self, value: object) -> None:
        self._margin = check_finite("margin", value)

    @property
    def tau(self) -> float | Tensor:
        """The temperature of eq. 3 (> 0); assignable, checked. A float, or the learnable 0-d tensor given
        (held by reference, not registered as this loss's parameter: optimise it where it was created)."""
        return self._tau

    @tau.setter
    def tau(self, value: object) -> None:
        self.__dict__["_tau"] = check_temperature("tau", value)

    def _first_call(self) -> bool:
        """Whether the input guard should run now (``check_inputs`` and not yet run); marks it run."""
        if not self.check_inputs or self._inputs_checked:
            return False
        if torch.compiler.is_compiling():  # a host sync inside a trace: leave it to the first eager call
            return False
        self._inputs_checked = True
        return True


class MarginNCE(_MarginNCEBase):
    r"""marginNCE (paper eq. 3, section 2.2) on a precomputed ``[B, B]`` similarity matrix.

    .. math::
        \ell_i = -\log \frac{e^{(S_{ii}-m)/\tau}}
            {e^{(S_{ii}-m)/\tau} + \sum_{j\neq i} e^{S_{ij}/\tau} + \sum_k e^{N_{ik}/\tau}}

    A one-line swap for the usual contrastive loss site::

        loss = F.cross_entropy(sim / tau, torch.arange(B))        # before
        loss = MarginNCE(margin=-0.2, tau=tau)(sim)                 # after (margin=0.0: identical)

    ``sim`` holds similarities in ``[-1, 1]`` (cosines of L2-normalised features), not logits:
    the loss divides by ``tau`` itself. With ``check_inputs=True`` (default) the first call checks
    this (one reduction, one host sync) and warns once if ``|sim|`` exceeds 1 (e.g. logits already
    divided by ``tau``, or dot products of unnormalised features); later calls do not check.

    Learnable temperature (CLIP-style): ``tau`` may be an ``nn.Parameter`` 0-d tensor, used as it is
    every call. The module holds it without registering it (``loss_fn.parameters()`` is empty): give the
    parameter to the optimiser and save it with the model that owns it. A temperature derived from a
    parameter (``1 / logit_scale.exp()``) is a new tensor each step, so assign it before each call:
    ``loss_fn.tau = 1 / logit_scale.exp()`` (checked, one host sync). The loss and the gradient reaching
    ``tau`` are those of ``F.cross_entropy((S - m I) / tau, arange(B))``; the compiled backend is not used then (eager,
    with one ``RuntimeWarning`` per call site when ``"compiled"`` would have run).

    Args:
        margin: ``m``; negative loosens the positive's decision boundary (paper: -0.2). A float, a
            numpy scalar or a 0-d tensor (read once; assign :attr:`margin` again to schedule it).
        tau: temperature (> 0), or a learnable 0-d tensor that requires grad (see below).
        symmetric: also add the column (audio-anchor) direction, EZ-VSL style.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        check_inputs: check on the first call that the similarities lie in ``[-1, 1]`` (warns).

    Shape:
        ``forward(sim [B, B], extra_negatives [B, K] | None)`` -> scalar, or ``[B]`` with ``"none"``.

    Raises:
        TypeError: ``margin`` / ``tau`` not real numbers, ``symmetric`` / ``check_inputs`` not bools.
        ValueError: ``margin`` / ``tau`` not finite, ``tau <= 0``, unknown ``reduction``.

    Example:
        >>> import torch
        >>> sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.0, 0.3, 0.7]])
        >>> before = torch.nn.functional.cross_entropy(sim / 0.07, torch.arange(3))
        >>> torch.allclose(MarginNCE(margin=0.0, tau=0.07)(sim), before)
        True
        >>> loss = MarginNCE(margin=-0.2, tau=0.07)
        >>> loss.margin = torch.tensor(-0.1)     # a margin schedule: assigned values are checked
        >>> loss
        MarginNCE(margin=-0.10000000149011612, tau=0.07, symmetric=False, reduction='mean')
    """

    def __init__(
        self,
        margin: float = -0.2,
        tau: float | Tensor = 0.07,
        symmetric: bool = False,
        reduction: str = "mean",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(margin, tau, symmetric, reduction, check_inputs)

    def forward(self, sim: Tensor, extra_negatives: Tensor | None = None) -> Tensor:
        """marginNCE of ``sim`` (see the class docstring).

        Args:
            sim: ``[B, B]`` similarities in ``[-1, 1]``, row ``i`` = image ``i``, column ``j`` = audio ``j``.
            extra_negatives: optional ``[B, K]`` further negative similarities of each row.

        Returns:
            Scalar, or ``[B]`` with ``reduction="none"``; float32 (float64 for float64 input).

        Raises:
            TypeError: ``sim`` / ``extra_negatives`` not floating-point tensors.
            ValueError: ``sim`` not square, ``B = 1`` without ``extra_negatives``, ``extra_negatives``
                not ``[B, K]`` on ``sim``'s device.

        Warns:
            UserWarning: on the first call with ``check_inputs``, when an entry of ``sim`` (or of
                ``extra_negatives``) is outside [-1, 1].
        """
        check_sim(sim, extra_negatives)
        if self._first_call():
            warn_out_of_range(sim, extra_negatives)
        return F._margin_nce(sim, self.margin, self.tau, self.symmetric, extra_negatives, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, tau={self.tau}, symmetric={self.symmetric}, reduction={self.reduction!r}"


class LocalizationMarginNCE(_MarginNCEBase):
    r"""marginNCE computed from features: a similarity kernel (paper eq. 1, or max-MIL) + eq. 3.

    ``similarity="thresholded"`` uses paper eq. 1 (section 2.1;
    :func:`~marginnce_loss.functional.thresholded_similarity` with ``epsilon``, ``beta``);
    ``similarity="max"`` uses EZ-VSL's max-MIL similarity
    (:func:`~marginnce_loss.functional.max_similarity`; ``epsilon`` and ``beta`` unused).
    Paper settings: the reference model is ``LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07)``;
    EZ-VSL is ``LocalizationMarginNCE("max", tau=0.03, symmetric=True)``.

    The features must be L2-normalised over ``C``: eq. 1's ``epsilon = 0.65`` and the temperature
    are calibrated for cosine responses in ``[-1, 1]``, and mean nothing on unnormalised features
    (or features normalised over another dimension). With ``check_inputs=True`` (default) the
    first call checks every norm over ``C`` (one reduction, one host sync) and warns once when one
    is not 1 (within 1e-2; zero vectors pass); later calls do not check.

    ``gather_distributed=True`` with an initialised process group of ``W > 1`` ranks scores the local
    anchors against every rank's features (gathered with gradients) and scales the result so that
    DDP's gradient averaging gives exactly the single-process gradient of the global-batch loss; see
    :mod:`marginnce_loss.distributed`. With ``W = 1`` or no process group it is the same as ``False``.

    Args:
        similarity: ``"thresholded"`` (eq. 1) or ``"max"`` (max-MIL).
        margin: ``m`` of eq. 3 (paper: -0.2); a float, numpy scalar or 0-d array, 0-d tensor, assignable.
        tau: temperature of eq. 3, > 0 (paper: 0.07; EZ-VSL: 0.03), or a learnable 0-d tensor
            (CLIP-style, as in :class:`MarginNCE`; then the eager kernels run).
        epsilon: eq. 1's threshold (paper: 0.65); unused by ``"max"``.
        beta: eq. 1's sigmoid temperature, > 0 (paper: 0.03); unused by ``"max"``.
        symmetric: also add the column (audio-anchor) direction, EZ-VSL style.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        gather_distributed: negatives from every rank of the process group (see above).
        backend: ``"auto"`` (compiled on CUDA, eager otherwise), ``"eager"`` or ``"compiled"``
            (similarity, threshold, reductions and loss as one ``torch.compile`` graph); see
            :func:`~marginnce_loss.functional.thresholded_similarity`.
        check_inputs: check on the first call that the features are unit-length over ``C`` (warns).

    Shape:
        ``forward(img [B, C, H, W], aud [B, C])`` (both L2-normalised over ``C``) -> scalar,
        or ``[B]`` with ``reduction="none"``.

    Raises:
        TypeError: a scalar argument of the wrong kind (e.g. ``symmetric=1``).
        ValueError: unknown ``similarity`` / ``reduction`` / ``backend``, ``margin`` / ``epsilon``
            not finite, ``tau`` / ``beta`` not > 0.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> img = torch.nn.functional.normalize(torch.randn(8, 16, 7, 7, generator=g), dim=1)
        >>> aud = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
        >>> loss = LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07)
        >>> loss(img, aud).shape
        torch.Size([])
        >>> LocalizationMarginNCE("max", tau=0.03, symmetric=True, reduction="none")(img, aud).shape
        torch.Size([8])
    """

    def __init__(
        self,
        similarity: str = "thresholded",
        margin: float = -0.2,
        tau: float | Tensor = 0.07,
        epsilon: float = 0.65,
        beta: float = 0.03,
        symmetric: bool = False,
        reduction: str = "mean",
        gather_distributed: bool = False,
        backend: str = "auto",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(margin, tau, symmetric, reduction, check_inputs)
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.backend = check_choice("backend", backend, F.BACKENDS)
        self.gather_distributed = check_bool("gather_distributed", gather_distributed)
        self.epsilon = check_finite("epsilon", epsilon)
        self.beta = check_positive("beta", beta)

    def similarity_matrix(self, img: Tensor, aud: Tensor) -> Tensor:
        """The ``[B, B']`` similarity this loss trains on (float32; float64 for float64 input).

        Args:
            img: ``[B, C, H, W]`` visual features, L2-normalised over ``C``.
            aud: ``[B', C]`` audio embeddings, L2-normalised over ``C``.

        Raises:
            TypeError, ValueError: bad tensors, as :func:`~marginnce_loss.functional.max_similarity`.
        """
        check_pair(img, aud)
        return self._similarity(img, aud)

    def _similarity(self, img: Tensor, aud: Tensor) -> Tensor:
        if self.similarity == "max":
            return F._max_similarity(img, aud, self.backend)
        return F._thresholded_similarity(img, aud, self.epsilon, self.beta, self.backend)

    def forward(self, img: Tensor, aud: Tensor) -> Tensor:
        """marginNCE of the paired features (see the class docstring).

        Args:
            img: ``[B, C, H, W]`` visual features, L2-normalised over ``C`` (NCHW or channels-last
                memory layout); float16, bfloat16, float32 or float64.
            aud: ``[B, C]`` audio embeddings, L2-normalised over ``C``, same dtype and device.

        Returns:
            Scalar, or ``[B]`` with ``reduction="none"``; float32 (float64 for float64 input).
            With ``gather_distributed`` over ``W > 1`` ranks: this rank's share (see
            :mod:`marginnce_loss.distributed`).

        Raises:
            TypeError: not floating-point tensors of one dtype.
            ValueError: shapes other than ``[B, C, H, W]`` / ``[B, C]`` (a ``[B, H, W, C]`` ``img``
                is named as such), different ``B``, ``C`` or devices, ``B < 2`` on one process.

        Warns:
            UserWarning: on the first call with ``check_inputs``, when a feature norm over ``C`` is not 1.
        """
        check_pair(img, aud, same_batch=True)
        distributed = self.gather_distributed and world_size() > 1
        if not distributed:
            check_has_negatives(img)
        if self._first_call():
            warn_unnormalized(img, aud)
        if distributed:
            return _gathered_loss(
                img, aud, self._similarity, self.margin, self.tau, self.symmetric, self.reduction, None
            )
        return F._similarity_loss(
            img, aud, similarity=self.similarity, epsilon=self.epsilon, beta=self.beta, margin=self.margin,
            tau=self.tau, symmetric=self.symmetric, reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"similarity={self.similarity!r}, margin={self.margin}, tau={self.tau}, epsilon={self.epsilon}, "
            f"beta={self.beta}, symmetric={self.symmetric}, reduction={self.reduction!r}, "
            f"gather_distributed={self.gather_distributed}, backend={self.backend!r}"
        )
