"""Evaluate a trained baseline on an annotated test split (cIoU at 0.5, AUC, mean cIoU: the VGG-SS /
SoundNet-Flickr protocol of LVS, Chen et al. 2021, as used in the paper's Sec. 3).

    python -m baselines.evaluate --checkpoint runs/reference_m-0.2/checkpoint.pt \\
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json [--ogl]

Prints and (with ``--out``) writes the model's cIoU / AUC / mean cIoU beside two rows computed on the
same clips: the image-independent ``center prior`` and the protocol's ``ceiling``.

``--ogl`` needs ImageNet ResNet-18 weights: torchvision's cache file (downloaded when absent) or
``--visual-weights PATH`` (a local state dict; no network). Errors the user can fix (missing files,
broken clips, no CUDA, weights unavailable offline) are one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import json
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

    With ``object_prior`` the maps are OGL-refined (``0.4 * AV + 0.6 * OBJ``, SPEC 7).
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
    if failures is not None:
        result["data_failures"] = failures.count
    if return_per_sample:
        result["per_sample"] = ev.per_sample()
    return result


def reference_rows(test_set: Dataset, batch_size: int = 256) -> Dict[str, Dict[str, float]]:
    """The two rows every study table carries, on exactly the clips of ``test_set``:
    ``center prior`` (a fixed centred Gaussian map for every clip) and ``ceiling`` (the best cIoU each
    clip can reach under the protocol, given only its ground-truth map)."""
    return reference_rows_for(_gt_maps(test_set), batch_size)


def reference_rows_for(gts: torch.Tensor, batch_size: int = 256) -> Dict[str, Dict[str, float]]:
    """:func:`reference_rows` from the ground-truth maps ``[N, 224, 224]`` alone."""
    prior = LocalizationEvaluator()
    centre = center_prior_map()
    for start in range(0, gts.shape[0], batch_size):
        gt = gts[start:start + batch_size]
        prior.update(centre.expand(gt.shape[0], -1, -1), gt)
    # tie-free ceiling: a network's continuous map predicts exactly half of the pixels
    return {"center prior": prior.compute(), "ceiling": summarize_cious(protocol_ceiling(gts, allow_ties=False))}


def _gt_maps(test_set: Dataset) -> torch.Tensor:
    gt_for = getattr(test_set, "gt_maps", None)
    if callable(gt_for):
        return torch.as_tensor(gt_for())
    return torch.stack([torch.as_tensor(test_set[i]["gt_map"]) for i in range(len(test_set))])  # type: ignore[index]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from .cli import HelpFormatter
    from .train import add_data_arguments

    p = argparse.ArgumentParser(prog="python -m baselines.evaluate", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default="", help="checkpoint.pt written by baselines.train")
    p.add_argument("--reference-rows", action="store_true",
                   help="only the centre-prior and ceiling rows, from --annotations (and --test-list) alone")
    add_data_arguments(p, train=False)
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to evaluate")
    p.add_argument("--ogl", action="store_true", help="object-guided localisation (needs ImageNet ResNet-18 weights)")
    p.add_argument("--visual-weights", default="", metavar="PATH",
                   help="with --ogl: a local torchvision ResNet-18 state dict ('': torchvision's cache)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p.parse_args(argv)


def _write_json(result: Dict[str, Any], path: str) -> None:
    from .train import atomic_write_text

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2) + "\n", out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m baselines.evaluate``; returns the exit status. Raises :class:`baselines.cli.UsageError`
    for the user's errors (one line under :func:`baselines.cli.run_main`)."""
    from .cli import UsageError
    from .data import DataError
    from .models import build_model, imagenet_resnet18
    from .train import TrainConfig, build_test_set, check_paths, data_error, load_checkpoint

    args = parse_args(argv)
    if args.reference_rows:
        return _reference_rows_main(args)
    if not args.checkpoint:
        raise UsageError("evaluate: no checkpoint given", "give --checkpoint (or --reference-rows with --annotations)")
    if args.batch_size < 1 or args.workers < 0:
        raise UsageError(f"--batch-size: expected an int >= 1 and --workers an int >= 0, got {args.batch_size} "
                         f"and {args.workers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine", "pass --device cpu")
    if args.visual_weights and not args.ogl:
        raise UsageError(f"--visual-weights {args.visual_weights!r} is read for --ogl only", "add --ogl, or drop it")
    check_paths(args)
    state = load_checkpoint(Path(args.checkpoint))
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config.model_config(), load_pretrained=False)  # every weight comes from the checkpoint
    model.load_state_dict(state["model"])
    device = torch.device(args.device)
    model.to(device)
    test_root = args.test_root or config.test_root
    test_list = args.test_list or config.test_list
    annotations = args.annotations or config.annotations
    if not (test_root and test_list and annotations):
        raise UsageError("evaluate: no test split (the checkpoint's config has none)",
                         "give --test-root, --test-list and --annotations")
    if not args.test_root:  # paths from the checkpoint's config: check them too
        check_paths(argparse.Namespace(test_root=test_root, test_list=test_list, annotations=annotations))
    annotation_format = args.annotation_format or config.annotation_format
    prior = ObjectPrior(imagenet_resnet18(args.visual_weights)).to(device).eval() if args.ogl else None
    try:
        test_set = build_test_set(test_root, test_list, annotations, annotation_format)
        scores = evaluate_model(model, test_set, device, args.batch_size, args.workers, True, prior)
    except DataError as e:
        raise data_error(e) from e
    result = {"model": config.model, "margin": config.margin, "epoch": state["epoch"], "eval": scores,
              **reference_rows(test_set)}
    for name in ("eval", "center prior", "ceiling"):
        r = result[name]
        label = f"{config.model} m={config.margin:+.2f}" if name == "eval" else name
        print(f"{label:>22}: cIoU {r['ciou']:6.2f}  AUC {r['auc']:6.2f}  mean cIoU {r['mean_ciou']:6.2f}  (n = {r['n']})")
    if args.out:
        _write_json(result, args.out)
    return 0


def _reference_rows_main(args: argparse.Namespace) -> int:
    """Centre prior and ceiling on an annotation file, e.g. all 5,158 clips of the real ``vggss.json``."""
    from .cli import UsageError
    from .data import gt_map, load_annotations, load_id_list
    from .train import check_paths

    if not args.annotations:
        raise UsageError("evaluate --reference-rows: no annotations given",
                         "give --annotations (vggss.json or the Flickr XML folder)")
    check_paths(args)
    fmt = args.annotation_format or "vggss"
    ids = load_id_list(args.test_list) if args.test_list else None
    boxes = load_annotations(args.annotations, fmt, ids)
    gts = torch.stack([torch.from_numpy(gt_map(b, fmt)) for b in boxes.values()])
    rows = reference_rows_for(gts)
    result = {"annotations": Path(args.annotations).name, "test_list": Path(args.test_list).name if args.test_list else None,
              "format": fmt, **rows}
    for name in ("center prior", "ceiling"):
        r = rows[name]
        print(f"{name:>13}: cIoU {r['ciou']:6.2f}  AUC {r['auc']:6.2f}  mean cIoU {r['mean_ciou']:6.2f}  (n = {r['n']})")
    if args.out:
        _write_json(result, args.out)
    return 0


if __name__ == "__main__":
    from .cli import run_main

    run_main(main, prog="python -m baselines.evaluate")
