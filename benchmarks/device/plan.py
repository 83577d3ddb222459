"""What the device check runs and records: the steps in their order, their sizes (``REAL`` or ``TINY``), the
shared context of a check and the record of one step."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marginnce_kit.training.config import AUTO_WORKERS

from .process import Completed

__all__ = ["STEPS", "STATUSES", "TITLES", "Sizes", "REAL", "TINY", "Context", "StepRecord"]


#: The steps in the order they run: the most valuable first, so that a check cut short (its ``--budget`` spent,
#: the machine taken back) has measured what matters most: the kernels, the loss benchmark, the training slice,
#: torchrun; the CUDA tests (the slowest, and covered in part by the kernels step) last.
STEPS = ("kernels", "benchmarks_run", "embedded_data", "train_slice", "torchrun_ddp", "torchrun_train", "cuda_tests")

#: A step's status: ``running`` only in a report written while the step ran (a check killed then leaves it),
#: ``interrupted``: the check was stopped (SIGTERM / SIGINT) during the step.
STATUSES = ("ok", "failed", "timeout", "skipped", "running", "interrupted")


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
    pipeline_steps: int  # the training slice's loader-fed steps (loader and step together)
    ddp_steps: int
    trainer_steps: int
    kernel_sizes: dict[str, int]  # the kernels step's B, C, side
    kernel_repeats: int
    kernel_compiled: tuple[str, ...] | None  # the kernel cases also compiled (None: all)
    bench_args: list[str]
    limits: dict[str, float]
    workers: int = field(default=AUTO_WORKERS)  # the loader's (AUTO_WORKERS: the trainer's --workers auto)


REAL = Sizes(
    data_overrides={},
    backbone="resnet18", width=64, dim=512, batch=128,
    warmup_steps=10, timed_steps=90, share_rounds=20, preload_batches=15, pipeline_steps=14,
    ddp_steps=5, trainer_steps=10,
    kernel_sizes={"batch": 128, "channels": 512, "side": 7}, kernel_repeats=10, kernel_compiled=None,
    bench_args=["--batch-sizes", "128", "1024", "--spatial", "7", "14", "--repeats", "5", "--budget", "2",
                "--no-profile", "--no-train-step", "--scale-sizes", "7:2048,4096", "14:1024,2048",
                "--upstream-cap-gib", "4", "--scale-budget", "2", "--memory-budget-gib", "16"],
    limits={"kernels": 150, "benchmarks_run": 150, "embedded_data": 90, "train_slice": 120, "torchrun_ddp": 60,
            "torchrun_train": 90, "cuda_tests": 180},
)


TINY = Sizes(
    data_overrides={"num_train": 32, "num_test": 8},
    backbone="small", width=8, dim=32, batch=8,
    warmup_steps=1, timed_steps=3, share_rounds=2, preload_batches=2, pipeline_steps=2,
    ddp_steps=2, trainer_steps=2,
    # one compile on the CPU (the max-MIL kernel, whose backward was rewritten for inductor): the others compile
    # on the GPU; CI's dry run stays short
    kernel_sizes={"batch": 8, "channels": 16, "side": 3}, kernel_repeats=2, kernel_compiled=("max_similarity",),
    bench_args=["--batch-sizes", "8", "--spatial", "3", "--channels", "16", "--repeats", "3", "--budget", "1",
                "--no-compiled", "--no-train-step", "--no-profile", "--scale-sizes", "3:16,32",
                "--calibration-batch", "8", "--upstream-cap-gib", "0.01", "--scale-budget", "0.1"],
    limits={"kernels": 120, "benchmarks_run": 120, "embedded_data": 60, "train_slice": 120, "torchrun_ddp": 120,
            "torchrun_train": 120, "cuda_tests": 120},
    workers=0,
)


def _workers(sizes: Sizes) -> str:
    """The loader's ``--workers`` as the trainer's CLI takes it (``auto`` or a count)."""
    return "auto" if sizes.workers == AUTO_WORKERS else str(sizes.workers)


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
    env: dict[str, str] = field(default_factory=dict)  # for every step's process (the compile caches)

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
    "kernels": "Kernels and adapters: compiled vs eager vs float64",
    "embedded_data": "Embedded synthetic dataset",
    "cuda_tests": "CUDA tests (pytest)",
    "train_slice": "Training slice (reference model, trainer's loader and step: apart and together)",
    "torchrun_ddp": "torchrun, 1 process: process group, DDP",
    "torchrun_train": "torchrun, 1 process: python -m marginnce_kit.train",
    "benchmarks_run": "python -m benchmarks.run: time and peak memory against upstream's formulation",
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
