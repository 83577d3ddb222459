"""Evaluate a trained baseline on an annotated test split.

    python -m baselines.evaluate --checkpoint runs/reference_m-0.2/checkpoint.pt \
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json [--ogl]

Prints and (with ``--out``) writes the model's cIoU / AUC / mean cIoU beside two rows computed on the
same clips: the image-independent ``center prior`` and the protocol's ``ceiling``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .evaluation import (
    LocalizationEvaluator,
    ObjectPrior,
    center_prior_map,
    ogl_map,
    protocol_ceiling,
    summarize_cious,
    upsample_map,
)

__all__ = ["evaluate_model", "reference_rows", "main"]


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    test_set: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    object_prior: Optional[ObjectPrior] = None,
    return_per_sample: bool = False,
) -> Dict[str, Any]:
    """cIoU / AUC / mean cIoU of ``model.localize`` on ``test_set`` (items with ``gt_map``).

    With ``object_prior`` the maps are OGL-refined (``0.4 * AV + 0.6 * OBJ``, the OGL paper's weights).

    Returns ``{"ciou", "auc", "mean_ciou"}`` (percent), ``"n"`` (clips scored), ``"per_clip"``
    (``{"id": [...], "ciou": [...]}``: each scored clip's IoU with the median-thresholded map, float64
    in [0, 1], in test-set order, so tables can score every row on the same clips and bootstrap
    paired differences), ``"failed"`` (``{clip id: reason}`` of the clips that could not be decoded and
    were not scored) and, for datasets with a failure tracker, ``"data_failures"`` (their count).
    ``return_per_sample`` adds the older ``"per_sample"`` list of ``(id, cIoU)`` pairs.

    Raises:
        baselines.data.DataError: more test clips failed than the dataset's ``max_failures`` allows.
    """
    from tqdm.auto import tqdm

    from .data import collate

    device = torch.device(device)
    was_training = model.training
    model.eval()
    ev = LocalizationEvaluator()
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
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
    result: Dict[str, Any] = dict(ev.compute())
    result["per_clip"] = {"id": ev.ids or [], "ciou": ev.cious.tolist()}
    result["failed"] = dict(failures.failed) if failures is not None else {}
    if failures is not None:
        result["data_failures"] = failures.count
    if return_per_sample:
        result["per_sample"] = ev.per_sample()
    return result


def reference_rows(test_set: Dataset, batch_size: int = 256,
                   ids: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
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
    return reference_rows_for(gts, batch_size, ids=all_ids or None)


def reference_rows_for(gts: torch.Tensor, batch_size: int = 256,
                       ids: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """:func:`reference_rows` from the ground-truth maps ``[N, 224, 224]`` alone (``ids``: their clip ids,
    recorded in ``per_clip``)."""
    prior = LocalizationEvaluator()
    centre = center_prior_map()
    for start in range(0, gts.shape[0], batch_size):
        gt = gts[start:start + batch_size]
        prior.update(centre.expand(gt.shape[0], -1, -1), gt)
    # tie-free ceiling: a network's continuous map predicts exactly half of the pixels
    ceiling = protocol_ceiling(gts, allow_ties=False).numpy()
    names = list(ids) if ids is not None else [str(k) for k in range(gts.shape[0])]
    rows: Dict[str, Dict[str, Any]] = {"center prior": dict(prior.compute()), "ceiling": summarize_cious(ceiling)}
    rows["center prior"]["per_clip"] = {"id": names, "ciou": prior.cious.tolist()}
    rows["ceiling"]["per_clip"] = {"id": names, "ciou": ceiling.tolist()}
    return rows


def _gt_maps(test_set: Dataset) -> torch.Tensor:
    gt_for = getattr(test_set, "gt_maps", None)
    if callable(gt_for):
        return torch.as_tensor(gt_for())
    return torch.stack([torch.as_tensor(test_set[i]["gt_map"]) for i in range(len(test_set))])  # type: ignore[index]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from .train import add_data_arguments

    p = argparse.ArgumentParser(prog="python -m baselines.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="", help="checkpoint.pt written by baselines.train")
    p.add_argument("--reference-rows", action="store_true",
                   help="only the centre-prior and ceiling rows, from --annotations (and --test-list) alone")
    add_data_arguments(p, train=False)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ogl", action="store_true", help="object-guided localisation (needs ImageNet ResNet-18 weights)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .models import build_model
    from .train import TrainConfig, build_test_set, load_checkpoint

    args = parse_args(argv)
    if args.reference_rows:
        return _reference_rows_main(args)
    if not args.checkpoint:
        raise SystemExit("evaluate: give --checkpoint (or --reference-rows with --annotations)")
    state = load_checkpoint(Path(args.checkpoint))
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config.model_config())
    model.load_state_dict(state["model"])
    device = torch.device(args.device)
    model.to(device)
    test_root = args.test_root or config.test_root
    test_list = args.test_list or config.test_list
    annotations = args.annotations or config.annotations
    if not (test_root and test_list and annotations):
        raise SystemExit("evaluate: give --test-root, --test-list and --annotations (the checkpoint's config has none)")
    annotation_format = args.annotation_format or config.annotation_format
    test_set = build_test_set(test_root, test_list, annotations, annotation_format)
    prior = None
    if args.ogl:
        from torchvision.models import ResNet18_Weights, resnet18

        prior = ObjectPrior(resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)).to(device).eval()
    scored = evaluate_model(model, test_set, device, args.batch_size, args.workers, True, prior)
    # every row on the same clips: the reference rows on the clips the model was scored on
    result = {"model": config.model, "margin": config.margin, "epoch": state["epoch"], "eval": scored,
              **reference_rows(test_set, ids=scored["per_clip"]["id"]), "excluded": scored["failed"]}
    for name in ("eval", "center prior", "ceiling"):
        r = result[name]
        label = f"{config.model} m={config.margin:+.2f}" if name == "eval" else name
        print(f"{label:>22}: cIoU {r['ciou']:6.2f}  AUC {r['auc']:6.2f}  mean cIoU {r['mean_ciou']:6.2f}  (n = {r['n']})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def _reference_rows_main(args: argparse.Namespace) -> int:
    """Centre prior and ceiling on an annotation file, e.g. all 5,158 clips of the real ``vggss.json``."""
    from .data import gt_map, load_annotations, load_id_list

    if not args.annotations:
        raise SystemExit("evaluate --reference-rows: give --annotations (vggss.json or the Flickr XML folder)")
    fmt = args.annotation_format or "vggss"
    ids = load_id_list(args.test_list) if args.test_list else None
    boxes = load_annotations(args.annotations, fmt, ids)
    gts = torch.stack([torch.from_numpy(gt_map(b, fmt)) for b in boxes.values()])
    rows = {name: {k: v for k, v in r.items() if k != "per_clip"} for name, r in reference_rows_for(gts).items()}
    result = {"annotations": Path(args.annotations).name, "test_list": Path(args.test_list).name if args.test_list else None,
              "format": fmt, **rows}
    for name in ("center prior", "ceiling"):
        r = rows[name]
        print(f"{name:>13}: cIoU {r['ciou']:6.2f}  AUC {r['auc']:6.2f}  mean cIoU {r['mean_ciou']:6.2f}  (n = {r['n']})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
