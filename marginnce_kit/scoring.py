"""Score a model on an annotated test set: the evaluation loop the trainer and ``python -m marginnce_kit.evaluate`` share.

The metrics are the VGG-SS / SoundNet-Flickr protocol of LVS (Chen et al. 2021; the paper's Sec. 3):
cIoU at 0.5, AUC and mean cIoU of the response maps, computed by
:class:`marginnce_kit.evaluation.LocalizationEvaluator`. This module sits below both the trainer
(:mod:`marginnce_kit.training.loop`) and the evaluation CLI (:mod:`marginnce_kit.evaluate`), so neither
imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data.datasets import collate_batch
from .evaluation import (
    LocalizationEvaluator,
    ObjectPrior,
    center_prior_map,
    ogl_map,
    protocol_ceiling,
    summarize_cious,
    upsample_map,
)

__all__ = ["evaluate_model", "bound_rows", "bound_rows_for", "reference_rows", "reference_rows_for"]


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
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_batch)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        if batch is None:
            continue
        image = batch["image"].to(device)
        maps = upsample_map(model.localize(image, batch["spectrogram"].to(device)).float()).cpu()
        if object_prior is not None:
            maps = ogl_map(maps, object_prior(image).cpu())
        ev.update(maps, batch["gt_map"], ids=batch["id"])
    failures = getattr(test_set, "failures", None)
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
    return torch.stack([torch.as_tensor(test_set[i]["gt_map"]) for i in range(len(test_set))])  # type: ignore[index]


#: The older names of :func:`bound_rows` / :func:`bound_rows_for` ("reference" is the paper's model).
reference_rows, reference_rows_for = bound_rows, bound_rows_for
