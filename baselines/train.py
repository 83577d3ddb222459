"""Train a baseline (LVS, EZ-VSL or the reference model) with marginNCE and evaluate it.

    python -m baselines.train --model reference --margin -0.2 \\
        --train-root data/vggsound --train-list metadata/vggss_144k.txt \\
        --test-root data/vggss --test-list metadata/vggss_test.csv --annotations metadata/vggss.json \\
        --out runs/reference_m-0.2

Data-parallel on N GPUs of one machine (the same command under torchrun; ``--batch-size`` is the
global batch, split evenly over the ranks)::

    torchrun --nproc_per_node N -m baselines.train --device cuda ... --out runs/reference_m-0.2

Writes into ``--out``: ``config.json``, ``checkpoint.pt`` (atomically, every epoch: model,
optimiser, epoch, config, the epoch records), ``metrics.jsonl`` (one JSON line per epoch, then the
final evaluation) and ``final.json``.

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
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .data.datasets import derive_seed
from .models import BACKBONES, MODELS, NORMS, AudioVisualModel, ModelConfig, build_model

__all__ = [
    "TrainConfig",
    "LR_SCHEDULES",
    "lr_at_step",
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
]

#: Config fields that do not change what a run computes; ``--resume`` accepts a different value.
RESUME_INDEPENDENT = ("workers",)


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
    lr_schedule: str = "constant"  # "constant" | "cosine" (per step, to 0 at the last step); see lr_at_step
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr over the first steps

    def model_config(self, distributed: bool = False) -> ModelConfig:
        return ModelConfig(model=self.model, margin=self.margin, backbone=self.backbone, dim=self.dim,
                           pretrained=self.pretrained, width=self.width, norm=self.norm,
                           gather_distributed=distributed and self.gather_distributed)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """From ``asdict(config)`` (e.g. ``config.json``); keys missing there take today's defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}")
        return cls(**d)


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
    return torch.load(path, map_location=map_location, weights_only=False)


# --------------------------------------------------------------------------- validation

_STR_FIELDS = ("model", "backbone", "norm", "train_root", "train_list", "test_root", "test_list", "annotations",
               "annotation_format", "device", "lr_schedule")
_BOOL_FIELDS = ("pretrained", "amp", "cache", "gather_distributed", "sync_batchnorm")
_INT_FIELDS = {"dim": 1, "width": 2, "epochs": 1, "batch_size": 2, "seed": 0, "workers": 0, "eval_every": 0,
               "limit_steps": 0, "warmup_steps": 0}  # name -> smallest allowed value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config(c: TrainConfig, world_size: int = 1) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the field, the expected and the received value."""
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
            raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
    if not _is_real(c.margin):
        raise ValueError(f"margin: expected a finite float, got {c.margin!r}")
    if not _is_real(c.lr) or c.lr <= 0:
        raise ValueError(f"lr: expected a finite float > 0, got {c.lr!r}")
    if not _is_real(c.weight_decay) or c.weight_decay < 0:
        raise ValueError(f"weight_decay: expected a finite float >= 0, got {c.weight_decay!r}")
    mf = c.max_failures
    if not ((isinstance(mf, float) and 0.0 <= mf < 1.0) or (_is_int(mf) and mf >= 0)):
        raise ValueError(f"max_failures: expected a fraction in [0, 1) or a count >= 0, got {mf!r}")
    if c.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {c.lr_schedule!r}")
    if c.device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {c.device!r}")
    if c.annotation_format not in ("vggss", "flickr"):
        raise ValueError(f"annotation_format: expected 'vggss' or 'flickr', got {c.annotation_format!r}")
    c.model_config()  # the model's own checks: model, backbone, norm, dim, width, pretrained
    for name in ("train_root", "train_list"):
        if not getattr(c, name):
            raise ValueError(f"{name}: expected a path, got nothing")
    if c.test_list and not (c.test_root and c.annotations):
        raise ValueError(f"test_list: evaluation also needs test_root and annotations, got test_root={c.test_root!r} "
                         f"and annotations={c.annotations!r}")
    if c.batch_size % world_size:
        raise ValueError(f"batch_size: expected a multiple of the world size {world_size} (the global batch is split "
                         f"evenly over the ranks), got {c.batch_size}")
    if c.model == "lvs" and world_size > 1 and c.batch_size // world_size < 2:
        raise ValueError(f"batch_size: lvs takes its negatives from the rank-local batch and needs >= 2 clips per rank, "
                         f"got {c.batch_size} over {world_size} ranks")


LR_SCHEDULES = ("constant", "cosine")


def lr_at_step(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    ``lr * w(step) * d(step)`` with the linear warm-up ``w = min(1, (step + 1) / warmup_steps)``
    (``w = 1`` without warm-up) and the decay ``d = 1`` (``"constant"``) or the half-cosine
    ``d = (1 + cos(pi * step / total_steps)) / 2`` (``"cosine"``, SGDR without restarts,
    Loshchilov & Hutter 2017). A pure function of the step, so ``--resume`` needs no scheduler state.
    """
    w = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    d = 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps))) if config.lr_schedule == "cosine" else 1.0
    return config.lr * w * d


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
                      device: torch.device | str = "cpu") -> AudioVisualModel:
    """The model a run trains: initialised from ``config.seed`` alone (the caller's global RNG state is
    left as it was), on ``device``; with ``distributed`` the loss gathers negatives across ranks
    (``config.gather_distributed``) and, on CUDA, BatchNorm becomes SyncBatchNorm
    (``config.sync_batchnorm``). The state dict has the same keys in every case."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model_config(distributed=distributed))
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
        raise FileNotFoundError(f"resume: expected a checkpoint at {ckpt_path}, found none")
    state = load_checkpoint(ckpt_path)
    saved = asdict(TrainConfig.from_dict(state["config"]))
    now = asdict(config)
    diff = {k: (v, now[k]) for k, v in saved.items() if now[k] != v and k not in RESUME_INDEPENDENT}
    if diff:
        raise ValueError(f"resume: the checkpoint's config differs from this run's ({{field: (checkpoint, now)}}): {diff}")
    return state


# --------------------------------------------------------------------------- training


def train(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
          train_set: Optional[Dataset] = None, test_set: Optional[Dataset] = None,
          stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
    """Train, checkpoint every epoch, evaluate; returns the final record (also ``out/final.json``):
    ``{"config": asdict(config), "epochs_completed": int, ["eval": {...}]}``.

    Args:
        config: the run (validated here: ``TypeError`` / ``ValueError`` naming the field).
        out: output folder (created).
        resume: continue from ``out/checkpoint.pt`` (its config must equal ``config`` except for
            :data:`RESUME_INDEPENDENT` fields).
        progress: progress bars (rank 0).
        train_set, test_set: prebuilt datasets (a study reuses its decoded clips across runs); by
            default they are built from the config's paths. A ``train_set`` with ``set_epoch(epoch,
            seed)`` (``AudioVisualDataset``) gets it called before every epoch.
        stop_after_epoch: return after this epoch's checkpoint, without the final evaluation and
            without ``final.json`` (the record then has ``"stopped": True``); ``--resume`` continues.
            Not part of the config: it changes when the process stops, not what the run computes.

    Raises:
        baselines.data.DataError: more clips of a split are missing or broken than
            ``max_failures`` allows (the message names them); under DDP on every rank alike.
    """
    from tqdm.auto import tqdm

    from .data import collate
    from .evaluate import evaluate_model

    if stop_after_epoch is not None and (not _is_int(stop_after_epoch) or stop_after_epoch < 1):
        raise ValueError(f"stop_after_epoch: expected None or an int >= 1, got {stop_after_epoch!r}")
    _check_config(config)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'")
    out = Path(out)
    dist = _Distributed(config.device)
    try:
        _check_config(config, dist.world_size)
        device = _device(config, dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            return _train(config, out, resume, progress, train_set, test_set, stop_after_epoch, dist, device,
                          tqdm, collate, evaluate_model)
    finally:
        dist.close()


def _train(config: TrainConfig, out: Path, resume: bool, progress: bool, train_set: Optional[Dataset],
           test_set: Optional[Dataset], stop_after_epoch: Optional[int], dist: _Distributed, device: torch.device,
           tqdm: Any, collate: Any, evaluate_model: Any) -> Dict[str, Any]:
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()

    ckpt_path = out / "checkpoint.pt"
    model = build_train_model(config, dist.enabled, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch = 0
    history: List[Dict[str, Any]] = []
    if resume:
        state = _restore(config, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        history = list(state.get("history", []))
        if dist.is_main and "history" in state:  # the log as it was at the checkpoint (drops later lines)
            atomic_write_text("".join(json.dumps(r) + "\n" for r in history), out / "metrics.jsonl")
    elif dist.is_main:
        for stale in ("metrics.jsonl", "final.json"):
            (out / stale).unlink(missing_ok=True)
        atomic_write_text(json.dumps(asdict(config), indent=2), out / "config.json")
    dist.barrier()
    if stop_after_epoch is not None and stop_after_epoch <= start_epoch < config.epochs:
        return {"config": asdict(config), "epochs_completed": start_epoch, "stopped": True}

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if train_set is None:
        train_set = build_train_set(config)
    if test_set is None and config.test_list:
        test_set = build_test_set(config.test_root, config.test_list, config.annotations, config.annotation_format,
                                  config.max_failures, config.cache)
    sampler = GlobalBatchSampler(len(train_set), config.batch_size, dist.world_size, dist.rank, config.seed)  # type: ignore[arg-type]
    if len(sampler) == 0:
        raise ValueError(f"batch_size: expected at most the {len(train_set)} clips of the train set "  # type: ignore[arg-type]
                         f"(one global batch per step), got {config.batch_size}")
    tracker = getattr(train_set, "failures", None)
    set_epoch = getattr(train_set, "set_epoch", None)
    use_amp = config.amp and device.type == "cuda"
    steps_per_epoch = min(len(sampler), config.limit_steps) if config.limit_steps else len(sampler)
    total_steps = steps_per_epoch * config.epochs

    def evaluate(show: bool) -> Dict[str, Any]:
        # every rank evaluates (same numbers, same time), so none idles at a barrier meanwhile
        return evaluate_model(model, test_set, device, config.batch_size, config.workers,  # type: ignore[arg-type]
                              progress=show and dist.is_main)

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(derive_seed(config.seed, "torch", epoch))  # any stray global-RNG use: (seed, epoch)
        sampler.set_epoch(epoch)
        if callable(set_epoch):
            set_epoch(epoch, config.seed)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate,
                            generator=torch.Generator().manual_seed(derive_seed(config.seed, "loader", epoch, dist.rank)),
                            pin_memory=device.type == "cuda")
        net.train()
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
            for group in optimizer.param_groups:
                group["lr"] = lr_at_step(config, epoch * steps_per_epoch + steps + skipped, total_steps)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, _ = net(image, spec)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            steps += 1
            bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
        bar.close()
        if tracker is not None:
            dist.merge_failures(tracker)
            tracker.check()
        # the mean over ranks of a rank's loss is the global-batch loss (marginnce_loss.distributed)
        mean_loss = dist.mean(loss_sum / steps) if steps else None
        record: Dict[str, Any] = {"epoch": epoch + 1, "loss": mean_loss, "steps": steps, "skipped_batches": skipped,
                                  "seconds": round(time.time() - t0, 3),
                                  "data_failures": tracker.count if tracker is not None else 0}
        if test_set is not None and config.eval_every and (epoch + 1) % config.eval_every == 0 \
                and epoch + 1 < config.epochs:
            record["eval"] = evaluate(False)
        history.append(record)
        if dist.is_main:
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                         "config": asdict(config), "history": history}, ckpt_path)
            _log(out, record)
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            return {"config": asdict(config), "epochs_completed": epoch + 1, "stopped": True}

    final: Dict[str, Any] = {"config": asdict(config), "epochs_completed": config.epochs}
    if test_set is not None:
        final["eval"] = evaluate(progress)
    if dist.is_main:
        if "eval" in final:
            _log(out, {"final_eval": final["eval"]})
        atomic_write_text(json.dumps(final, indent=2), out / "final.json")
    dist.barrier()
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
    p.add_argument("--annotation-format", default="vggss" if train else None, choices=("vggss", "flickr"))


def _fraction_or_count(text: str) -> float | int:
    """``"0.01"`` -> the fraction 0.01, ``"3"`` -> the count 3 (``DataFailureTracker``'s two forms)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m baselines.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default=d.model)
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--backbone", choices=BACKBONES, default=d.backbone)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--width", type=int, default=d.width, help="first-stage width of --backbone small")
    p.add_argument("--norm", choices=NORMS, default=d.norm,
                   help="normalisation layers: batch (BatchNorm, the paper's) or group (GroupNorm, batch-independent)")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights for the visual ResNet-18 (needs a download)")
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (all ranks together)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="per-step learning rate: constant, or cosine decay to 0 at the last step")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up steps")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bfloat16 autocast on CUDA")
    p.add_argument("--max-failures", type=_fraction_or_count, default=d.max_failures,
                   help="stop when more clips of a split are broken or missing than this fraction "
                        "(with a decimal point, in [0, 1)) or count (an integer)")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--cache", action="store_true", help="keep decoded clips in memory")
    p.add_argument("--no-gather", dest="gather_distributed", action="store_false",
                   help="under torchrun: negatives from the local batch only")
    p.add_argument("--no-sync-batchnorm", dest="sync_batchnorm", action="store_false",
                   help="under torchrun on CUDA: keep per-rank BatchNorm statistics")
    p.add_argument("--limit-steps", type=int, default=0, help="> 0: at most this many batches per epoch")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop after this epoch's checkpoint (continue later with --resume)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    config = TrainConfig(**values)
    final = train(config, Path(args.out), resume=args.resume, progress=args.progress,
                  stop_after_epoch=args.stop_after_epoch)
    if "eval" in final and int(os.environ.get("RANK", "0")) == 0:
        e = final["eval"]
        print(f"{config.model} margin {config.margin:+.2f}: cIoU {e['ciou']:.2f}  AUC {e['auc']:.2f}  "
              f"mean cIoU {e['mean_ciou']:.2f}  (n = {e['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
