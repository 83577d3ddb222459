"""Scoring a model under the localisation protocol (:mod:`marginnce_kit.protocol` holds the protocol itself: the
maps, the median threshold, cIoU, AUC and the bounds): the metric that accumulates per-clip cIoUs
(:class:`LocalizationEvaluator`, torchmetrics' ``update`` / ``compute`` / ``reset`` with ``validate_args``), OGL
(object-guided localisation), the evaluation loop the trainer and ``python -m marginnce_kit.evaluate`` share
(:func:`evaluate_model`, sharded over the ranks under DDP) and the two rows every table carries on the same clips
(:func:`bound_rows`: the centre prior and the ceiling).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .data.datasets import collate_batch

# the protocol's metric and bounds live in marginnce_kit.protocol (below the data layer); re-exported here
from .protocol import (  # noqa: F401
    AUC_THRESHOLDS,
    MAP_SIZE,
    _check_gt,
    _check_maps,
    _to_tensor,
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
    "evaluate_model",
    "bound_rows",
    "bound_rows_for",
]

OGL_AV_WEIGHT: float = 0.4


def _world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    import torch.distributed as dist

    rank, world = _world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


class LocalizationEvaluator:
    """Accumulates per-clip cIoUs over batches; ``compute()`` gives the protocol summary.

    The torchmetrics chain: :meth:`update` checks a batch's tensors once (shapes, finiteness, the ground truth's
    range; skipped with ``validate_args=False``) and hands them to the unchecked :meth:`_update`; :meth:`sync`
    gathers every rank's clips (rank order) under DDP; :meth:`compute` summarises; :meth:`reset` empties.

    Usage::

        ev = LocalizationEvaluator()
        for batch in loader:
            ev.update(upsample_map(alpha), batch["gt_map"], ids=batch["id"])
        ev.compute()  # {"ciou": .., "auc": .., "mean_ciou": .., "n": ..}
    """

    def __init__(self, size: int | None = MAP_SIZE, validate_args: bool = True) -> None:
        self.size = size
        self.validate_args = validate_args
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

        Raises:
            TypeError, ValueError: (with ``validate_args``) maps that are not the protocol's, naming them; ids
                given for some batches only, or not one per clip.
        """
        has_ids = ids is not None
        if self._has_ids is not None and has_ids != self._has_ids:
            raise ValueError("ids: expected them for every batch or for none")
        c = ciou_per_sample(maps, gt_maps, self.size, validate_args=self.validate_args).detach().cpu()
        if has_ids and (isinstance(ids, str) or len(ids) != c.shape[0]):  # type: ignore[arg-type]
            raise ValueError(f"ids: expected a sequence of {c.shape[0]} clip ids, got {ids!r}")
        self._append(c, ids)
        return c

    def _update(self, maps: torch.Tensor | np.ndarray, gt_maps: torch.Tensor | np.ndarray,
                ids: Sequence[str] | None = None) -> torch.Tensor:
        """The unchecked update: the caller vouches for the tensors (the protocol's shapes, finite maps)."""
        c = ciou_per_sample(maps, gt_maps, self.size, validate_args=False).detach().cpu()
        self._append(c, ids)
        return c

    def _append(self, c: torch.Tensor, ids: Sequence[str] | None) -> None:
        if ids is not None:
            self._ids.extend(str(i) for i in ids)
        self._has_ids = ids is not None
        self._cious.append(c)

    def sync(self) -> None:
        """Under DDP, replace this rank's clips by every rank's, in rank order (a no-op without a process group)."""
        if _world()[1] == 1:
            return
        parts = _gather((self.cious, self._ids, self._has_ids))
        self._cious = [torch.from_numpy(c) for c, _, _ in parts if c.size]
        self._ids = [i for _, ids, _ in parts for i in ids]
        self._has_ids = any(h for _, _, h in parts)

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


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    test_set: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    object_prior: ObjectPrior | None = None,
    return_per_sample: bool = False,
    distributed: bool = False,
    on_batch: Callable[[dict[str, Any], torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """cIoU / AUC / mean cIoU (percent) of ``model.localize`` on ``test_set`` (items with ``gt_map``).

    Args:
        model: has ``localize(image [B, 3, 224, 224], spectrogram [B, 1, 257, 200]) -> [B, h, w]``;
            its train/eval mode is restored afterwards.
        test_set: items ``{"image", "spectrogram", "gt_map" [224, 224], "id"}``; broken items are
            counted by its ``failures`` tracker (when it has one).
        object_prior: OGL: the maps become ``normalise(0.4 * AV + 0.6 * OBJ)`` (EZ-VSL's object-guided
            localisation, stoneMo/EZ-VSL@95ff5bf ``test.py``).
        return_per_sample: also return ``per_sample`` (the evaluator's per-clip cIoU).
        distributed: under DDP, each rank scores a contiguous shard of ``test_set`` and every rank gets the whole
            result (clips in test-set order, failures merged before the threshold check), as one process would.
        on_batch: called with each batch and its scored maps (``[B, 224, 224]``, CPU), e.g. to draw them
            (:mod:`marginnce_kit.overlays`).

    Returns:
        ``{"ciou", "auc", "mean_ciou"}`` (percent), ``"n"`` (clips scored), ``"per_clip"``
        (``{"id": [...], "ciou": [...]}``: each scored clip's IoU with the median-thresholded map, float64
        in [0, 1], in test-set order, so tables can score every row on the same clips and bootstrap
        paired differences), ``"failed"`` (``{clip id: reason}`` of the clips that could not be decoded
        and were not scored) and, with a failure tracker, ``"data_failures"`` (their count);
        ``per_sample`` on request.

    Raises:
        marginnce_kit.data.DataError: more broken clips than the tracker allows.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    ev = LocalizationEvaluator()
    rank, world = _world() if distributed else (0, 1)
    n = len(test_set)  # type: ignore[arg-type]  # a map-style Dataset: Sized
    shard: Dataset = test_set if world == 1 else Subset(test_set, range(rank * n // world, (rank + 1) * n // world))
    if workers > 0:
        gc.collect()  # before the workers fork (training.step.make_train_loader says why)
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_batch)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        if batch is None:
            continue
        image = batch["image"].to(device)
        alpha = cast(Any, model).localize(image, batch["spectrogram"].to(device)).float()  # documented above
        if not bool(torch.isfinite(alpha).all()):  # the one check of the maps, at their own resolution
            raise ValueError(f"maps: the model's response maps hold NaN or infinite values (clips {batch['id'][:5]})")
        maps = upsample_map(alpha).cpu()
        if object_prior is not None:
            maps = ogl_map(maps, object_prior(image).cpu())
        ev._update(maps, batch["gt_map"], ids=batch["id"])  # ground truth built by the dataset: valid maps
        if on_batch is not None:
            on_batch(batch, maps)
    failures = getattr(test_set, "failures", None)
    if world > 1:
        ev.sync()
        if failures is not None:
            for failed in _gather(dict(failures.failed)):
                for clip_id, reason in failed.items():
                    failures.record(clip_id, reason)
    if failures is not None:
        failures.check()
    model.train(was_training)
    result: dict[str, Any] = dict(ev.compute())
    result["per_clip"] = {"id": ev.ids or [], "ciou": ev.cious.tolist()}
    result["failed"] = dict(failures.failed) if failures is not None else {}
    if failures is not None:
        result["data_failures"] = failures.count
    if return_per_sample:
        result["per_sample"] = ev.per_sample()
    return result



# --------------------------------------------------------------------------- the protocol's bounds on the same clips


def bound_rows(test_set: Dataset, batch_size: int = 256,
                   ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """The two rows every study table carries, on exactly the clips of ``test_set`` (or, with ``ids``,
    on those of its clips, e.g. the ones a model was scored on): ``center prior`` (a fixed centred
    Gaussian map for every clip) and ``ceiling`` (the best cIoU each clip can reach under the protocol,
    given only its ground-truth map). Each row: the summary, ``n`` and ``per_clip``
    (``{"id", "ciou"}``, as :func:`evaluate_model`).

    Raises:
        ValueError: ``ids`` names a clip that ``test_set`` does not serve.
    """
    all_ids = [str(i) for i in getattr(test_set, "ids", [])]
    gts = _gt_maps(test_set)
    if ids is not None:
        if len(all_ids) != gts.shape[0]:
            raise ValueError("ids: this test set does not name its clips (no .ids), so it cannot be restricted")
        pos = {c: k for k, c in enumerate(all_ids)}
        unknown = [i for i in ids if i not in pos]
        if unknown:
            raise ValueError(f"ids: expected clips of the test set, got {len(unknown)} others, e.g. {unknown[:3]}")
        gts = gts[[pos[i] for i in ids]]
        all_ids = list(ids)
    return bound_rows_for(gts, batch_size, ids=all_ids or None)


def bound_rows_for(gts: torch.Tensor, batch_size: int = 256,
                       ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`bound_rows` from the ground-truth maps ``[N, 224, 224]`` alone (``ids``: their clip ids,
    recorded in ``per_clip``)."""
    prior = LocalizationEvaluator()
    centre = center_prior_map()
    for start in range(0, gts.shape[0], batch_size):
        gt = gts[start:start + batch_size]
        prior.update(centre.expand(gt.shape[0], -1, -1), gt)
    # tie-free ceiling: a network's continuous map predicts exactly half of the pixels
    ceiling = protocol_ceiling(gts, allow_ties=False).numpy()
    names = list(ids) if ids is not None else [str(k) for k in range(gts.shape[0])]
    rows: dict[str, dict[str, Any]] = {"center prior": dict(prior.compute()), "ceiling": summarize_cious(ceiling)}
    rows["center prior"]["per_clip"] = {"id": names, "ciou": prior.cious.tolist()}
    rows["ceiling"]["per_clip"] = {"id": names, "ciou": ceiling.tolist()}
    return rows


def _gt_maps(test_set: Dataset) -> torch.Tensor:
    gt_for = getattr(test_set, "gt_maps", None)
    if callable(gt_for):
        return torch.as_tensor(gt_for())
    items = cast(Any, test_set)  # a map-style data set of dicts
    return torch.stack([torch.as_tensor(items[i]["gt_map"]) for i in range(len(items))])



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
        b: Any = self.backbone  # a torchvision ResNet (checked in __init__)
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [N, 3, H, W], got {shape}")
        saliency = self.features(images).abs().mean(dim=1)
        return normalize_map(upsample_map(saliency, self.size))
