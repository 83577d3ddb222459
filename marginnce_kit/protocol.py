"""The VGG-SS / SoundNet-Flickr localisation protocol: the per-clip cIoU, its summary, and the protocol's bounds.

This is the evaluation protocol of LVS (Chen et al., "Localizing Visual Sounds the Hard Way", CVPR
2021; ``test.py`` of hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbb and stoneMo/EZ-VSL@95ff5bf),
the one the paper reports in its Sec. 3. For each clip ``k`` with response map ``s_k`` (``[H, W]``,
``H = W = 224``) and ground-truth map ``g_k`` (values in [0, 1], see ``marginnce_kit.data.gt_map``):

1. ``normalize_map``: ``s <- (s - min s) / (max s - min s)`` (left as is when constant).
2. Threshold ``t_k`` = element ``floor(H W / 2)`` (0-based) of ``sort(s_k)`` ascending,
   i.e. the median; predicted mask ``p_k = [s_k >= t_k]`` (at least half the pixels,
   more when values tie at the median). This is EZ-VSL's ``cal_CIOU(pred, gt_map, thr)``
   (``infer >= thres``). LVS's ``test.py`` (at 8fe8cbb) keeps ``pred > threshold`` instead:
   one pixel fewer on a tie-free map (25,087 of 50,176), and none of the pixels tied with the
   median (``tests/test_field_reports.py`` has a worked example).
3. ``cIoU_k = sum(p_k g_k) / (sum(g_k) + sum(p_k [g_k == 0]))``.

Summary (``summarize_cious``), all in percent: ``ciou`` = ``100 * mean_k [cIoU_k >= 0.5]``;
``auc`` = ``100 * trapz(y, x)`` with ``x_i = 0.05 * i`` and ``y_i = mean_k [cIoU_k >= x_i]``;
``mean_ciou`` = ``100 * mean_k cIoU_k``; ``n`` = number of clips.

The protocol's bounds: ``center_prior_map`` (an image-independent centered Gaussian: what a model
that ignores the data scores) and ``protocol_ceiling`` (the best cIoU any map can reach given the
ground truth). Pure torch / numpy, importing nothing else of the kit, so the data layer
(``marginnce_kit.data.box_stats``) and the evaluator (``marginnce_kit.evaluation``) both build on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MAP_SIZE",
    "AUC_THRESHOLDS",
    "upsample_map",
    "normalize_map",
    "median_threshold_mask",
    "ciou_per_sample",
    "summarize_cious",
    "center_prior_map",
    "protocol_ceiling",
    "protocol_ceiling_map",
]

MAP_SIZE: int = 224
AUC_THRESHOLDS: tuple[float, ...] = tuple(0.05 * i for i in range(21))


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


def _normalized(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)`` per map from the maps' ``min`` / ``max`` ``[N]``; constant maps unchanged (no host
    sync: both branches are computed and selected on the device)."""
    lo, rng = lo.view(-1, 1, 1), (hi - lo).view(-1, 1, 1)
    constant = rng == 0
    out = (x - lo).div_(torch.where(constant, torch.ones_like(rng), rng))
    return torch.where(constant, x, out)


def normalize_map(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-map min-max normalisation ``(s - min) / (max - min)`` of ``[N, H, W]`` maps.

    A constant map (``max == min``) is returned unchanged, as upstream's
    ``normalize_img`` does. Returns a new tensor (input dtype; ints -> float64).
    """
    x = _to_tensor(maps, "maps")
    lo, hi = _check_maps(x, "maps", None)
    return _normalized(x, lo, hi)


def _median_mask(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The protocol's prediction of maps ``x`` with per-map ``min`` / ``max``: normalise, then ``>=`` the element at
    0-based index ``floor(H W / 2)`` of the ascending sort."""
    x = _normalized(x, lo, hi)
    flat = x.reshape(x.shape[0], -1)
    k = flat.shape[1] // 2  # 0-based index into the ascending sort
    if flat.device.type == "cpu":  # the same order statistic, about 10x faster than torch.kthvalue on a CPU
        thr = torch.from_numpy(np.partition(flat.detach().numpy(), k, axis=1)[:, k]).view(-1, 1, 1)
    else:
        thr = torch.kthvalue(flat, k + 1, dim=1).values.view(-1, 1, 1)
    return x >= thr


def median_threshold_mask(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Predicted masks ``[N, H, W]`` (bool): ``s >= sort(s)[floor(H W / 2)]`` after ``normalize_map``."""
    x = _to_tensor(maps, "maps")
    lo, hi = _check_maps(x, "maps", None)
    return _median_mask(x, lo, hi)


def ciou_per_sample(
    maps: torch.Tensor | np.ndarray,
    gt_maps: torch.Tensor | np.ndarray,
    size: int | None = MAP_SIZE,
    validate_args: bool = True,
) -> torch.Tensor:
    """``cIoU_k`` of each clip, float64 ``[N]`` (protocol steps 1-3 of the module doc).

    Args:
        maps: raw response maps ``[N, size, size]`` at full resolution (any scale).
        gt_maps: ground-truth maps ``[N, size, size]``, values in [0, 1].
        size: required map side (224 under the protocol); ``None`` accepts any
            ``[N, H, W]`` with matching shapes (for small worked examples).
        validate_args: check shapes, finiteness and the ground truth's range (one pass over each input, whose
            per-map min / max the normalisation reuses); ``False`` skips the checks and their host syncs, for
            callers that checked their inputs already (torchmetrics' ``validate_args``).

    Raises:
        TypeError, ValueError: with ``validate_args``, inputs that are not maps of the protocol (naming them).
    """
    s = _to_tensor(maps, "maps")
    g = _to_tensor(gt_maps, "gt_maps")
    if validate_args:
        lo, hi = _check_maps(s, "maps", size)
        _check_gt(g, size)
        if s.shape != g.shape:
            raise ValueError(f"maps and gt_maps must have the same shape, got {tuple(s.shape)} and {tuple(g.shape)}")
    else:
        lo, hi = torch.aminmax(s.reshape(s.shape[0], -1), dim=1)
    g = g.to(device=s.device)
    n = g.shape[0]
    pred = _median_mask(s, lo, hi).to(g.dtype).reshape(n, -1)
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


def center_prior_map(size: int = MAP_SIZE, sigma: float = MAP_SIZE / 4) -> torch.Tensor:
    """Image-independent centered Gaussian ``exp(-((r - c)^2 + (q - c)^2) / (2 sigma^2))``, ``c = (size - 1) / 2``.

    float64 ``[size, size]``. Under the median-threshold protocol only the ordering of
    pixel values matters, so every ``sigma`` (that does not underflow) predicts the
    same mask: the centered disc holding the top half of the pixels.
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
