"""What a config becomes on this machine: the worker count of ``--workers auto``, the method's weight decay of
``--weight-decay auto``, the CUDA-only switches (:func:`effective_config`), the device of a rank, and the checks
that depend on the machine rather than on the config alone (:func:`check_runnable`)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch

from ..models import WEIGHT_DECAY
from .config import AUTO_WORKERS, ConfigError, TrainConfig

__all__ = ["auto_workers", "effective_config", "check_runnable", "run_device"]


def auto_workers(device: str) -> int:
    """DataLoader workers of ``--workers auto``: on CUDA ``min(8, c - 1)`` with ``c`` the CPU cores this
    process may use divided by torchrun's ``LOCAL_WORLD_SIZE`` (the ranks sharing the machine), so the
    GPU is fed while one core per rank stays with the training loop; on CPU 0 (the step's own
    intra-op threads already use every core).

    Raises:
        ConfigError: ``LOCAL_WORLD_SIZE`` is set to something other than a positive integer.
    """
    if device != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    text = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        ranks = int(text)
    except ValueError:
        ranks = 0
    if ranks < 1:
        raise ConfigError(f"LOCAL_WORLD_SIZE: expected a positive integer (torchrun sets it), got {text!r}",
                          "unset it, or start the run with torchrun")
    return max(0, min(8, cores // ranks - 1))


def effective_config(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """``(config as it applies on config.device, {field: requested value} of what did not apply)``:
    ``amp`` (bfloat16 autocast) is CUDA-only; ``sync_batchnorm`` is CUDA-only and needs ``norm="batch"``;
    ``workers=AUTO_WORKERS`` becomes :func:`auto_workers`'s count (0 with ``decode_device="cuda"``) and
    ``weight_decay=None`` the method's (:data:`marginnce_kit.models.WEIGHT_DECAY`): resolved values, not refusals,
    so not listed in the second item."""
    on_cuda = config.device == "cuda"
    applied = {"amp": config.amp and on_cuda,
               "sync_batchnorm": config.sync_batchnorm and on_cuda and config.norm == "batch"}
    not_applied = {k: getattr(config, k) for k, v in applied.items() if getattr(config, k) != v}
    workers = config.workers
    if workers == AUTO_WORKERS:  # frames decoded on the GPU: in the training process
        workers = 0 if config.decode_device == "cuda" else auto_workers(config.device)
    decay = WEIGHT_DECAY[config.model] if config.weight_decay is None else config.weight_decay
    return replace(config, amp=applied["amp"], sync_batchnorm=applied["sync_batchnorm"], workers=workers,
                   weight_decay=decay), not_applied


def check_runnable(c: TrainConfig, world_size: int = 1) -> None:
    """What a valid config still needs to train here: a train split, CUDA when asked for, a global batch
    that the ranks share evenly, and two clips per rank for LVS's rank-local negatives.

    Raises:
        TypeError: ``c`` is not a :class:`TrainConfig`.
        ConfigError: any of the above, naming the field, the expected and the received value.
    """
    if not isinstance(c, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(c).__name__}")
    for name in ("train_root", "train_list"):
        if not getattr(c, name):
            raise ConfigError(f"{name}: expected a path, got nothing")
    if c.decode_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("decode_device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'",
                          "pass --decode-device cpu")
    if c.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'",
                          "pass --device cpu")
    if c.batch_size % world_size:
        raise ConfigError(f"batch_size: expected a multiple of the world size {world_size} (the global batch is split "
                          f"evenly over the ranks), got {c.batch_size}")
    if c.model == "lvs" and world_size > 1 and c.batch_size // world_size < 2:
        raise ConfigError(f"batch_size: lvs takes its negatives from the rank-local batch and needs >= 2 clips per "
                          f"rank, got {c.batch_size} over {world_size} ranks")


def run_device(config: TrainConfig, local_rank: int) -> torch.device:
    """The device of a rank: ``cuda:<local rank>`` on CUDA, else the CPU."""
    return torch.device("cuda", local_rank) if config.device == "cuda" else torch.device("cpu")
