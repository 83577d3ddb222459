"""What the device check runs and records: the steps in their order, their sizes (``REAL`` or ``TINY``), the
shared context of a check and the record of one step."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .process import Completed

__all__ = ["STEPS", "STATUSES", "TITLES", "Sizes", "REAL", "TINY", "Context", "StepRecord"]


STEPS = ("embedded_data", "cuda_tests", "train_slice", "torchrun_ddp", "torchrun_train", "benchmarks_run")


STATUSES = ("ok", "failed", "timeout", "skipped")


@dataclass(frozen=True)
class Sizes:
    """How big each step is (``REAL`` or ``TINY``); ``limits`` are per-step time limits in seconds."""

    data_overrides: dict[str, int]  # SyntheticConfig fields over the "default" preset
    backbone: str
    width: int
    dim: int
    batch: int
    warmup_steps: int
    timed_steps: int
    share_rounds: int
    preload_batches: int
    ddp_steps: int
    trainer_steps: int
    bench_args: list[str]
    limits: dict[str, float]
    workers_cap: int = field(default=8)


REAL = Sizes(
    data_overrides={},
    backbone="resnet18", width=64, dim=512, batch=128,
    warmup_steps=10, timed_steps=190, share_rounds=20, preload_batches=15,
    ddp_steps=5, trainer_steps=10,
    bench_args=["--quick"],
    limits={"embedded_data": 120, "cuda_tests": 180, "train_slice": 150, "torchrun_ddp": 90,
            "torchrun_train": 100, "benchmarks_run": 180},
)


TINY = Sizes(
    data_overrides={"num_train": 32, "num_test": 8},
    backbone="small", width=8, dim=32, batch=8,
    warmup_steps=1, timed_steps=3, share_rounds=2, preload_batches=2,
    ddp_steps=2, trainer_steps=2,
    bench_args=["--batch-sizes", "8", "--spatial", "3", "--channels", "16", "--repeats", "3", "--budget", "1",
                "--no-compiled", "--no-train-step", "--no-scale", "--no-profile"],
    limits={"embedded_data": 60, "cuda_tests": 120, "train_slice": 120, "torchrun_ddp": 120,
            "torchrun_train": 120, "benchmarks_run": 120},
    workers_cap=0,
)


def _workers(sizes: Sizes) -> int:
    return min(sizes.workers_cap, os.cpu_count() or 1)


def _data_config(sizes: Sizes):
    from marginnce_kit.data.synthetic import PRESETS

    return PRESETS["default"].replace(**sizes.data_overrides)


def _data_root(sizes: Sizes) -> Path:
    """Where :func:`marginnce_kit.data.synthetic.ensure_dataset` keeps this config's dataset."""
    from marginnce_kit.data.synthetic import config_hash, default_cache_root

    return default_cache_root() / config_hash(_data_config(sizes))


@dataclass
class Context:
    device: str
    tiny: bool
    sizes: Sizes
    out: Path
    work: Path
    stem: str
    deadline: float
    data_ok: bool = False

    def limit(self, step: str) -> float:
        return min(self.sizes.limits[step], self.deadline - time.perf_counter())


@dataclass
class StepRecord:
    name: str
    title: str
    status: str = "skipped"
    seconds: float = 0.0
    command: str = ""
    returncode: int | None = None
    error: str | None = None
    output_tail: list[str] | None = None
    results: dict[str, Any] = field(default_factory=dict)


TITLES = {
    "embedded_data": "Embedded synthetic dataset",
    "cuda_tests": "CUDA tests (pytest)",
    "train_slice": "Training slice (reference model, trainer's step)",
    "torchrun_ddp": "torchrun, 1 process: process group, DDP",
    "torchrun_train": "torchrun, 1 process: python -m marginnce_kit.train",
    "benchmarks_run": "python -m benchmarks.run",
}


def _finish(rec: StepRecord, done: Completed, problems: list[str]) -> None:
    """Status from the process's exit and the step's own checks (``problems``: what went wrong)."""
    rec.seconds = round(done.seconds, 2)
    rec.returncode = done.returncode
    if done.timed_out:
        rec.status = "timeout"
        rec.error = f"killed after {done.seconds:.0f} s (the step's time limit)"
    elif done.returncode != 0:
        rec.status = "failed"
        rec.error = f"exit status {done.returncode}" + (f"; {'; '.join(problems)}" if problems else "")
    elif problems:
        rec.status = "failed"
        rec.error = "; ".join(problems)
    else:
        rec.status = "ok"
    if rec.status != "ok":
        rec.output_tail = done.tail
