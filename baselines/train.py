"""Train a baseline (LVS, EZ-VSL or the reference model) with marginNCE and evaluate it.

    python -m baselines.train --model reference --margin -0.2 \\
        --train-root data/vggsound --train-list metadata/vggss_144k.txt \\
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json \\
        --out runs/reference_m-0.2

Data-parallel on N GPUs of one machine (the same command under torchrun; ``--batch-size`` is the
global batch, split evenly over the ranks)::

    torchrun --nproc_per_node N -m baselines.train --device cuda ... --out runs/reference_m-0.2

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
occupied ``--out``) are one line on stderr with exit status 1 (:mod:`baselines.cli`).

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
  reads the checkpoint on ``--resume``: on several machines ``--out`` must be a shared folder); every
  rank evaluates (the same numbers, in the same time, so no rank idles at a barrier); broken
  clips met on any rank are merged into every rank's failure count before the threshold check,
  so all ranks stop together.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .cli import HelpFormatter, UsageError, one_line, run_main
from .data.datasets import DataError, derive_seed
from .models import BACKBONES, MODELS, NORMS, AudioVisualModel, ModelConfig, build_model

__all__ = [
    "TrainConfig",
    "GlobalBatchSampler",
    "RESUME_INDEPENDENT",
    "train",
    "main",
    "build_train_model",
    "build_train_set",
    "build_test_set",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "add_data_arguments",
    "effective_config",
    "provenance",
    "plot_curves",
    "ConfigError",
    "RunExistsError",
    "CheckpointNotFoundError",
    "NonFiniteLossError",
    "RUN_FILES",
]

#: Config fields that do not change what a run computes; ``--resume`` accepts a different value
#: (``visual_weights``: a resumed run reads every weight from the checkpoint).
RESUME_INDEPENDENT = ("workers", "visual_weights")

#: The files (and folder) of ``--out`` that make up a run; any of the first four means "holds a run".
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.jsonl", "final.json", "curves.png", "tensorboard")

#: Keys of ``config.json`` that are a record about the run, not config fields.
RECORD_KEYS = ("provenance",)


class ConfigError(UsageError, ValueError):
    """A config value that cannot run here (a ``ValueError`` to library callers; one line from the CLI)."""


class RunExistsError(UsageError, FileExistsError):
    """``out`` already holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


class CheckpointNotFoundError(UsageError, FileNotFoundError):
    """``resume`` without a checkpoint in ``out``, or a checkpoint path that does not exist."""


class NonFiniteLossError(UsageError, FloatingPointError):
    """The loss of a step was NaN or infinite; the message names the epoch, the step and the batch's clips."""


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` beside the checkpoint.

    ``batch_size`` is the global batch (split evenly over DDP ranks); ``norm`` picks the backbones'
    normalisation (``"batch"`` or the batch-independent ``"group"``); ``sync_batchnorm`` converts
    BatchNorm to SyncBatchNorm under DDP on CUDA; ``gather_distributed`` gives ``ezvsl`` and
    ``reference`` the negatives of every rank under DDP. See the module docstring."""

    model: str = "reference"
    margin: float = -0.2
    backbone: str = "resnet18"
    dim: int = 512
    width: int = 64
    pretrained: bool = False
    train_root: str = ""
    train_list: str = ""
    test_root: str = ""
    test_list: str = ""
    annotations: str = ""
    annotation_format: str = "vggss"
    epochs: int = 20
    batch_size: int = 128  # the global batch (all ranks together)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    amp: bool = True
    max_failures: float = 0.01
    eval_every: int = 0  # 0: evaluate once at the end
    cache: bool = False  # keep decoded clips in memory (small datasets)
    gather_distributed: bool = True  # global-batch negatives under DDP (ezvsl, reference)
    limit_steps: int = 0  # > 0: stop each epoch after this many batches (smoke runs and tests)
    norm: str = "batch"  # "batch" | "group" (see baselines.models)
    sync_batchnorm: bool = True  # under DDP on CUDA: BatchNorm -> SyncBatchNorm
    visual_weights: str = ""  # with pretrained: a local ImageNet ResNet-18 state dict ("" = torchvision's cache)

    def model_config(self, distributed: bool = False) -> ModelConfig:
        return ModelConfig(model=self.model, margin=self.margin, backbone=self.backbone, dim=self.dim,
                           pretrained=self.pretrained, width=self.width, norm=self.norm,
                           gather_distributed=distributed and self.gather_distributed,
                           visual_weights=self.visual_weights)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """From ``asdict(config)`` or ``config.json`` (whose ``provenance`` record is not a config field);
        keys missing there take today's defaults."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in RECORD_KEYS}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}")
        return cls(**d)


def effective_config(config: TrainConfig) -> Tuple[TrainConfig, Dict[str, Any]]:
    """``(config as it applies on config.device, {field: requested value} of what did not apply)``:
    ``amp`` (bfloat16 autocast) is CUDA-only; ``sync_batchnorm`` is CUDA-only and needs ``norm="batch"``."""
    on_cuda = config.device == "cuda"
    applied = {"amp": config.amp and on_cuda,
               "sync_batchnorm": config.sync_batchnorm and on_cuda and config.norm == "batch"}
    not_applied = {k: getattr(config, k) for k, v in applied.items() if getattr(config, k) != v}
    return replace(config, **applied), not_applied


def _git(args: Sequence[str], cwd: Path) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance(device: Optional[torch.device] = None, world_size: int = 1) -> Dict[str, Any]:
    """Which code and software ran: ``git_commit`` / ``git_dirty`` of the checkout holding this package
    (``None`` when it is not a git checkout, e.g. an installed copy, or git is missing; dirty = tracked
    files modified), ``python``, ``torch``, ``torchvision``, ``cuda`` / ``cudnn`` (``None`` without),
    ``device`` (the GPU's name or ``"cpu"``) and ``world_size``. Never raises."""
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top is not None and Path(top).resolve() == root:  # not an enclosing repository (a venv inside a checkout)
        commit = _git(["rev-parse", "HEAD"], root)
        status = _git(["status", "--porcelain", "--untracked-files=no"], root)
        dirty = None if status is None else bool(status)
    try:
        import torchvision

        tv: Optional[str] = str(torchvision.__version__)  # plain str (torch's TorchVersion is a str subclass)
    except ImportError:
        tv = None
    name = "cpu"
    if device is not None and device.type == "cuda":
        name = str(torch.cuda.get_device_name(device))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": str(torch.__version__), "torchvision": tv, "cuda": torch.version.cuda, "cudnn": cudnn, "device": name, "world_size": world_size}


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str = "cpu") -> Dict[str, Any]:
    """A checkpoint written by :func:`train`, read with ``weights_only=True`` (tensors and plain
    containers only: a downloaded checkpoint cannot run code).

    Raises:
        CheckpointNotFoundError: no file at ``path``.
        ConfigError: the file is not a checkpoint ``weights_only`` can read (another format, or one
            holding arbitrary objects).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint: no such file {str(path)!r}",
                                      "pass the checkpoint.pt of a baselines.train run folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError (objects refused), RuntimeError (not a torch file)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"checkpoint {str(path)!r}: cannot be read with weights_only=True ({type(e).__name__}: "
                          f"{first})", "pass a checkpoint.pt written by baselines.train") from e
    if not isinstance(state, dict) or not {"model", "config", "epoch"} <= set(state):
        raise ConfigError(f"checkpoint {str(path)!r}: expected a baselines.train checkpoint (keys model, config, "
                          f"epoch), got {sorted(state) if isinstance(state, dict) else type(state).__name__}")
    return state


# --------------------------------------------------------------------------- validation

_STR_FIELDS = ("model", "backbone", "norm", "train_root", "train_list", "test_root", "test_list", "annotations",
               "annotation_format", "device", "visual_weights")
_BOOL_FIELDS = ("pretrained", "amp", "cache", "gather_distributed", "sync_batchnorm")
_INT_FIELDS = {"dim": 1, "width": 2, "epochs": 1, "batch_size": 2, "seed": 0, "workers": 0, "eval_every": 0,
               "limit_steps": 0}  # name -> smallest allowed value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config(c: TrainConfig, world_size: int = 1) -> None:
    """Raise ``TypeError`` / :class:`ConfigError` (a ``ValueError``) naming the field, the expected and the
    received value."""
    if not isinstance(c, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(c).__name__}")
    for name in _STR_FIELDS:
        v = getattr(c, name)
        if not isinstance(v, str):
            raise TypeError(f"{name}: expected a str, got {type(v).__name__} {v!r}")
    for name in _BOOL_FIELDS:
        v = getattr(c, name)
        if not isinstance(v, bool):
            raise TypeError(f"{name}: expected a bool, got {type(v).__name__} {v!r}")
    for name, low in _INT_FIELDS.items():
        v = getattr(c, name)
        if not _is_int(v) or v < low:
            raise ConfigError(f"{name}: expected an int >= {low}, got {v!r}")
    if not _is_real(c.margin):
        raise ConfigError(f"margin: expected a finite float, got {c.margin!r}")
    if not _is_real(c.lr) or c.lr <= 0:
        raise ConfigError(f"lr: expected a finite float > 0, got {c.lr!r}")
    if not _is_real(c.weight_decay) or c.weight_decay < 0:
        raise ConfigError(f"weight_decay: expected a finite float >= 0, got {c.weight_decay!r}")
    mf = c.max_failures
    if not ((isinstance(mf, float) and 0.0 <= mf < 1.0) or (_is_int(mf) and mf >= 0)):
        raise ConfigError(f"max_failures: expected a fraction in [0, 1) or a count >= 0, got {mf!r}")
    if c.device not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected 'cpu' or 'cuda', got {c.device!r}")
    if c.annotation_format not in ("vggss", "flickr"):
        raise ConfigError(f"annotation_format: expected 'vggss' or 'flickr', got {c.annotation_format!r}")
    try:
        c.model_config()  # the model's own checks: model, backbone, norm, dim, width, pretrained, visual_weights
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for name in ("train_root", "train_list"):
        if not getattr(c, name):
            raise ConfigError(f"{name}: expected a path, got nothing")
    if c.test_list and not (c.test_root and c.annotations):
        raise ConfigError(f"test_list: evaluation also needs test_root and annotations, got test_root={c.test_root!r} "
                         f"and annotations={c.annotations!r}")
    if c.batch_size % world_size:
        raise ConfigError(f"batch_size: expected a multiple of the world size {world_size} (the global batch is split "
                         f"evenly over the ranks), got {c.batch_size}")
    if c.model == "lvs" and world_size > 1 and c.batch_size // world_size < 2:
        raise ConfigError(f"batch_size: lvs takes its negatives from the rank-local batch and needs >= 2 clips per rank, "
                         f"got {c.batch_size} over {world_size} ranks")


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if config.device == "cuda" else torch.device("cpu")


# --------------------------------------------------------------------------- distributed


class _Distributed:
    """This process's place in the job: an existing process group, one created from torchrun's
    environment (``WORLD_SIZE > 1``; destroyed by :meth:`close`), or a single process."""

    def __init__(self, device: str) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.owns_group = False
        available = dist.is_available()
        if not (available and dist.is_initialized()) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not available:
                raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
            if device == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
            self.owns_group = True
        initialised = available and dist.is_initialized()
        self.rank = dist.get_rank() if initialised else 0
        self.world_size = dist.get_world_size() if initialised else 1
        self.enabled = self.world_size > 1
        if "LOCAL_RANK" in os.environ:
            self.local_rank = int(os.environ["LOCAL_RANK"])
        elif self.enabled and device == "cuda" and torch.cuda.is_available():
            self.local_rank = self.rank % torch.cuda.device_count()
        else:
            self.local_rank = 0
        # small per-step collectives travel on the backend's device
        self.comm_device = torch.device("cpu")
        if self.enabled and device == "cuda" and "nccl" in str(dist.get_backend()):
            self.comm_device = torch.device("cuda", self.local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            self.dist.barrier()

    def mean(self, value: float) -> float:
        """Mean of ``value`` over the ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        self.dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def step_plan(self, items: int, failed: int) -> Tuple[int, int, int]:
        """``(ranks without items, items of the global batch, failed clips in it)``: every rank sees the
        same numbers, so all take the same step or all skip it."""
        t = torch.tensor([int(items == 0), items, failed], dtype=torch.int64, device=self.comm_device)
        if self.enabled:
            self.dist.all_reduce(t)
        empty, total, bad = (int(v) for v in t.tolist())
        return empty, total, bad

    def gather(self, obj: Any) -> List[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        gathered: List[Any] = [None] * self.world_size
        self.dist.all_gather_object(gathered, obj)
        return gathered

    def merge_failures(self, tracker: Any) -> None:
        """Record every rank's failed clips in this rank's ``DataFailureTracker``."""
        if not self.enabled or tracker is None:
            return
        gathered: List[Optional[Dict[str, str]]] = [None] * self.world_size
        self.dist.all_gather_object(gathered, tracker.failed)
        for failed in gathered:
            for clip_id, reason in (failed or {}).items():
                tracker.record(clip_id, reason)

    def close(self) -> None:
        if self.owns_group and self.dist.is_initialized():
            self.dist.destroy_process_group()
        self.owns_group = False


class GlobalBatchSampler(Sampler[List[int]]):
    """The trainer's ``DistributedSampler``: one seeded permutation per epoch, cut into global batches,
    each rank taking its contiguous share of every global batch (a batch sampler: it yields index lists).

    Epoch ``e``: ``perm = randperm(size, generator=Generator().manual_seed(derive_seed(seed, "sampler", e)))``
    (``arange(size)`` with ``shuffle=False``); global batch ``k = perm[k B : (k + 1) B]`` for
    ``k < size // B`` (the incomplete tail is dropped, as ``drop_last=True``); rank ``r`` of ``W`` yields
    ``global_batch_k[r B / W : (r + 1) B / W]``. The ranks' batches of step ``k``, concatenated in rank
    order, are the single-process (``W = 1``) batch ``k``: the same clips in the same order. The
    permutation depends on ``(seed, epoch)`` only, so a resumed run sees the same batches.

    Args:
        size: number of items of the dataset.
        batch_size: global batch ``B``, a multiple of ``world_size``.
        world_size, rank: ``W`` and ``r``.
        seed: run seed.
        shuffle: permute every epoch (else the natural order).
    """

    def __init__(self, size: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__()
        for name, v, low in (("size", size, 0), ("batch_size", batch_size, 1), ("world_size", world_size, 1),
                             ("rank", rank, 0), ("seed", seed, 0)):
            if not _is_int(v) or v < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
        if rank >= world_size:
            raise ValueError(f"rank: expected an int < world_size = {world_size}, got {rank}")
        if batch_size % world_size:
            raise ValueError(f"batch_size: expected a multiple of world_size = {world_size}, got {batch_size}")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle: expected a bool, got {type(shuffle).__name__} {shuffle!r}")
        self.size, self.batch_size, self.world_size, self.rank = size, batch_size, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def global_batches(self) -> List[List[int]]:
        """This epoch's global batches (every rank's items), ``len(self)`` lists of ``batch_size`` indices."""
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "sampler", self.epoch))
            perm = torch.randperm(self.size, generator=g).tolist()
        else:
            perm = list(range(self.size))
        b = self.batch_size
        return [perm[k * b:(k + 1) * b] for k in range(len(self))]

    def __iter__(self) -> Iterator[List[int]]:
        share = self.batch_size // self.world_size
        for batch in self.global_batches():
            yield batch[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return self.size // self.batch_size


# --------------------------------------------------------------------------- building blocks


def build_train_model(config: TrainConfig, distributed: bool = False,
                      device: torch.device | str = "cpu", load_pretrained: bool = True) -> AudioVisualModel:
    """The model a run trains: initialised from ``config.seed`` alone (the caller's global RNG state is
    left as it was), on ``device``; with ``distributed`` the loss gathers negatives across ranks
    (``config.gather_distributed``) and, on CUDA, BatchNorm becomes SyncBatchNorm
    (``config.sync_batchnorm``). The state dict has the same keys in every case.
    ``load_pretrained=False``: skip reading the ImageNet weights (a resumed run loads every weight)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model_config(distributed=distributed), load_pretrained=load_pretrained)
    if distributed and device.type == "cuda" and config.sync_batchnorm and config.norm == "batch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def build_train_set(c: TrainConfig) -> Dataset:
    from .data import AudioVisualDataset, load_id_list

    return AudioVisualDataset(c.train_root, load_id_list(c.train_list), split="train",
                              max_failures=c.max_failures, cache=c.cache)


def build_test_set(root: str, test_list: str, annotations: str, annotation_format: str = "vggss",
                   max_failures: float = 0.01, cache: bool = False) -> Dataset:
    """The annotated test split the evaluator reads."""
    from .data import AudioVisualDataset, load_annotations, load_id_list

    ids = load_id_list(test_list)
    boxes = load_annotations(annotations, annotation_format, ids)
    return AudioVisualDataset(root, ids, split="test", annotations=boxes, annotation_format=annotation_format,
                              max_failures=max_failures, cache=cache)


def _log(out: Path, record: Dict[str, Any]) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _restore(config: TrainConfig, ckpt_path: Path) -> Dict[str, Any]:
    if not ckpt_path.exists():
        raise CheckpointNotFoundError(f"resume: expected a checkpoint at {ckpt_path}, found none",
                                      "drop --resume to start a new run")
    state = load_checkpoint(ckpt_path)
    # as they apply on the device (a checkpoint written before configs were recorded so says amp=True on CPU)
    saved = asdict(effective_config(TrainConfig.from_dict(state["config"]))[0])
    now = asdict(effective_config(config)[0])
    diff = {k: (v, now[k]) for k, v in saved.items() if now[k] != v and k not in RESUME_INDEPENDENT}
    if diff:
        raise ConfigError(f"resume: the checkpoint's config differs from this run's ({{field: (checkpoint, now)}}): "
                          f"{diff}", "pass the checkpoint's values, or another --out for a new run")
    return state


def _held_run(out: Path) -> List[str]:
    """The run files in ``out`` that mark it as holding a run."""
    return [name for name in RUN_FILES[:4] if (out / name).exists()]


def _nonfinite_tensors(state: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _epoch_line(record: Dict[str, Any], epochs: int) -> str:
    loss = "n/a" if record["loss"] is None else f"{record['loss']:.4f}"
    line = (f"epoch {record['epoch']}/{epochs}  loss {loss}  lr {record['lr']:.3g}  {record['seconds']:.1f} s  "
            f"steps {record['steps']}  skipped {record['skipped_batches']}  failed clips {record['data_failures']}")
    if "eval" in record:
        e = record["eval"]
        line += f"  eval: cIoU {e['ciou']:.2f}  AUC {e['auc']:.2f}  (n = {e['n']})"
    return line


def plot_curves(history: Sequence[Dict[str, Any]], path: Path, final_eval: Optional[Dict[str, Any]] = None,
                epochs: Optional[int] = None, title: str = "") -> None:
    """Write the training curves to ``path`` (PNG, atomically): the epoch's mean training loss and, when
    any evaluation ran (``--eval-every``, the final one at epoch ``epochs``), cIoU and AUC (%) against
    the epoch. ``history``: the ``metrics.jsonl`` epoch records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["epoch"], r["loss"]) for r in history if r.get("loss") is not None]
    evals = [(r["epoch"], r["eval"]) for r in history if "eval" in r]
    if final_eval is not None:
        evals.append((epochs if epochs is not None else (history[-1]["epoch"] if history else 0), final_eval))
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11}):
        fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(10.0 if evals else 5.5, 4.0), squeeze=False)
        ax = axes[0, 0]
        if points:
            ax.plot(*zip(*points), marker="o", color="tab:blue")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (epoch mean)")
        ax.set_title("loss")
        ax.grid(alpha=0.3)
        if evals:
            ax = axes[0, 1]
            xs = [e for e, _ in evals]
            ax.plot(xs, [r["ciou"] for _, r in evals], marker="o", label="cIoU", color="tab:green")
            ax.plot(xs, [r["auc"] for _, r in evals], marker="s", label="AUC", color="tab:orange")
            ax.set_xlabel("epoch")
            ax.set_ylabel("%")
            ax.set_title("test localisation")
            ax.legend()
            ax.grid(alpha=0.3)
        for a in axes.flat:
            a.xaxis.get_major_locator().set_params(integer=True)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
    os.replace(tmp, path)


class _Scalars:
    """TensorBoard scalars in ``<out>/tensorboard`` (rank 0, with ``tensorboard=True``); otherwise inert.
    Flushed after every epoch, so a run stopped by an error keeps what it logged."""

    def __init__(self, log_dir: Optional[Path], purge_step: Optional[int]) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def epoch(self, record: Dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = record["epoch"]
        if record["loss"] is not None:
            self.writer.add_scalar("train/loss", record["loss"], step)
        self.writer.add_scalar("train/lr", record["lr"], step)
        self.writer.add_scalar("train/seconds", record["seconds"], step)
        self.writer.add_scalar("data/failed_clips", record["data_failures"], step)
        if "eval" in record:
            self.eval(record["eval"], step)
        self.writer.flush()

    def eval(self, result: Dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key in ("ciou", "auc", "mean_ciou"):
            self.writer.add_scalar(f"eval/{key}", result[key], step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--tensorboard needs the tensorboard package ({e})",
                         "pip install tensorboard (it is in the [baselines] extra), or drop --tensorboard") from e


# --------------------------------------------------------------------------- training


def train(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
          train_set: Optional[Dataset] = None, test_set: Optional[Dataset] = None,
          stop_after_epoch: Optional[int] = None, overwrite: bool = False, tensorboard: bool = False,
          log_epochs: bool = True) -> Dict[str, Any]:
    """Train, checkpoint every epoch, evaluate; returns the final record (also ``out/final.json``):
    ``{"config": asdict(effective config), "provenance": {...}, "epochs_completed": int,
    "failed_clips": {"train": {id: reason}, ["test": {...}]}, ["eval": {...}]}``.

    Args:
        config: the run (validated here: ``TypeError`` / :class:`ConfigError` naming the field). What
            the run records and computes is :func:`effective_config` of it.
        out: output folder (created once the config, data and model are checked).
        resume: continue from ``out/checkpoint.pt`` (its config must equal the effective config except
            for :data:`RESUME_INDEPENDENT` fields).
        progress: progress bars (rank 0).
        train_set, test_set: prebuilt datasets (a study reuses its decoded clips across runs); by
            default they are built from the config's paths. A ``train_set`` with ``set_epoch(epoch,
            seed)`` (``AudioVisualDataset``) gets it called before every epoch.
        stop_after_epoch: return after this epoch's checkpoint, without the final evaluation and
            without ``final.json`` (the record then has ``"stopped": True``); ``--resume`` continues.
            Not part of the config: it changes when the process stops, not what the run computes.
        overwrite: replace the run ``out`` holds (its run files are deleted once the new run is checked).
        tensorboard: also write TensorBoard scalars to ``out/tensorboard`` (rank 0).
        log_epochs: print one line per epoch (rank 0), whatever ``progress``.

    Raises:
        ConfigError: a config value that cannot run here (also a ``ValueError``).
        RunExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointNotFoundError: ``resume`` without ``out/checkpoint.pt``.
        baselines.data.DataError: more clips of a split are missing or broken than
            ``max_failures`` allows (the message names them); under DDP on every rank alike.
        NonFiniteLossError: a step's loss is NaN or infinite (the message names the batch's clips);
            the last checkpoint is left as it was.
        baselines.models.WeightsUnavailableError: ``pretrained`` without reachable ImageNet weights.
    """
    from tqdm.auto import tqdm

    from .data import collate
    from .evaluate import evaluate_model

    if stop_after_epoch is not None and (not _is_int(stop_after_epoch) or stop_after_epoch < 1):
        raise ValueError(f"stop_after_epoch: expected None or an int >= 1, got {stop_after_epoch!r}")
    _check_config(config)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'",
                          "pass --device cpu")
    out = Path(out)
    if not resume and not overwrite and _held_run(out):
        raise RunExistsError(f"--out {out} already holds a run ({', '.join(_held_run(out))})",
                             "pass --resume to continue it, --overwrite to replace it, or another --out")
    if tensorboard:
        _check_tensorboard()
    config, not_applied = effective_config(config)
    dist = _Distributed(config.device)
    try:
        _check_config(config, dist.world_size)
        device = _device(config, dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        meta = {"provenance": {**provenance(device, dist.world_size), "not_applied": not_applied}}
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            return _train(config, out, resume, progress, train_set, test_set, stop_after_epoch, dist, device,
                          tqdm, collate, evaluate_model, meta, tensorboard, log_epochs)
    finally:
        dist.close()


def _train(config: TrainConfig, out: Path, resume: bool, progress: bool, train_set: Optional[Dataset],
           test_set: Optional[Dataset], stop_after_epoch: Optional[int], dist: _Distributed, device: torch.device,
           tqdm: Any, collate: Any, evaluate_model: Any, meta: Dict[str, Any], tensorboard: bool,
           log_epochs: bool) -> Dict[str, Any]:
    # 1. check everything that can fail before anything is written: checkpoint, model, data, batch size
    ckpt_path = out / "checkpoint.pt"
    start_epoch = 0
    history: List[Dict[str, Any]] = []
    state = _restore(config, ckpt_path) if resume else None
    model = build_train_model(config, dist.enabled, device, load_pretrained=state is None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        history = list(state.get("history", []))
    if train_set is None:
        train_set = build_train_set(config)
    if test_set is None and config.test_list:
        test_set = build_test_set(config.test_root, config.test_list, config.annotations, config.annotation_format,
                                  config.max_failures, config.cache)
    sampler = GlobalBatchSampler(len(train_set), config.batch_size, dist.world_size, dist.rank, config.seed)  # type: ignore[arg-type]
    if len(sampler) == 0:
        n = len(train_set)  # type: ignore[arg-type]
        raise ConfigError(f"batch_size: expected at most the {n} clips of the train set (one global batch per step), "
                          f"got {config.batch_size}", f"pass --batch-size <= {n}")
    tracker = getattr(train_set, "failures", None)
    if tracker is not None and history:  # the clips that failed before the checkpoint still count
        for clip_id, reason in history[-1].get("failed_clips", {}).items():
            tracker.record(clip_id, reason)
    dist.barrier()  # every rank has checked the folder before rank 0 writes into it

    # 2. the run folder
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if state is not None:
            if "history" in state:  # the log as it was at the checkpoint (drops later lines)
                atomic_write_text("".join(json.dumps(r) + "\n" for r in history), out / "metrics.jsonl")
        else:
            for name in RUN_FILES:  # an --overwrite: nothing of the old run stays beside the new one
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            atomic_write_text(json.dumps({**asdict(config), **meta}, indent=2), out / "config.json")
    dist.barrier()
    if stop_after_epoch is not None and stop_after_epoch <= start_epoch < config.epochs:
        return {"config": asdict(config), "epochs_completed": start_epoch, "stopped": True}

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    set_epoch = getattr(train_set, "set_epoch", None)
    scalars = _Scalars(out / "tensorboard" if tensorboard and dist.is_main else None,
                       purge_step=start_epoch + 1 if state is not None else None)

    def evaluate(show: bool) -> Dict[str, Any]:
        # every rank evaluates (same numbers, same time), so none idles at a barrier meanwhile
        return evaluate_model(model, test_set, device, config.batch_size, config.workers,  # type: ignore[arg-type]
                              progress=show and dist.is_main)

    def failed_clips() -> Dict[str, Dict[str, str]]:
        found = {"train": tracker.failed if tracker is not None else {}}
        test_failures = getattr(test_set, "failures", None)
        if test_failures is not None:
            found["test"] = test_failures.failed
        return found

    def curves(final_eval: Optional[Dict[str, Any]] = None) -> None:
        if dist.is_main:
            plot_curves(history, out / "curves.png", final_eval, config.epochs,
                        title=f"{config.model}, margin {config.margin:+.2f}")

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(derive_seed(config.seed, "torch", epoch))  # any stray global-RNG use: (seed, epoch)
        sampler.set_epoch(epoch)
        if callable(set_epoch):
            set_epoch(epoch, config.seed)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate,
                            generator=torch.Generator().manual_seed(derive_seed(config.seed, "loader", epoch, dist.rank)),
                            pin_memory=device.type == "cuda")
        net.train()
        lr = float(optimizer.param_groups[0]["lr"])
        loss_sum, steps, skipped, t0 = 0.0, 0, 0, time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and dist.is_main),
                   leave=False, dynamic_ncols=True)
        for batch in bar:
            if config.limit_steps and steps + skipped >= config.limit_steps:
                break
            items = 0 if batch is None else int(batch["image"].shape[0])
            failed = 1 if batch is None else len(batch["failures"])  # a None batch had only failures
            empty_ranks, total_items, total_failed = dist.step_plan(items, failed)
            if total_failed and tracker is not None:
                dist.merge_failures(tracker)
                tracker.check()  # raises DataError past the threshold (on every rank alike)
            if empty_ranks or total_items < 2:
                skipped += 1
                continue
            image = batch["image"].to(device, non_blocking=True)
            spec = batch["spectrogram"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                loss, _ = net(image, spec)
            # the mean over ranks of a rank's loss is the global-batch loss (marginnce_loss.distributed);
            # NaN on any rank makes it NaN on every rank, so all stop together, before any update
            step_loss = dist.mean(float(loss.detach()))
            if not math.isfinite(step_loss):
                ids = [i for rank_ids in dist.gather(list(batch["id"])) for i in rank_ids]
                kept = (f"the checkpoint of epoch {history[-1]['epoch']} ({ckpt_path}) is kept" if history
                        else "no checkpoint was written")
                raise NonFiniteLossError(
                    f"epoch {epoch + 1}, step {steps + skipped + 1}: the loss is {step_loss} on the batch of clips "
                    f"{ids}; {kept}",
                    "check these clips (python -m baselines.prepare --verify ROOT --ids LIST) and drop the broken "
                    "ones, or lower --lr")
            loss.backward()
            optimizer.step()
            loss_sum += step_loss
            steps += 1
            bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
        bar.close()
        if tracker is not None:
            dist.merge_failures(tracker)
            tracker.check()
        bad = _nonfinite_tensors(model.state_dict())
        if bad:  # never reached through a finite loss in practice; never saved either way
            raise NonFiniteLossError(f"epoch {epoch + 1}: non-finite weights in {bad[:5]} after a finite loss; "
                                     f"the previous checkpoint ({ckpt_path}) is kept", "lower --lr")
        record = {"epoch": epoch + 1, "loss": loss_sum / steps if steps else None, "lr": lr, "steps": steps,
                  "skipped_batches": skipped, "seconds": round(time.time() - t0, 3),
                  "data_failures": tracker.count if tracker is not None else 0,
                  "failed_clips": tracker.failed if tracker is not None else {}}
        if test_set is not None and config.eval_every and (epoch + 1) % config.eval_every == 0 \
                and epoch + 1 < config.epochs:
            record["eval"] = evaluate(False)
        history.append(record)
        if dist.is_main:
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                         "config": asdict(config), "history": history}, ckpt_path)
            _log(out, record)
            scalars.epoch(record)
            curves()
            if log_epochs:
                print(_epoch_line(record, config.epochs), flush=True)
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            scalars.close()
            return {"config": asdict(config), "epochs_completed": epoch + 1, "stopped": True}

    final: Dict[str, Any] = {"config": asdict(config), **meta, "epochs_completed": config.epochs}
    if test_set is not None:
        final["eval"] = evaluate(progress)
    final["failed_clips"] = failed_clips()
    if dist.is_main:
        if "eval" in final:
            _log(out, {"final_eval": final["eval"]})
            scalars.eval(final["eval"], config.epochs)
        curves(final.get("eval"))
        atomic_write_text(json.dumps(final, indent=2), out / "final.json")
    dist.barrier()
    scalars.close()
    return final


# --------------------------------------------------------------------------- command line


def add_data_arguments(p: argparse.ArgumentParser, train: bool = True) -> None:
    if train:
        p.add_argument("--train-root", required=True, help="folder with frames/<id>.jpg and audio/<id>.wav")
        p.add_argument("--train-list", required=True, help="training ids, one per line (e.g. vggss_144k.txt)")
    p.add_argument("--test-root", default="", help="test folder (frames/, audio/)")
    p.add_argument("--test-list", default="", help="test ids (e.g. vggss_test.csv)")
    p.add_argument("--annotations", default="", help="vggss.json, or the SoundNet-Flickr XML folder")
    # evaluation without --annotation-format reads the format from the checkpoint's config
    p.add_argument("--annotation-format", default="vggss" if train else None, choices=("vggss", "flickr"),
                   help="annotation format" + ("" if train else " (None: the checkpoint's)"))


def check_paths(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for a data path given on the command line that does not exist
    (relative paths are read from the working directory)."""
    data_fix = "pass a folder written by `python -m baselines.prepare --out ROOT` (with frames/ and audio/)"
    for flag, kind in (("train_root", "root"), ("train_list", "file"), ("test_root", "root"),
                       ("test_list", "file"), ("annotations", "any")):
        value = getattr(args, flag, "")
        if not value:
            continue
        path, option = Path(value), "--" + flag.replace("_", "-")
        where = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
        if not path.exists():
            raise UsageError(f"{option}: no such {'folder' if kind == 'root' else 'file'} {value!r}{where}",
                             data_fix if kind == "root" else f"check the path given to {option}")
        if kind == "file" and not path.is_file():
            raise UsageError(f"{option}: expected a file, got the folder {value!r}",
                             f"check the path given to {option}")
        if kind == "root":
            missing = [d for d in ("frames", "audio") if not (path / d).is_dir()]
            if missing:
                raise UsageError(f"{option}: {value!r} has no {' and no '.join(d + '/' for d in missing)} folder",
                                 data_fix)


def data_error(e: DataError) -> UsageError:
    """The one-line form of a :class:`baselines.data.DataError` (too many broken clips), with the fix."""
    return UsageError(one_line(str(e)),
                      "drop these ids from the list (`python -m baselines.prepare --verify ROOT --ids LIST "
                      "--write-clean CLEAN` writes the list without them) or raise --max-failures")


def _fraction_or_count(text: str) -> float | int:
    """``"0.01"`` -> the fraction 0.01, ``"3"`` -> the count 3 (``DataFailureTracker``'s two forms)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m baselines.train", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", choices=MODELS, default=d.model, help="the method (Table 5's rows)")
    p.add_argument("--margin", type=float, default=d.margin, help="marginNCE margin m (0: InfoNCE)")
    p.add_argument("--backbone", choices=BACKBONES, default=d.backbone, help="encoders (small: CPU-sized)")
    p.add_argument("--dim", type=int, default=d.dim, help="projection width (ezvsl, reference)")
    p.add_argument("--width", type=int, default=d.width, help="first-stage width of --backbone small")
    p.add_argument("--norm", choices=NORMS, default=d.norm,
                   help="normalisation layers: batch (BatchNorm, the paper's) or group (GroupNorm, batch-independent)")
    p.add_argument("--pretrained", action="store_true",
                   help="ImageNet weights for the visual ResNet-18 (torchvision's cache, downloaded when absent, "
                        "or --visual-weights)")
    p.add_argument("--visual-weights", default=d.visual_weights, metavar="PATH",
                   help="with --pretrained: a local torchvision ResNet-18 state dict (no network needed)")
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (all ranks together)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")
    p.add_argument("--seed", type=int, default=d.seed, help="run seed (initialisation, order, augmentation)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--device", choices=("cpu", "cuda"), default=d.device, help="where to train")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bfloat16 autocast on CUDA")
    p.add_argument("--max-failures", type=_fraction_or_count, default=d.max_failures,
                   help="stop when more clips of a split are broken or missing than this fraction "
                        "(with a decimal point, in [0, 1)) or count (an integer)")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="evaluate every N epochs (0: once, at the end)")
    p.add_argument("--cache", action="store_true", help="keep decoded clips in memory")
    p.add_argument("--no-gather", dest="gather_distributed", action="store_false",
                   help="under torchrun: negatives from the local batch only")
    p.add_argument("--no-sync-batchnorm", dest="sync_batchnorm", action="store_false",
                   help="under torchrun on CUDA: keep per-rank BatchNorm statistics")
    p.add_argument("--limit-steps", type=int, default=0, help="> 0: at most this many batches per epoch")
    p.add_argument("--out", required=True, help="run folder (config, checkpoint, metrics, curves)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    run.add_argument("--overwrite", action="store_true", help="replace the run --out holds")
    p.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop after this epoch's checkpoint (continue later with --resume)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to --out/tensorboard")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (the per-epoch lines are printed either way)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m baselines.train``; returns the exit status. Raises :class:`UsageError` for the user's
    errors (shown as one line by :func:`baselines.cli.run_main`)."""
    args = parse_args(argv)
    check_paths(args)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    config = TrainConfig(**values)
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
    run_main(main, prog="python -m baselines.train")
