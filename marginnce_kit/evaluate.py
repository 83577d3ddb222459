"""Evaluate a trained baseline on an annotated test split (cIoU at 0.5, AUC, mean cIoU: the VGG-SS /
SoundNet-Flickr protocol of LVS, Chen et al. 2021, as used in the paper's Sec. 3).

    python -m marginnce_kit.evaluate --checkpoint runs/reference_m-0.2/checkpoint.pt \\
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json [--ogl]

Prints and (with ``--out``) writes the model's cIoU / AUC / mean cIoU beside two rows computed on the
same clips: the image-independent ``center prior`` and the protocol's ``ceiling``. The JSON's ``checkpoint``
says which weights were scored: ``last`` (``checkpoint.pt``, the last epoch) or ``best_val`` (``best_val.pt``,
the best epoch on the run's validation split), with their ``epoch``.

``--ogl`` needs ImageNet ResNet-18 weights: torchvision's cache file (downloaded when absent) or
``--visual-weights PATH`` (a local state dict; no network). Errors the user can fix (missing files,
broken clips, no CUDA, weights unavailable offline) are one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .cli import UsageError, make_parser, run_main
from .data import DataError, gt_map, load_annotations, load_id_list
from .evaluation import ObjectPrior, bound_rows, bound_rows_for, evaluate_model
from .io import atomic_write_text
from .models import imagenet_resnet18
from .overlays import save_overlays
from .training.checkpoint import load_model
from .training.config import AUTO_WORKERS
from .training.loop import build_test_set
from .training.options import add_data_arguments, add_field_argument, check_paths, data_error
from .training.runtime import auto_workers

__all__ = ["evaluate_model", "bound_rows", "bound_rows_for", "main"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    summary, _, details = (__doc__ or "").partition("\n")
    p = make_parser("marginnce_kit.evaluate", summary, details)
    p.add_argument("--checkpoint", default="", help="checkpoint.pt written by marginnce_kit.train")
    p.add_argument("--bound-rows", "--reference-rows", dest="bound_rows", action="store_true",
                   help="only the protocol's bounds (the center-prior and ceiling rows), from --annotations "
                        "(and --test-list) alone; --reference-rows is the older name")
    add_data_arguments(p, train=False)
    add_field_argument(p, "batch_size", default=64, help="evaluation batch")
    add_field_argument(p, "workers", default=0, help="DataLoader worker processes (auto: as marginnce_kit.train)")
    add_field_argument(p, "device", help="where to evaluate")
    p.add_argument("--ogl", action="store_true", help="object-guided localisation (needs ImageNet ResNet-18 weights)")
    p.add_argument("--visual-weights", default="", metavar="PATH",
                   help="with --ogl: a local torchvision ResNet-18 state dict ('': torchvision's cache)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--save-maps", default="", metavar="DIR",
                   help="also write an overlay PNG of every scored map to DIR/<id>.png (the map over its frame, the "
                        "predicted region and the ground truth outlined)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


def _write_json(result: dict[str, Any], path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=2) + "\n", out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marginnce_kit.evaluate``; returns the exit status. Raises :class:`marginnce_kit.cli.UsageError`
    for the user's errors (one line under :func:`marginnce_kit.cli.run_main`)."""
    args = parse_args(argv)
    if args.bound_rows:
        return _bound_rows_main(args)
    if not args.checkpoint:
        raise UsageError("evaluate: no checkpoint given", "give --checkpoint (or --bound-rows with --annotations)")
    if args.workers == AUTO_WORKERS:
        args.workers = auto_workers(args.device)
    if args.batch_size < 1 or args.workers < 0:
        raise UsageError(f"--batch-size: expected an int >= 1 and --workers an int >= 0 (or auto), got "
                         f"{args.batch_size} and {args.workers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine", "pass --device cpu")
    if args.visual_weights and not args.ogl:
        raise UsageError(f"--visual-weights {args.visual_weights!r} is read for --ogl only", "add --ogl, or drop it")
    check_paths(args)
    device = torch.device(args.device)
    model, config, state = load_model(Path(args.checkpoint), device)  # every weight comes from the checkpoint
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
        test_set = build_test_set(test_root, test_list, annotations, annotation_format, image_size=config.image_size)
        save = None
        if args.save_maps:
            def save(batch: dict[str, Any], maps: torch.Tensor) -> None:
                save_overlays(args.save_maps, batch["id"], batch["image"], maps, batch["gt_map"])

        scored = evaluate_model(model, test_set, device, args.batch_size, args.workers, args.progress, prior,
                                on_batch=save)
    except DataError as e:
        raise data_error(e) from e
    # every row on the same clips: the reference rows on the clips the model was scored on
    result = {"model": config.model, "margin": config.margin, "epoch": state["epoch"],
              "checkpoint": state.get("selection", "last"), "eval": scored,
              **bound_rows(test_set, ids=scored["per_clip"]["id"]), "excluded": scored["failed"]}
    for name in ("eval", "center prior", "ceiling"):
        r = result[name]
        label = f"{config.model} m={config.margin:+.2f}" if name == "eval" else name
        print(f"{label:>22}: cIoU {r['ciou']:6.2f}  AUC {r['auc']:6.2f}  "
              f"mean cIoU {r['mean_ciou']:6.2f}  (n = {r['n']})")
    if args.out:
        _write_json(result, args.out)
    return 0


def _bound_rows_main(args: argparse.Namespace) -> int:
    """Centre prior and ceiling on an annotation file, e.g. all 5,158 clips of the real ``vggss.json``."""
    if not args.annotations:
        raise UsageError("evaluate --bound-rows: no annotations given",
                         "give --annotations (vggss.json or the Flickr XML folder)")
    check_paths(args)
    fmt = args.annotation_format or "vggss"
    ids = load_id_list(args.test_list) if args.test_list else None
    boxes = load_annotations(args.annotations, fmt, ids)
    gts = torch.stack([torch.from_numpy(gt_map(b, fmt)) for b in boxes.values()])
    rows = {name: {k: v for k, v in r.items() if k != "per_clip"} for name, r in bound_rows_for(gts).items()}
    result = {"annotations": Path(args.annotations).name,
              "test_list": Path(args.test_list).name if args.test_list else None, "format": fmt, **rows}
    for name in ("center prior", "ceiling"):
        r = rows[name]
        print(f"{name:>13}: cIoU {r['ciou']:6.2f}  AUC {r['auc']:6.2f}  "
              f"mean cIoU {r['mean_ciou']:6.2f}  (n = {r['n']})")
    if args.out:
        _write_json(result, args.out)
    return 0


if __name__ == "__main__":
    run_main(main, prog="python -m marginnce_kit.evaluate")
