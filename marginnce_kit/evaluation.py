"""Localisation metrics of the VGG-SS / SoundNet-Flickr protocol.

For each clip ``k`` with response map ``s_k`` (``[H, W]``, ``H = W = 224``) and
ground-truth map ``g_k`` (values in [0, 1], see ``marginnce_kit.data.gt_map``):

1. ``normalize_map``: ``s <- (s - min s) / (max s - min s)`` (left as is when constant).
2. Threshold ``t_k`` = element ``floor(H W / 2)`` (0-based) of ``sort(s_k)`` ascending,
   i.e. the median; predicted mask ``p_k = [s_k >= t_k]`` (at least half the pixels,
   more when values tie at the median).
3. ``cIoU_k = sum(p_k g_k) / (sum(g_k) + sum(p_k [g_k == 0]))``.

Summary (``summarize_cious``), all in percent:

* ``ciou`` (a.k.a. AP50 / cIoU@0.5) = ``100 * mean_k [cIoU_k >= 0.5]``;
* ``auc`` = ``100 * trapz(y, x)`` with ``x_i = 0.05 * i``, ``i = 0..20`` (computed
  as the float ``0.05 * i``, like upstream) and ``y_i = mean_k [cIoU_k >= x_i]``
  (same as ``sklearn.metrics.auc(x, y)`` used upstream);
* ``mean_ciou`` = ``100 * mean_k cIoU_k``; ``n`` = number of clips.

Also here: bilinear upsampling of low-resolution maps, OGL (object-guided
localisation), a fixed centred-Gaussian "no-model" map, and the protocol's
per-clip ceiling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

# the protocol's metric and bounds live in marginnce_kit.protocol (below the data layer); re-exported here
from .protocol import (  # noqa: F401
    AUC_THRESHOLDS,
    MAP_SIZE,
    center_prior_map,
    ciou_per_sample,
    median_threshold_mask,
    normalize_map,
    protocol_ceiling,
    protocol_ceiling_map,
    summarize_cious,
    upsample_map,
)

__all__ = [
    "MAP_SIZE",
    "AUC_THRESHOLDS",
    "OGL_AV_WEIGHT",
    "upsample_map",
    "normalize_map",
    "median_threshold_mask",
    "ciou_per_sample",
    "summarize_cious",
    "LocalizationEvaluator",
    "ogl_map",
    "ObjectPrior",
    "center_prior_map",
    "protocol_ceiling",
    "protocol_ceiling_map",
]

OGL_AV_WEIGHT: float = 0.4


class LocalizationEvaluator:
    """Accumulates per-clip cIoUs over batches; ``compute()`` gives the protocol summary.

    Usage::

        ev = LocalizationEvaluator()
        for batch in loader:
            ev.update(upsample_map(alpha), batch["gt_map"], ids=batch["id"])
        ev.compute()  # {"ciou": .., "auc": .., "mean_ciou": .., "n": ..}
    """

    def __init__(self, size: int | None = MAP_SIZE) -> None:
        self.size = size
        self._cious: list[torch.Tensor] = []
        self._ids: list[str] = []
        self._has_ids: bool | None = None

    def reset(self) -> None:
        self._cious = []
        self._ids = []
        self._has_ids = None

    def update(
        self,
        maps: torch.Tensor | np.ndarray,
        gt_maps: torch.Tensor | np.ndarray,
        ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Add a batch: ``maps`` raw ``[N, 224, 224]`` response maps, ``gt_maps`` ``[N, 224, 224]``.

        ``ids`` (optional, all batches or none) names the clips for ``per_sample()``.
        Returns this batch's cIoUs ``[N]`` (float64, CPU).
        """
        c = ciou_per_sample(maps, gt_maps, self.size).detach().cpu()
        has_ids = ids is not None
        if self._has_ids is not None and has_ids != self._has_ids:
            raise ValueError("ids must be given for every batch or for none")
        if has_ids:
            if isinstance(ids, str) or len(ids) != c.shape[0]:
                raise ValueError(f"ids must be a sequence of {c.shape[0]} clip ids, got {ids!r}")
            self._ids.extend(str(i) for i in ids)
        self._has_ids = has_ids
        self._cious.append(c)
        return c

    def __len__(self) -> int:
        return int(sum(c.shape[0] for c in self._cious))

    @property
    def cious(self) -> np.ndarray:
        """Per-clip cIoUs so far, float64 ``[n]`` in update order (a copy)."""
        if not self._cious:
            return np.zeros(0, dtype=np.float64)
        return torch.cat(self._cious).numpy().copy()

    @property
    def ids(self) -> list[str] | None:
        """Clip ids in update order, or ``None`` if updates gave no ids."""
        return list(self._ids) if self._has_ids else None

    def per_sample(self) -> list[tuple[str | None, float]]:
        """``[(id or None, cIoU_k), ...]`` in update order."""
        ids = self.ids
        cs = self.cious.tolist()
        return list(zip(ids if ids is not None else [None] * len(cs), cs))

    def compute(self) -> dict[str, float]:
        """``summarize_cious`` of all clips so far (``ValueError`` when empty)."""
        return summarize_cious(self.cious)


def ogl_map(
    av_map: torch.Tensor | np.ndarray,
    obj_map: torch.Tensor | np.ndarray,
    av_weight: float = OGL_AV_WEIGHT,
) -> torch.Tensor:
    """Object-guided localisation: ``normalize(w * normalize(AV) + (1 - w) * normalize(OBJ))``, ``w = 0.4``.

    Both maps ``[N, H, W]`` at the same (full) resolution. ``normalize_map`` of an
    already normalised OBJ map is the identity.
    """
    if not 0.0 <= av_weight <= 1.0:
        raise ValueError(f"av_weight must be in [0, 1], got {av_weight!r}")
    av = normalize_map(av_map)
    obj = normalize_map(obj_map)
    if av.shape != obj.shape:
        raise ValueError(f"av_map and obj_map must have the same shape, got {tuple(av.shape)} and {tuple(obj.shape)}")
    dtype = torch.promote_types(av.dtype, obj.dtype)
    obj = obj.to(device=av.device, dtype=dtype)
    return normalize_map(av_weight * av.to(dtype) + (1.0 - av_weight) * obj)


class ObjectPrior(nn.Module):
    """OBJ map of OGL: ResNet feature map -> mean |activation| over channels -> upsample -> min-max.

    ``OBJ = normalize(upsample(mean_c |f_c|))`` with ``f = layer4(...)`` of the given
    ImageNet ResNet-18 (``[N, 512, 7, 7]`` for 224 x 224 input), upsampled bilinearly
    with ``align_corners=True`` to ``size x size``. Weights are the caller's
    (e.g. ``torchvision.models.resnet18(weights=None)`` + ``load_state_dict``); nothing
    is downloaded. Put the module in eval mode for the protocol (BatchNorm statistics).

    Input ``images [N, 3, H, W]`` (ImageNet-normalised), output ``[N, size, size]``.
    """

    def __init__(self, backbone: nn.Module, size: int = MAP_SIZE) -> None:
        super().__init__()
        needed = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        missing = [n for n in needed if not hasattr(backbone, n)]
        if missing:
            raise TypeError(f"backbone must be a torchvision ResNet (missing attributes {missing})")
        self.backbone = backbone
        self.size = size

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], size: int = MAP_SIZE) -> ObjectPrior:
        """Build a torchvision ``resnet18`` from ImageNet weights given as a state dict (strict load)."""
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.load_state_dict(state_dict, strict=True)
        return cls(net, size)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [N, 3, H, W], got {shape}")
        saliency = self.features(images).abs().mean(dim=1)
        return normalize_map(upsample_map(saliency, self.size))
