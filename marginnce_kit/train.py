"""Train a baseline (LVS, EZ-VSL or the reference model) with marginNCE and evaluate it.

    python -m marginnce_kit.train --model reference --margin -0.2 \
        --train-root data/vggsound --train-list metadata/vggss_144k.txt \
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json \
        --out runs/reference_m-0.2
    python -m marginnce_kit.train --config runs/reference_m-0.2/config.json --out runs/again   # repeat a run
    python -m marginnce_kit.train --config runs/reference_m-0.2/config.json --seed 1 --print-config
    torchrun --nproc_per_node N -m marginnce_kit.train --device cuda ... --out runs/ddp   # DDP, global --batch-size

Writes into ``--out`` (:class:`marginnce_kit.layout.RunLayout`): ``config.json`` (the effective config and the
run's provenance), ``checkpoint.pt`` (every epoch, atomically; ``torch.load(..., weights_only=True)``),
``best_val.pt`` (with ``--val-list``: the best epoch on the validation split), ``metrics.jsonl`` (one line per
epoch: loss, learning rate, validation, the mechanism's measures on embedded data; then the final evaluation),
``curves.png``, ``final.json`` and, with ``--tensorboard``, TensorBoard logs. ``--config`` reads a run's
``config.json`` (or a YAML file of config fields) as the defaults, the other flags override them;
``--print-config`` prints the config the flags make, as JSON, and exits. A folder that holds a run is continued
with ``--resume`` or replaced with ``--overwrite``, never silently. Every random draw of an epoch is a function of
``(seed, epoch)``, so a run is bit for bit reproducible on one CPU type and ``--resume`` reaches the weights of an
uninterrupted run. Errors the user can fix are one line on stderr, exit status 1. The docs' training page has the
rest: failures, effective settings and provenance, reproducibility, and what DDP does (global-batch negatives for
EZ-VSL and the reference model, SyncBatchNorm on CUDA, evaluation sharded over the ranks).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .cli import UsageError, make_parser, one_line, run_main
from .data.datasets import DataError
from .io import atomic_save, atomic_write_text
from .training.checkpoint import CheckpointNotFoundError, load_checkpoint, load_model, save_checkpoint
from .training.config import RECORD_KEYS, RESUME_INDEPENDENT, ConfigError, TrainConfig
from .training.loop import RUN_FILES, RunExistsError, build_test_set, build_train_model, build_train_set, train
from .training.options import (
    add_config_arguments,
    add_data_arguments,
    check_paths,
    config_file_values,
    config_from_args,
    data_error,
)
from .training.records import plot_curves, provenance
from .training.runtime import check_runnable, effective_config
from .training.sampler import GlobalBatchSampler
from .training.schedule import LR_SCHEDULES, lr_at_step
from .training.step import NonFiniteLossError, build_optimizer, make_train_loader, train_one_epoch, train_step

__all__ = [
    "TrainConfig",
    "LR_SCHEDULES",
    "lr_at_step",
    "GlobalBatchSampler",
    "RESUME_INDEPENDENT",
    "RECORD_KEYS",
    "train",
    "train_step",
    "train_one_epoch",
    "build_optimizer",
    "make_train_loader",
    "main",
    "parse_args",
    "build_train_model",
    "build_train_set",
    "build_test_set",
    "atomic_save",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "add_data_arguments",
    "check_runnable",
    "check_paths",
    "data_error",
    "effective_config",
    "provenance",
    "plot_curves",
    "ConfigError",
    "RunExistsError",
    "CheckpointNotFoundError",
    "NonFiniteLossError",
    "RUN_FILES",
    "UsageError",
    "one_line",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of ``python -m marginnce_kit.train``: one per :class:`TrainConfig` field (derived from
    the config: :func:`marginnce_kit.training.options.add_config_arguments`), the defaults from ``--config``
    when given, plus the run's own."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default="")
    pre.add_argument("--print-config", action="store_true")
    known, _ = pre.parse_known_args(argv)
    defaults = config_file_values(known.config) if known.config else {}
    summary, _, details = (__doc__ or "").partition("\n")
    p = make_parser("marginnce_kit.train", summary, details)
    p.add_argument("--config", default="", metavar="PATH",
                   help="a run's config.json, or a YAML / JSON file of config fields: the defaults of every option")
    p.add_argument("--print-config", action="store_true", help="print the config these options make (JSON) and exit")
    add_config_arguments(p, defaults)
    p.add_argument("--out", required=not known.print_config, help="run folder (config, checkpoint, metrics, curves)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run --out holds (not with --resume)")
    p.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop after this epoch's checkpoint (continue later with --resume)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to --out/tensorboard")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (the per-epoch lines are printed either way)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marginnce_kit.train``; returns the exit status. Raises :class:`UsageError` for the user's
    errors (shown as one line by :func:`marginnce_kit.cli.run_main`)."""
    args = parse_args(argv)
    if args.print_config:
        print(json.dumps(asdict(config_from_args(args)), indent=2))
        return 0
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: not both",
                         "pass one of them")
    check_paths(args)
    config = config_from_args(args)
    try:
        final = train(config, Path(args.out), resume=args.resume, progress=args.progress,
                      stop_after_epoch=args.stop_after_epoch, overwrite=args.overwrite, tensorboard=args.tensorboard)
    except DataError as e:
        raise data_error(e) from e
    if "eval" in final and int(os.environ.get("RANK", "0")) == 0:
        scores = final["eval"]
        print(f"{config.model} margin {config.margin:+.2f}: cIoU {scores['ciou']:.2f}  AUC {scores['auc']:.2f}  "
              f"mean cIoU {scores['mean_ciou']:.2f}  (n = {scores['n']})")
    return 0


if __name__ == "__main__":
    run_main(main, prog="python -m marginnce_kit.train")
