"""marginNCE for sound source localisation: exact similarity kernels, the loss, upstream adapters.

marginNCE is InfoNCE with a margin ``m`` on the positive logit (paper eq. 3, section 2.2); the
similarities come from L2-normalised features through paper eq. 1 (section 2.1) or EZ-VSL's
max-MIL similarity.

>>> import torch
>>> from marginnce_loss import LocalizationMarginNCE, MarginNCE
>>> sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]])               # [B, B] cosines, positives on the diagonal
>>> loss = MarginNCE(margin=-0.2, tau=0.07)(sim)
>>> img = torch.nn.functional.normalize(torch.randn(4, 8, 7, 7), dim=1)   # [B, C, H, W]
>>> aud = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)         # [B, C]
>>> loss = LocalizationMarginNCE("thresholded", margin=-0.2, tau=0.07)(img, aud)
>>> loss.shape
torch.Size([])
"""

from . import adapters, distributed, functional, validation
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

__version__ = "0.2.0"

__all__ = [
    "MarginNCE",
    "LocalizationMarginNCE",
    "SIMILARITIES",
    "BACKENDS",
    "functional",
    "adapters",
    "distributed",
    "validation",
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
