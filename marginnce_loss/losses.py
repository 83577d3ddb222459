"""``nn.Module`` wrappers over :mod:`marginnce_loss.functional` (no formula lives here)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from . import functional as F
from .distributed import gathered_localization_margin_nce, world_size
from ._validation import REDUCTIONS, check_choice, check_finite, check_pair, check_positive, check_same_batch

__all__ = ["MarginNCE", "LocalizationMarginNCE", "SIMILARITIES"]

SIMILARITIES = ("thresholded", "max")


class MarginNCE(nn.Module):
    r"""marginNCE (paper eq. 3) on a precomputed ``[B, B]`` similarity matrix.

    .. math::
        \ell_i = -\log \frac{e^{(S_{ii}-m)/\tau}}
            {e^{(S_{ii}-m)/\tau} + \sum_{j\neq i} e^{S_{ij}/\tau} + \sum_k e^{N_{ik}/\tau}}

    A one-line swap for the usual contrastive loss site::

        loss = F.cross_entropy(sim / tau, torch.arange(B))        # before
        loss = MarginNCE(margin=-0.2, tau=tau)(sim)                 # after (margin=0.0: identical)

    Args:
        margin: ``m``; negative loosens the positive's decision boundary (paper: -0.2).
        tau: temperature (> 0).
        symmetric: also add the column (audio-anchor) direction, EZ-VSL style.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        ``forward(sim [B, B], extra_negatives [B, K] | None)`` -> scalar, or ``[B]`` with ``"none"``.
    """

    def __init__(self, margin: float = -0.2, tau: float = 0.07, symmetric: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = check_finite("margin", margin)
        self.tau = check_positive("tau", tau)
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__} {symmetric!r}")
        self.symmetric = symmetric
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def forward(self, sim: Tensor, extra_negatives: Optional[Tensor] = None) -> Tensor:
        return F.margin_nce(sim, self.margin, self.tau, self.symmetric, extra_negatives, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, tau={self.tau}, symmetric={self.symmetric}, reduction={self.reduction!r}"


class LocalizationMarginNCE(nn.Module):
    r"""marginNCE computed from features: similarity kernel + eq. 3.

    ``similarity="thresholded"`` uses paper eq. 1
    (:func:`~marginnce_loss.functional.thresholded_similarity` with ``epsilon``, ``beta``);
    ``similarity="max"`` uses EZ-VSL's max-MIL similarity
    (:func:`~marginnce_loss.functional.max_similarity`; ``epsilon`` and ``beta`` unused).
    Paper settings: the reference model is ``LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07)``;
    EZ-VSL is ``LocalizationMarginNCE("max", tau=0.03, symmetric=True)``.

    ``gather_distributed=True`` with an initialised process group of ``W > 1`` ranks scores the local
    anchors against every rank's features (gathered with gradients) and scales the result so that
    DDP's gradient averaging gives exactly the single-process gradient of the global-batch loss; see
    :mod:`marginnce_loss.distributed`. With ``W = 1`` or no process group it is the same as ``False``.

    ``backend``: ``"auto"`` (compiled on CUDA, eager otherwise), ``"eager"`` or ``"compiled"``
    (similarity, threshold, reductions and loss as one ``torch.compile`` graph); see
    :func:`~marginnce_loss.functional.thresholded_similarity`.

    Shape:
        ``forward(img [B, C, H, W], aud [B, C])`` (both L2-normalised over ``C``) -> scalar,
        or ``[B]`` with ``reduction="none"``.
    """

    def __init__(
        self,
        similarity: str = "thresholded",
        margin: float = -0.2,
        tau: float = 0.07,
        epsilon: float = 0.65,
        beta: float = 0.03,
        symmetric: bool = False,
        reduction: str = "mean",
        gather_distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.backend = check_choice("backend", backend, F.BACKENDS)
        if not isinstance(gather_distributed, bool):
            raise TypeError(
                f"gather_distributed: expected a bool, got {type(gather_distributed).__name__} {gather_distributed!r}"
            )
        self.gather_distributed = gather_distributed
        self.epsilon = check_finite("epsilon", epsilon)
        self.beta = check_positive("beta", beta)
        self.criterion = MarginNCE(margin, tau, symmetric, reduction)

    def similarity_matrix(self, img: Tensor, aud: Tensor) -> Tensor:
        """The ``[B, B]`` similarity this loss trains on."""
        if self.similarity == "max":
            return F.max_similarity(img, aud, backend=self.backend)
        return F.thresholded_similarity(img, aud, self.epsilon, self.beta, backend=self.backend)

    def forward(self, img: Tensor, aud: Tensor) -> Tensor:
        check_pair(img, aud)
        check_same_batch(img, aud)
        if self.gather_distributed and world_size() > 1:
            c = self.criterion
            return gathered_localization_margin_nce(
                img, aud, self.similarity_matrix, c.margin, c.tau, c.symmetric, c.reduction
            )
        c = self.criterion
        return F._similarity_loss(
            img, aud, self.similarity, self.epsilon, self.beta, c.margin, c.tau, c.symmetric, c.reduction, self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"similarity={self.similarity!r}, epsilon={self.epsilon}, beta={self.beta}, "
            f"gather_distributed={self.gather_distributed}, backend={self.backend!r}"
        )
