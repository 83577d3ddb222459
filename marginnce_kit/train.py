"""Train a baseline (LVS, EZ-VSL or the reference model) with marginNCE and evaluate it.

    python -m marginnce_kit.train --model reference --margin -0.2 \\
        --train-root data/vggsound --train-list metadata/vggss_144k.txt \\
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json \\
        --out runs/reference_m-0.2

Data-parallel on N GPUs of one machine (the same command under torchrun; ``--batch-size`` is the
global batch, split evenly over the ranks)::

    torchrun --nproc_per_node N -m marginnce_kit.train --device cuda ... --out runs/reference_m-0.2

Writes into ``--out``: ``config.json`` (the effective config and the run's provenance),
``checkpoint.pt`` (atomically, every epoch: model, optimiser, epoch, config, the epoch records; plain
tensors and containers, loaded with ``torch.load(..., weights_only=True)``), ``metrics.jsonl`` (one
JSON line per epoch, then the final evaluation), ``curves.png`` (loss, and cIoU / AUC where evaluated,
against the epoch; redrawn every epoch), ``final.json`` and, with ``--tensorboard``, TensorBoard
scalars in ``tensorboard/``. Every epoch also prints one line (loss, learning rate, time, failed
clips, evaluation when run), with or without ``--no-progress``.

Run folders. A folder that holds a run (``config.json``, ``checkpoint.pt``, ``metrics.jsonl`` or
``final.json``) is continued with ``--resume`` or replaced with ``--overwrite``, never silently.
Nothing is written before the config, the data and the model are checked: a broken data set or a
``--batch-size`` larger than the train set leaves ``--out`` as it was.

Effective settings and provenance. ``config.json``, the checkpoint and ``final.json`` record what
applies on this device: ``amp`` (bfloat16 autocast) and ``sync_batchnorm`` are false on CPU (and
``sync_batchnorm`` without BatchNorm); the requested values that did not apply are listed under
``provenance.not_applied``. ``provenance`` also holds the git commit and dirty flag of the checkout
the code runs from (``None`` outside a git checkout), the torch / torchvision / CUDA / cuDNN and
Python versions, the device name and the world size.

Failures. A non-finite loss stops the run at that step, before the optimiser step, naming the
epoch, the step and the clip ids of the global batch; the last checkpoint (the previous epoch's)
stays as it was, and no checkpoint holding non-finite weights is ever written. Clips that failed to
load are listed with their reasons (``failed_clips``: ``{id: reason}``, all failed so far) in every
``metrics.jsonl`` record and in ``final.json`` (``{"train": ..., "test": ...}``).

Command-line errors the user can fix (missing files, broken clips past ``--max-failures``, a batch
larger than the data, ``--device cuda`` without CUDA, ImageNet weights unavailable offline, an
occupied ``--out``) are one line on stderr with exit status 1 (:mod:`marginnce_kit.cli`).

Reproducibility. Every random draw of an epoch is a function of ``(seed, epoch)``, never of what
ran before: the order of the clips (one seeded permutation per epoch, :class:`GlobalBatchSampler`)
and each clip's crop and flip (``AudioVisualDataset.set_epoch``: a private generator per
``(seed, epoch, clip id)``, whichever process or DataLoader worker decodes the clip). Model
initialisation depends on ``seed`` only. Hence two runs of one config on one CPU machine (same
torch build and thread count; any ``--workers``) train to bitwise-identical weights, and
``--resume`` from an epoch's checkpoint (model, optimiser state, epoch records) reaches the same
weights and metrics as an uninterrupted run. (On CUDA, cuDNN's kernel choice and atomics can
differ between runs.) Checkpoints are per epoch: a run stopped mid-epoch repeats that epoch.

Distributed data parallel (``torchrun --nproc_per_node N`` sets ``WORLD_SIZE`` etc.; the trainer
then creates the process group, NCCL on CUDA and gloo on CPU, and destroys it at the end of the
run; a process group the caller created already is used as it is and left alive):

- the model is wrapped in ``DistributedDataParallel`` (gradients averaged over ranks);
- :class:`GlobalBatchSampler` (the trainer's ``DistributedSampler``) cuts every epoch's permutation
  into global batches of ``batch_size`` clips and gives rank ``r`` the ``r``-th contiguous
  ``batch_size / N`` of each, so the ranks' batches, concatenated, are exactly the single-process
  batch (``batch_size`` must be a multiple of ``N``);
- ``ezvsl`` and ``reference`` score their anchors against the negatives of every rank
  (``gather_distributed``, on by default; ``--no-gather`` for rank-local negatives), so the loss is
  the single-process loss of the global batch and, with DDP's averaging, so is the gradient (see
  :mod:`marginnce_loss.distributed`);
- ``lvs`` has no gathered form (upstream's per-batch diagonal handling): its negatives are the
  rank-local batch, and each rank needs ``batch_size / N >= 2`` clips;
- BatchNorm: on CUDA the model's BatchNorm layers become ``SyncBatchNorm`` (statistics of the
  global batch; ``--no-sync-batchnorm`` to keep per-rank statistics). SyncBatchNorm does not run
  on CPU, so CPU (gloo) DDP with ``--norm batch`` normalises with per-rank statistics, like plain
  DDP; ``--norm group`` (GroupNorm, batch-independent) makes CPU DDP compute exactly the
  single-process step of the global batch, up to float32 summation order;
- rank 0 alone writes ``config.json``, checkpoints, ``metrics.jsonl`` and ``final.json`` (every rank
  reads the checkpoint on ``--resume``: on several machines ``--out`` must be a shared folder); each
  rank scores a contiguous shard of the validation and test splits and every rank gets the whole
  result; broken clips met on any rank are merged into every rank's failure count before the
  threshold check, so all ranks stop together.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from .cli import HelpFormatter, UsageError, one_line, run_main
from .data.datasets import DataError
from .io import atomic_save, atomic_write_text
from .training.checkpoint import CheckpointNotFoundError, load_checkpoint, load_model, save_checkpoint
from .training.config import RECORD_KEYS, RESUME_INDEPENDENT, ConfigError, TrainConfig
from .training.loop import RUN_FILES, RunExistsError, build_test_set, build_train_model, build_train_set, train
from .training.options import add_config_arguments, add_data_arguments, check_paths, config_from_args, data_error
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
    the config: :func:`marginnce_kit.training.config.add_config_arguments`) plus the run's own."""
    p = argparse.ArgumentParser(prog="python -m marginnce_kit.train", description=__doc__, formatter_class=HelpFormatter)
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="run folder (config, checkpoint, metrics, curves)")
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
        e = final["eval"]
        print(f"{config.model} margin {config.margin:+.2f}: cIoU {e['ciou']:.2f}  AUC {e['auc']:.2f}  "
              f"mean cIoU {e['mean_ciou']:.2f}  (n = {e['n']})")
    return 0


if __name__ == "__main__":
    run_main(main, prog="python -m marginnce_kit.train")
