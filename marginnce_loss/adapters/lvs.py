"""LVS's loss site: the logits of ``AVENet.forward`` in ``model.py``
(hche11/Localizing-Visual-Sounds-the-Hard-Way @ 8fe8cbb).

Upstream (``A = alpha_ii``, ``A0 = alpha_ij``, eq. 1's sigmoid temperature ``beta`` = upstream's
``self.tau`` = 0.03)::

    sim1 = eq1(A, epsilon)                       # [B, 1]  positive
    sim  = eq1(A0, epsilon) * (1 - 100 * I)      # [B, B]  negatives; the diagonal becomes -99 * S_ii
    sim2 = background(A, epsilon2 if trimap else epsilon)   # [B, 1] hard negative
    logits = cat(sim1, sim, sim2) / 0.07         # trained with CE against column 0

The ``1 - 100 * I`` mask is a quirk: the positive also appears among the negatives as
``exp(-99 S_ii / 0.07)``, negligible when ``S_ii`` is clearly positive, but not removed.
``diagonal="upstream"`` (default) reproduces it exactly; ``diagonal="exclude"`` puts ``-inf``
there, so the loss is exactly ``margin_nce(S, margin, tau, extra_negatives=N)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import functional as F
from .._deprecation import renamed_keyword
from .._validation import check_bool, check_choice, check_finite, check_pair, check_positive

__all__ = ["lvs_logits", "DIAGONAL_MODES"]

DIAGONAL_MODES = ("upstream", "exclude")


@renamed_keyword("sigmoid_tau", "beta")
def lvs_logits(
    img: Tensor,
    aud: Tensor,
    margin: float = 0.0,
    epsilon: float = 0.65,
    epsilon2: float = 0.4,
    beta: float = 0.03,
    tau: float = 0.07,
    trimap: bool = True,
    hard_negative: bool = True,
    diagonal: str = "upstream",
    backend: str = "auto",
) -> Tensor:
    r"""LVS logits with a margin on the positive column.

    Row ``i`` is ``[(S_ii - m), S_i1 .. S_iB (diagonal per ``diagonal``), N_i] / tau`` with
    ``S = thresholded_similarity(img, aud, epsilon, beta)`` (eq. 1) and
    ``N = background_similarity(img, aud, epsilon2 if trimap else epsilon, beta)``.
    Train with ``F.cross_entropy(logits, zeros(B, dtype=long))``: the target is column 0.

    Args:
        img: ``[B, C, H, W]`` L2-normalised visual features.
        aud: ``[B, C]`` L2-normalised audio embeddings.
        margin: ``m`` subtracted from the positive similarity (0 reproduces upstream).
        epsilon: positive threshold (0.65).
        epsilon2: background threshold with trimap (0.4).
        beta: eq. 1's sigmoid temperature ``beta`` (0.03, upstream's ``self.tau``); the keyword
            ``sigmoid_tau=`` is a deprecated alias of it (``DeprecationWarning``).
        tau: the contrastive temperature (upstream's hard-coded 0.07).
        trimap: background threshold ``epsilon2`` (True) or ``epsilon`` (False), upstream ``--tri_map``.
        hard_negative: append the background column, upstream ``--Neg``.
        diagonal: ``"upstream"`` multiplies the negatives by ``1 - 100 * I`` as upstream does;
            ``"exclude"`` removes the positive from the negatives (``-inf`` logit).
        backend: ``"auto"`` | ``"eager"`` | ``"compiled"`` for eq. 1 (see
            :func:`~marginnce_loss.functional.thresholded_similarity`).

    Returns:
        ``[B, 1 + B + 1]`` logits (``[B, 1 + B]`` without ``hard_negative``), float32
        (float64 for float64 input).

    Raises:
        TypeError: ``img`` / ``aud`` not floating-point tensors of one dtype; a scalar of the wrong
            kind (``trimap`` / ``hard_negative`` must be bools); both ``beta`` and its deprecated
            alias ``sigmoid_tau`` given.
        ValueError: shapes other than ``[B, C, H, W]`` / ``[B, C]`` with one ``B`` and ``C``,
            different devices, a threshold not finite, a temperature ``<= 0``, unknown
            ``diagonal`` / ``backend``.

    Example:
        >>> import torch
        >>> img = torch.nn.functional.normalize(torch.randn(4, 8, 7, 7), dim=1)
        >>> aud = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> logits = lvs_logits(img, aud, margin=-0.2)
        >>> logits.shape                                  # [positive | B negatives | background]
        torch.Size([4, 6])
        >>> loss = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    """
    check_pair(img, aud, same_batch=True)
    margin = check_finite("margin", margin)
    epsilon = check_finite("epsilon", epsilon)
    epsilon2 = check_finite("epsilon2", epsilon2)
    beta = check_positive("beta", beta)
    tau = check_positive("tau", tau)
    check_bool("trimap", trimap)
    check_bool("hard_negative", hard_negative)
    check_choice("diagonal", diagonal, DIAGONAL_MODES)
    check_choice("backend", backend, F.BACKENDS)

    sim = F._thresholded_similarity(img, aud, epsilon, beta, backend)
    b = sim.shape[0]
    positive = sim.diagonal().unsqueeze(1) - margin
    eye = torch.eye(b, dtype=sim.dtype, device=sim.device)
    if diagonal == "upstream":
        negatives = sim * (1 - 100 * eye)
    else:
        negatives = sim.masked_fill(eye.bool(), float("-inf"))
    columns = [positive, negatives]
    if hard_negative:
        background = F._background_similarity(img, aud, epsilon2 if trimap else epsilon, beta)
        columns.append(background.unsqueeze(1))
    return torch.cat(columns, dim=1) / tau
