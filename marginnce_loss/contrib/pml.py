r"""pytorch-metric-learning interop: ``MarginNTXentLoss``, its ``NTXentLoss`` with marginNCE's margin.

``MarginNTXentLoss(margin=-0.2, temperature=0.07, **kwargs)`` is a subclass of
``pytorch_metric_learning.losses.NTXentLoss`` (KevinMusgrave/pytorch-metric-learning, ``losses/ntxent_loss.py``
@ v2.9.0) that subtracts ``margin`` from every positive pair's similarity before the temperature (paper
eq. 3, section 2.2): for each positive pair ``(a, p)`` that pml forms from ``labels`` (or a miner's
``indices_tuple``)

.. math::
    \ell_{ap} = -\log \frac{e^{(s_{ap}-m)/\tau}}{e^{(s_{ap}-m)/\tau} + \sum_{n:\, y_n \neq y_a} e^{s_{an}/\tau}}

reduced by pml's reducer (default: the mean over positive pairs). ``s`` is pml's ``distance``: the cosine
similarity by default; with a distance that is not a similarity (``is_inverted=False``, e.g. ``LpDistance``)
pml scores ``-d`` and the margin is applied to that (``-d_ap - m``). Everything else -- ``forward(embeddings,
labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)``, miners, reducers, regularisers,
``distributed.DistributedLossWrapper`` -- is pml's own. At ``margin=0`` it is ``NTXentLoss``.

With unique labels and a reference set, it is :class:`~marginnce_loss.MarginNCE` on the cosine matrix::

    labels = torch.arange(B)
    loss = MarginNTXentLoss(margin=-0.2, temperature=0.07)(img_emb, labels, ref_emb=aud_emb, ref_labels=labels.clone())
    # == MarginNCE(margin=-0.2, tau=0.07)(cosine(img_emb, aud_emb))   (rows: images, columns: audio)

(``ref_labels`` must be another tensor object than ``labels``: pml takes ``ref_labels is labels`` for a
self-comparison and drops the diagonal, i.e. every positive pair here, giving a zero loss.)

and with ``embeddings = cat([img_emb, aud_emb])``, ``labels = cat([arange(B), arange(B)])`` (SimCLR's pairs)
each of the ``2B`` anchors has its partner as positive and the other ``2B - 2`` embeddings as negatives.

Needs ``pytorch-metric-learning`` (``pip install 'marginnce-loss[pml]'``). ``import marginnce_loss.contrib.pml``
works without it (for docs and doctests); reading ``MarginNTXentLoss`` then raises one ``ImportError`` naming
the extra. The class is built on first access and cached in this module.

Args (of ``MarginNTXentLoss``):
    margin: ``m`` of eq. 3, a finite real number (paper: -0.2; ``0`` gives ``NTXentLoss``). Checked at
        construction; the attribute ``margin`` may be reassigned (e.g. a schedule), unchecked, as pml's own.
    temperature: ``tau`` > 0 (pml's default 0.07).
    **kwargs: ``NTXentLoss``'s / ``BaseMetricLossFunction``'s (``distance``, ``reducer``, ``embedding_regularizer``...).

Raises:
    ImportError: on reading ``MarginNTXentLoss`` without pytorch-metric-learning (names the extra).
    TypeError, ValueError: ``margin`` not a finite real number, ``temperature`` not > 0 (the argument named).
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_finite, check_positive

__all__ = ["MarginNTXentLoss", "MISSING_DEPENDENCY"]

#: Built by the module ``__getattr__`` on first access (an annotation only: no value until then).
MarginNTXentLoss: type

#: The message of the ``ImportError`` raised without pytorch-metric-learning.
MISSING_DEPENDENCY = (
    "marginnce_loss.contrib.pml needs pytorch-metric-learning, which is not installed: "
    "pip install 'marginnce-loss[pml]' (or pip install pytorch-metric-learning)"
)


def _build() -> type:
    """Define ``MarginNTXentLoss`` on the installed ``NTXentLoss``; ``ImportError`` naming the extra without it."""
    try:
        from pytorch_metric_learning.losses import NTXentLoss
    except ImportError as err:
        raise ImportError(MISSING_DEPENDENCY) from err

    class MarginNTXentLoss(NTXentLoss):  # type: ignore[misc, valid-type]
        """pml's ``NTXentLoss``, marginNCE's margin on its positive pairs (see :mod:`marginnce_loss.contrib.pml`)."""

        def __init__(self, margin: float = -0.2, temperature: float = 0.07, **kwargs: Any) -> None:
            margin = check_finite("margin", margin)
            temperature = check_positive("temperature", temperature)
            super().__init__(temperature=temperature, **kwargs)
            self.margin = margin
            self.add_to_recordable_attributes(list_of_names=["margin"], is_stat=False)

        def _compute_loss(self, pos_pairs: Any, neg_pairs: Any, indices_tuple: Any) -> Any:
            # pml passes [] when there are no positive pairs; a similarity is shifted by -m, a distance by +m
            # (NTXentLoss negates distances next: -(d + m) = -d - m)
            if isinstance(pos_pairs, torch.Tensor):
                pos_pairs = pos_pairs - self.margin if self.distance.is_inverted else pos_pairs + self.margin
            return super()._compute_loss(pos_pairs, neg_pairs, indices_tuple)

    MarginNTXentLoss.__module__ = __name__
    MarginNTXentLoss.__qualname__ = "MarginNTXentLoss"
    return MarginNTXentLoss


def __getattr__(name: str) -> Any:
    if name == "MarginNTXentLoss":
        cls = _build()
        globals()[name] = cls  # later reads (and pickle's lookup) find it without this hook
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
