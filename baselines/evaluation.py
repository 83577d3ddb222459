"""Localisation metrics of the VGG-SS / SoundNet-Flickr protocol.

For each clip ``k`` with response map ``s_k`` (``[H, W]``, ``H = W = 224``) and
ground-truth map ``g_k`` (values in [0, 1], see ``baselines.data.gt_map``):

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

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

MAP_SIZE: int = 224
AUC_THRESHOLDS: tuple[float, ...] = tuple(0.05 * i for i in range(21))
OGL_AV_WEIGHT: float = 0.4


def _to_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """numpy -> torch (no copy for CPU arrays); integer/bool -> float64; floats keep their dtype."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    return x


def _check_maps(x: torch.Tensor, name: str, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape checks; returns per-map ``(min, max)`` ``[N]`` and rejects NaN/inf (they show up in min or max)."""
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [N, H, W], got {tuple(x.shape)}")
    if size is not None and tuple(x.shape[1:]) != (size, size):
        raise ValueError(f"{name} must have shape [N, {size}, {size}], got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] * x.shape[2] == 0:
        raise ValueError(f"{name} must hold at least one non-empty map, got {tuple(x.shape)}")
    lo, hi = torch.aminmax(x.reshape(x.shape[0], -1), dim=1)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        raise ValueError(f"{name} contains NaN or infinite values")
    return lo, hi


def _check_gt(x: torch.Tensor, size: int | None) -> None:
    lo, hi = _check_maps(x, "gt_maps", size)
    if bool((lo < 0).any()) or bool((hi > 1).any()):
        raise ValueError(
            f"gt_maps values must lie in [0, 1], got range [{float(lo.min())}, {float(hi.max())}]"
        )


def upsample_map(alpha: torch.Tensor, size: int = MAP_SIZE) -> torch.Tensor:
    """Bilinear upsampling ``[N, h, w] -> [N, size, size]`` with ``align_corners=True`` (EZ-VSL test script)."""
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha must be a torch.Tensor, got {type(alpha).__name__}")
    if alpha.dim() != 3:
        raise ValueError(f"alpha must have shape [N, h, w], got {tuple(alpha.shape)}")
    if not alpha.is_floating_point():
        raise TypeError(f"alpha must be floating point, got dtype {alpha.dtype}")
    return F.interpolate(alpha.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=True).squeeze(1)


def normalize_map(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-map min-max normalisation ``(s - min) / (max - min)`` of ``[N, H, W]`` maps.

    A constant map (``max == min``) is returned unchanged, as upstream's
    ``normalize_img`` does. Returns a new tensor (input dtype; ints -> float64).
    """
    x = _to_tensor(maps, "maps")
    lo, hi = _check_maps(x, "maps", None)
    lo, rng = lo.view(-1, 1, 1), (hi - lo).view(-1, 1, 1)
    constant = rng == 0
    out = x - lo
    out.div_(torch.where(constant, torch.ones_like(rng), rng))
    return torch.where(constant, x, out) if bool(constant.any()) else out


def median_threshold_mask(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Predicted masks ``[N, H, W]`` (bool): ``s >= sort(s)[floor(H W / 2)]`` after ``normalize_map``."""
    x = normalize_map(maps)
    flat = x.reshape(x.shape[0], -1)
    k = flat.shape[1] // 2  # 0-based index into the ascending sort
    thr = torch.kthvalue(flat, k + 1, dim=1).values.view(-1, 1, 1)
    return x >= thr


def ciou_per_sample(
    maps: torch.Tensor | np.ndarray,
    gt_maps: torch.Tensor | np.ndarray,
    size: int | None = MAP_SIZE,
) -> torch.Tensor:
    """``cIoU_k`` of each clip, float64 ``[N]`` (protocol steps 1-3 of the module doc).

    Args:
        maps: raw response maps ``[N, size, size]`` at full resolution (any scale).
        gt_maps: ground-truth maps ``[N, size, size]``, values in [0, 1].
        size: required map side (224 under the protocol); ``None`` accepts any
            ``[N, H, W]`` with matching shapes (for small worked examples).
    """
    s = _to_tensor(maps, "maps")
    g = _to_tensor(gt_maps, "gt_maps")
    _check_maps(s, "maps", size)
    _check_gt(g, size)
    if s.shape != g.shape:
        raise ValueError(f"maps and gt_maps must have the same shape, got {tuple(s.shape)} and {tuple(g.shape)}")
    g = g.to(device=s.device)
    n = g.shape[0]
    pred = median_threshold_mask(s).to(g.dtype).reshape(n, -1)
    g = g.reshape(n, -1)
    # Sums in g's dtype (exact for protocol maps: multiples of 0.5, fewer than 2**24 pixels), ratio in float64.
    inter = (pred * g).sum(dim=1).to(torch.float64)
    union = (g.sum(dim=1) + (pred * (g == 0)).sum(dim=1)).to(torch.float64)
    # union > 0: a predicted pixel (there is at least one) has g == 0 (adds 1) or g > 0 (then sum(g) > 0)
    return inter / union


def summarize_cious(cious: torch.Tensor | np.ndarray | Sequence[float]) -> dict[str, float]:
    """``{"ciou", "auc", "mean_ciou"}`` in percent plus ``"n"`` from per-clip cIoUs (module doc)."""
    c = np.asarray(cious.detach().cpu().numpy() if isinstance(cious, torch.Tensor) else cious, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"cious must be 1-D [N], got shape {c.shape}")
    if c.size == 0:
        raise ValueError("cious is empty: no clips were evaluated")
    if not np.isfinite(c).all():
        raise ValueError("cious contains NaN or infinite values")
    x = np.asarray(AUC_THRESHOLDS, dtype=np.float64)
    y = np.array([np.mean(c >= t) for t in AUC_THRESHOLDS], dtype=np.float64)
    auc = float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)
    return {
        "ciou": 100.0 * float(np.mean(c >= 0.5)),
        "auc": 100.0 * auc,
        "mean_ciou": 100.0 * float(np.mean(c)),
        "n": int(c.size),
    }


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
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], size: int = MAP_SIZE) -> "ObjectPrior":
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


def center_prior_map(size: int = MAP_SIZE, sigma: float = MAP_SIZE / 4) -> torch.Tensor:
    """Image-independent centred Gaussian ``exp(-((r - c)^2 + (q - c)^2) / (2 sigma^2))``, ``c = (size - 1) / 2``.

    float64 ``[size, size]``. Under the median-threshold protocol only the ordering of
    pixel values matters, so every ``sigma`` (that does not underflow) predicts the
    same mask: the centred disc holding the top half of the pixels.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
    c = (size - 1) / 2.0
    r = torch.arange(size, dtype=torch.float64) - c
    d2 = r.view(-1, 1).square() + r.view(1, -1).square()
    return torch.exp(-d2 / (2.0 * sigma * sigma))


def _ceiling_inputs(gt_maps: torch.Tensor | np.ndarray, size: int | None) -> tuple[torch.Tensor, int]:
    """Checked ``[N, H W]`` view of the ground truth (its own float dtype) and ``M = H W - floor(H W / 2)``."""
    g = _to_tensor(gt_maps, "gt_maps")
    _check_gt(g, size)
    hw = g.shape[1] * g.shape[2]
    return g.reshape(g.shape[0], hw), hw - hw // 2


def protocol_ceiling(
    gt_maps: torch.Tensor | np.ndarray,
    size: int | None = MAP_SIZE,
    *,
    allow_ties: bool = True,
) -> torch.Tensor:
    """Best cIoU each clip can reach under the protocol, float64 ``[N]``.

    Notation: ``M = H W - floor(H W / 2)`` (25,088 for 224 x 224), support
    ``{g > 0}`` with ``S`` pixels, ``G = sum g``.

    ``allow_ties=True`` (the protocol as written): the predicted mask
    ``[s >= sort(s)[floor(H W / 2)]]`` can be any mask ``P`` with ``|P| >= M`` (take
    ``s = 1[P]``; no map predicts fewer pixels, ties at the median add more). A
    pixel with ``g > 0`` adds ``g`` to the numerator and nothing to the denominator;
    a pixel with ``g = 0`` adds 1 to the denominator only. The optimum predicts the
    whole support plus ``max(0, M - S)`` background pixels::

        ceiling = G / (G + max(0, M - S))          (binary g: min(1, S / M))

    ``allow_ties=False``: maps without ties at the median (every continuous,
    upsampled network map) predict exactly ``M`` pixels. For ``S <= M`` the optimum is
    the same; for ``S > M`` it predicts the ``M`` support pixels of largest ``g``
    (any background pixel would lower the numerator and raise the denominator)::

        ceiling = (sum of the M largest g) / G     (binary g: M / S)

    An all-zero ``g`` gives 0. ``protocol_ceiling_map`` builds maps attaining these.
    """
    g, m = _ceiling_inputs(gt_maps, size)
    total = g.sum(dim=1).to(torch.float64)  # exact for protocol maps (multiples of 0.5)
    support = torch.count_nonzero(g, dim=1).to(torch.float64)  # g >= 0 was checked: g != 0 <=> g > 0
    best = total / (total + torch.clamp(m - support, min=0.0)).clamp(min=1e-300)
    if not allow_ties:
        big = torch.nonzero(support > m).flatten()
        if big.numel():
            top = torch.topk(g[big], m, dim=1, sorted=False).values.sum(dim=1).to(torch.float64)
            best[big] = top / total[big]
    return torch.where(total > 0, best, torch.zeros_like(best))


def protocol_ceiling_map(
    gt_maps: torch.Tensor | np.ndarray,
    size: int | None = MAP_SIZE,
    *,
    allow_ties: bool = True,
) -> torch.Tensor:
    """A response map ``[N, H, W]`` (float32, values 0/1) whose protocol cIoU equals ``protocol_ceiling``.

    ``1`` on the support ``{g > 0}`` and on the first ``max(0, M - S)`` background
    pixels in row-major order. With ``allow_ties=False`` and ``S > M``, ``1`` only on
    the ``M`` support pixels of largest ``g`` (exactly ``M`` ones: no tie at the median).
    """
    g, m = _ceiling_inputs(gt_maps, size)
    n, h, w = tuple(gt_maps.shape)
    flat = g > 0
    support = flat.sum(dim=1, keepdim=True)
    background_rank = torch.cumsum((~flat).to(torch.int64), dim=1)  # 1-based rank among background pixels
    out = flat | ((~flat) & (background_rank <= (m - support)))
    if not allow_ties:
        order = torch.argsort(g, dim=1, descending=True, stable=True)
        top = torch.zeros_like(flat).scatter_(1, order[:, :m], True)
        out = torch.where(support > m, top, out)
    return out.to(torch.float32).reshape(n, h, w)
