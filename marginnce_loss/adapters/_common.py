"""What the adapters share: upstream's cross-entropy on logits, with a margin."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import functional as F
from .._numeric import opmath_dtype
from .._validation import check_bool, check_features, check_finite, check_temperature

__all__ = ["margin_cross_entropy", "single_clip_loss"]


def single_clip_loss(sim: Tensor) -> Tensor:
    """Upstream evaluates one clip at a time (``batch_size=1``): cross-entropy over a single logit
    is exactly 0. :func:`~marginnce_loss.functional.margin_nce` refuses ``B = 1`` (no negative: the
    loss carries no signal), so the adapters return this zero, still attached to the graph."""
    return sim.to(opmath_dtype(sim.dtype)).sum() * 0.0


def margin_cross_entropy(
    logits: Tensor, margin: float = 0.0, tau: float | Tensor = 0.07, symmetric: bool = False
) -> Tensor:
    r"""``F.cross_entropy(logits, arange(B))`` (``+`` the transposed term when ``symmetric``) with every
    positive logit shifted by ``-m / tau``, for upstream sites that hold logits ``S / tau`` rather than
    similarities (SLAVC's log-probabilities, say):
    ``margin_nce(tau * logits, margin, tau, symmetric)``; ``B = 1`` gives 0 as cross-entropy does.

    What it expects: ``logits`` already divided by ``tau`` (this function does not divide them again);
    ``tau`` is used only for the shift ``-m / tau`` of the positives.

    Learnable temperature: with a float ``tau`` the shift ``-m / tau`` is a constant, so when the
    caller's temperature is learnable (its ``logits = S / tau`` carry a gradient to ``tau``) and
    ``m != 0`` the gradient reaching ``tau`` misses the shift's part (silently: nothing here can tell).
    Pass the *same tensor* the logits were divided by (a 0-d tensor that requires grad, e.g.
    ``tau = 1 / logit_scale.exp()`` for a CLIP-style ``logit_scale`` parameter, ``logits = S * logit_scale.exp()``):
    the loss and the gradient reaching ``tau`` are then those of
    ``F.cross_entropy((S - m I) / tau, arange(B))``.

    Args:
        logits: ``[B, B]`` logits on the ``S / tau`` scale, positives on the diagonal.
        margin: ``m``.
        tau: the temperature the logits were divided by: a float, or that very 0-d tensor when it is
            learnable (see above).
        symmetric: add the column direction.

    Returns:
        The scalar loss, float32 (float64 for float64 input).

    Raises:
        TypeError: ``logits`` not a floating-point tensor, ``margin`` / ``tau`` not real numbers,
            ``symmetric`` not a bool.
        ValueError: ``logits`` not square ``[B, B]``, ``margin`` not finite, ``tau <= 0``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[9.0, 1.0], [2.0, 8.0]])
        >>> plain = torch.nn.functional.cross_entropy(logits, torch.arange(2))
        >>> torch.allclose(margin_cross_entropy(logits, margin=0.0, tau=0.07), plain)
        True
    """
    check_features("logits", logits, 2, "[B, B]")
    margin = check_finite("margin", margin)
    tau = check_temperature("tau", tau)
    check_bool("symmetric", symmetric)
    if logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits: expected a square [B, B] matrix, got shape {tuple(logits.shape)}")
    if logits.shape == (1, 1):
        return single_clip_loss(logits)
    if isinstance(tau, torch.Tensor):  # learnable: in the logits' dtype; (logits * tau) / tau leaves only the shift's
        tau = tau.to(dtype=opmath_dtype(logits.dtype), device=logits.device)  # gradient to tau (plus rounding)
    return F._margin_nce(logits * tau, margin, tau, symmetric, None, "mean")
