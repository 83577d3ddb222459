"""EZ-VSL's loss site, ``EZVSL.max_xmil_loss(img, aud)`` in ``model.py`` (stoneMo/EZ-VSL @ 95ff5bf).

Upstream::

    Slogits = einsum('nchw,mc->nmhw', img, aud) / tau          # [B, B, H, W]
    logits = Slogits.flatten(-2, -1).max(dim=-1)[0]             # [B, B]
    loss = CE(logits, arange(B)) + CE(logits.T, arange(B))

The patch replaces the body with ``return max_xmil_loss(img, aud, self.tau, self.margin)``.
"""

from __future__ import annotations

from torch import Tensor

from .. import _kernels
from .. import functional as F
from .._validation import check_choice, check_finite, check_pair, check_positive
from ._common import single_clip_loss

__all__ = ["max_xmil_loss"]


def max_xmil_loss(
    img: Tensor, aud: Tensor, tau: float = 0.03, margin: float = 0.0, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    r"""EZ-VSL's symmetric max-MIL loss with a margin on the positives.

    .. math::
        S_{ij} = \max_{hw}\alpha_{ij}, \qquad
        L = \mathrm{marginNCE}_{rows}(S) + \mathrm{marginNCE}_{cols}(S)

    i.e. ``margin_nce(max_similarity(img, aud), margin, tau, symmetric=True)``; at ``margin=0`` it is
    upstream's ``CE(logits) + CE(logits.T)``, and a margin subtracts ``m / tau`` from the diagonal
    logits in both directions. ``B = 1`` (upstream's evaluation batch) gives 0, as upstream's
    cross-entropy over one logit does.

    Args:
        img: ``[B, C, H, W]`` L2-normalised visual features.
        aud: ``[B, C]`` L2-normalised audio embeddings.
        tau: temperature (EZ-VSL: 0.03).
        margin: ``m`` (0 reproduces upstream).
        backend: ``"auto"`` | ``"eager"`` | ``"compiled"`` (see
            :func:`~marginnce_loss.functional.max_similarity`); the loss's gradient takes the sparse
            arg-max backward, ``Slogits`` shares the forward's one matrix product.

    Returns:
        ``(loss, Slogits)``: the scalar loss (float32, float64 for float64 input) and
        ``Slogits = alpha / tau`` of shape ``[B, B, H, W]`` as upstream returns it
        (upstream's ``forward`` takes ``Slogits[i, i]`` as the localisation map).

    Raises:
        TypeError: ``img`` / ``aud`` not floating-point tensors of one dtype; ``tau`` / ``margin``
            not real numbers.
        ValueError: shapes other than ``[B, C, H, W]`` / ``[B, C]`` with one ``B`` and ``C``,
            different devices, ``tau <= 0``, ``margin`` not finite, unknown ``backend``.

    Example:
        >>> import torch
        >>> img = torch.nn.functional.normalize(torch.randn(4, 8, 7, 7), dim=1)
        >>> aud = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> loss, slogits = max_xmil_loss(img, aud, tau=0.03, margin=-0.2)
        >>> loss.shape, slogits.shape
        (torch.Size([]), torch.Size([4, 4, 7, 7]))
    """
    check_pair(img, aud, same_batch=True)
    tau = check_positive("tau", tau)
    margin = check_finite("margin", margin)
    check_choice("backend", backend, F.BACKENDS)
    if img.shape[0] > 1:
        # max(alpha) / tau inside margin_nce is bitwise upstream's max(alpha / tau): same element, same division
        return F._max_xmil_loss(img, aud, tau=tau, margin=margin, backend=backend)
    alpha = _kernels.pairwise(img, aud)
    return single_clip_loss(alpha.flatten(-2).max(dim=-1).values), alpha / tau
