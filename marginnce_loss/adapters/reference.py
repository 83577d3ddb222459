"""The paper's reference model ("Ours"): EZ-VSL's architecture trained with eq. 1 + eq. 3,
image-anchor direction only, ``tau = 0.07``, ``epsilon = 0.65``, ``beta = 0.03``, ``m = -0.2``.
There is no public upstream code; this is the loss as the paper states it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import functional as F
from .._validation import check_choice, check_finite, check_has_negatives, check_pair, check_positive

__all__ = ["loss"]


def loss(
    img: Tensor,
    aud: Tensor,
    margin: float = -0.2,
    epsilon: float = 0.65,
    beta: float = 0.03,
    tau: float = 0.07,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    r"""The reference model's training loss and its localisation maps.

    .. math::
        L = \mathrm{marginNCE}(S, m, \tau), \qquad S = \text{eq. 1}(\alpha; \epsilon, \beta)

    Args:
        img: ``[B, C, H, W]`` L2-normalised visual features.
        aud: ``[B, C]`` L2-normalised audio embeddings.
        margin: ``m`` of eq. 3 (the paper: -0.2).
        epsilon: eq. 1's threshold (0.65).
        beta: eq. 1's sigmoid temperature (0.03).
        tau: eq. 3's temperature (0.07).
        backend: ``"auto"`` | ``"eager"`` | ``"compiled"`` (similarity and loss as one compiled
            graph; see :func:`~marginnce_loss.functional.thresholded_similarity`).

    Returns:
        ``(loss, response_maps)``: the scalar loss and ``alpha_ii`` of shape ``[B, H, W]``
        (detached: the maps are for localisation, not for the gradient).

    Raises:
        TypeError: ``img`` / ``aud`` not floating-point tensors of one dtype; a scalar not a real number.
        ValueError: shapes other than ``[B, C, H, W]`` / ``[B, C]`` with one ``B`` and ``C``,
            ``B < 2``, different devices, ``margin`` / ``epsilon`` not finite, ``beta`` / ``tau``
            ``<= 0``, unknown ``backend``.

    Example:
        >>> import torch
        >>> img = torch.nn.functional.normalize(torch.randn(4, 8, 7, 7), dim=1)
        >>> aud = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> value, maps = loss(img, aud)
        >>> value.shape, maps.shape
        (torch.Size([]), torch.Size([4, 7, 7]))
    """
    check_pair(img, aud, same_batch=True)
    check_has_negatives(img)
    margin = check_finite("margin", margin)
    epsilon = check_finite("epsilon", epsilon)
    beta = check_positive("beta", beta)
    tau = check_positive("tau", tau)
    check_choice("backend", backend, F.BACKENDS)
    value = F._similarity_loss(
        img, aud, similarity="thresholded", epsilon=epsilon, beta=beta, margin=margin, tau=tau, symmetric=False,
        reduction="mean", backend=backend,
    )
    with torch.no_grad():
        maps = F._response_map(img, aud)
    return value, maps
