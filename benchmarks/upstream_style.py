"""The two loss formulations written the way the upstream code computes them (EZ-VSL ``model.py``
``EZVSL.max_xmil_loss``, stoneMo/EZ-VSL@95ff5bf; LVS ``model.py`` ``AVENet.forward``,
hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbb).

Our own code from the formulas, not upstream's: plain autograd on a dense ``[B, B, H, W]``
response tensor built with ``einsum``, as the EZ-VSL and LVS loss sites do. These are the
baselines the fast path is timed against; their values agree with the package's (the benchmark
checks that before timing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ezvsl_loss", "eq1_loss"]


def _positive_margin(logits: Tensor, margin: float, tau: float) -> Tensor:
    """``logits_ii -= m / tau`` (the margin on the positive logits)."""
    b = logits.shape[0]
    return logits - torch.eye(b, dtype=logits.dtype, device=logits.device) * (margin / tau)


def ezvsl_loss(img: Tensor, aud: Tensor, tau: float = 0.03, margin: float = 0.0) -> Tensor:
    """EZ-VSL's ``max_xmil_loss``: ``Slogits = einsum(img, aud) / tau``, max over ``hw``, CE both ways."""
    b = img.shape[0]
    slogits = torch.einsum("nchw,mc->nmhw", img, aud) / tau
    logits = _positive_margin(slogits.flatten(-2, -1).max(dim=-1)[0], margin, tau)
    labels = torch.arange(b, device=img.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def eq1_loss(
    img: Tensor, aud: Tensor, epsilon: float = 0.65, beta: float = 0.03, tau: float = 0.07, margin: float = 0.0
) -> Tensor:
    """The reference model's loss the LVS way: sigmoid-thresholded mean of ``einsum`` responses, CE."""
    b = img.shape[0]
    alpha = torch.einsum("nchw,mc->nmhw", img, aud)
    weights = torch.sigmoid((alpha - epsilon) / beta)
    sim = (weights * alpha).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    logits = _positive_margin(sim / tau, margin, tau)
    return F.cross_entropy(logits, torch.arange(b, device=img.device))
