"""The per-step learning rate of a run (a pure function of the step, so ``--resume`` keeps no state)."""

from __future__ import annotations

import math

from .config import LR_SCHEDULES, TrainConfig

__all__ = ["LR_SCHEDULES", "lr_at_step"]


def lr_at_step(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    ``lr * w(step) * d(step)`` with the linear warm-up ``w = min(1, (step + 1) / warmup_steps)``
    (``w = 1`` without warm-up) and the decay ``d = 1`` (``"constant"``) or the half-cosine
    ``d = (1 + cos(pi * step / total_steps)) / 2`` (``"cosine"``, SGDR without restarts,
    Loshchilov & Hutter 2017).
    """
    w = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    d = 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps))) if config.lr_schedule == "cosine" else 1.0
    return config.lr * w * d
