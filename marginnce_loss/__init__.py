"""marginNCE for sound source localisation: exact similarity kernels, the loss, upstream adapters.

>>> from marginnce_loss import MarginNCE
>>> loss = MarginNCE(margin=-0.2, tau=0.07)(sim)          # sim: [B, B], positives on the diagonal
"""

from . import adapters, distributed, functional
from .distributed import all_gather_with_grad, gathered_localization_margin_nce
from .functional import (
    BACKENDS,
    background_similarity,
    margin_nce,
    max_similarity,
    pairwise_response_maps,
    response_map,
    thresholded_similarity,
)
from .losses import SIMILARITIES, LocalizationMarginNCE, MarginNCE

__version__ = "0.1.0"

__all__ = [
    "MarginNCE",
    "LocalizationMarginNCE",
    "SIMILARITIES",
    "BACKENDS",
    "functional",
    "adapters",
    "distributed",
    "all_gather_with_grad",
    "gathered_localization_margin_nce",
    "margin_nce",
    "thresholded_similarity",
    "max_similarity",
    "background_similarity",
    "response_map",
    "pairwise_response_maps",
    "__version__",
]
