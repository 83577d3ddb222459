r"""The first command to run on a machine with a GPU: ``python -m benchmarks.device_check``.

    python -m benchmarks.device_check [--device cuda|cpu] [--tiny] [--out DIR] [--budget SECONDS]
                                      [--steps NAME ...] [--work DIR]

Runs these steps, each in its own process with a time limit, each timed and its status recorded
(``ok``, ``failed``, ``timeout``, or ``skipped`` with the reason); a failing step is recorded with
its error and the output's last lines, and the next steps still run:

1. ``embedded_data``: the embedded synthetic dataset (:mod:`marginnce_kit.data.synthetic`, preset
   ``default``: 2,000 training clips, as ``python -m marginnce_kit.table5`` uses it), generated into
   its cache unless it is there already.
2. ``cuda_tests``: ``pytest -k cuda`` over the test files that hold CUDA-only tests (those that
   mention ``torch.cuda.is_available``): passed / failed / skipped counts from pytest's JUnit XML.
   On a CPU the CUDA tests skip, so the step is recorded as ``skipped`` (its counts still recorded).
3. ``train_slice``: a real-size slice of training: the reference model (ResNet-18 image and audio
   encoders, :func:`marginnce_kit.train.build_train_model`), 224 x 224 frames, 257 x 200 spectrograms,
   batch 128, Adam, bfloat16 autocast on CUDA, the model's default loss (``backend="auto"``:
   compiled on CUDA), the trainer's step. One epoch of the embedded training set (15 batches) is
   decoded by the trainer's ``DataLoader`` (its clips/s is recorded) and kept on the device; then
   10 warm-up steps and 190 timed steps cycle over those batches, so the rate is the model's, not
   the loader's.
   Recorded: clips/s over the timed steps, peak memory allocated (``torch.cuda.max_memory_allocated``),
   the loss's share of a step (the loss's forward + backward on one step's features over the whole
   step, timed interleaved over 20 rounds: median of the per-round ratios), whether every loss was
   finite, and whether the compiled loss ran or fell back to eager.
4. ``torchrun_ddp``: ``torchrun --standalone --nproc_per_node 1`` of a worker that creates an NCCL
   process group (gloo on CPU), checks an ``all_reduce``, wraps the trainer's model built for DDP
   (SyncBatchNorm on CUDA, gathered negatives) in ``DistributedDataParallel`` and checks its loss and
   gradients on one embedded batch against the plain model of the same seed, then takes a few steps.
   With one process the gather and the SyncBatchNorm statistics are those of the one rank: this
   checks that the NCCL/DDP path runs, not the multi-rank arithmetic (the gloo tests do that).
5. ``torchrun_train``: ``torchrun --standalone --nproc_per_node 1 -m marginnce_kit.train`` on the
   embedded data for a few steps (the user's command; with ``WORLD_SIZE = 1`` the trainer creates no
   process group): the loss recorded in ``metrics.jsonl`` must be finite.
6. ``benchmarks_run``: ``python -m benchmarks.run --quick`` on the device, its tables written into
   ``--out`` (``device-check-<device>-benchmarks-run.md`` / ``.json``) and copied into the report.

Writes ``<out>/device-check-<device>.md`` and ``.json`` (``<device>`` is
:func:`benchmarks.run.device_name`, e.g. ``cuda-nvidia-h200``; the prefix keeps them apart from
``benchmarks.run``'s own ``<device>.md``; ``--tiny`` adds ``-tiny``): the device, the torch / CUDA /
cuDNN / NCCL versions, every step's status, time, command and numbers. Exit status 0 when no step
failed or timed out.

``--tiny`` is a dry run of the same steps at tiny sizes (the ``small`` backbone, batch 8, a few
steps, 32 clips); ``--device cpu --tiny`` is what CI runs (``tests/test_device_check.py``).

Time: the steps share ``--budget`` seconds (default 470, so the whole check ends within 8 minutes);
each step also has its own limit, and a step killed at its limit is recorded as ``timeout``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .machine import device_name, write_results

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("embedded_data", "cuda_tests", "train_slice", "torchrun_ddp", "torchrun_train", "benchmarks_run")
STATUSES = ("ok", "failed", "timeout", "skipped")
TAIL_LINES = 40  # output lines kept in the record of a step that did not succeed


# --------------------------------------------------------------------------- sizes


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


# --------------------------------------------------------------------------- subprocesses


@dataclass
class Completed:
    returncode: int | None
    seconds: float
    timed_out: bool
    tail: list[str]


def run_process(cmd: Sequence[str], limit_s: float, log_path: Path, env: dict[str, str] | None = None,
                prefix: str = "") -> Completed:
    """Run ``cmd`` in the repository root in a new process group, echo its output (``prefix``ed) and
    write it to ``log_path``; past ``limit_s`` seconds the whole group is killed."""
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    full_env.update(env or {})
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                print(f"{prefix}{line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(limit_s, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # the group this call started (torchrun's and DataLoader's children)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        reader.join(timeout=10.0)
    return Completed(proc.returncode, time.perf_counter() - start, timed_out, list(tail))


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _torchrun(*args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node 1 ...`` (as ``python -m torch.distributed.run``, the same program)."""
    return _python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args)


def _shown(cmd: Sequence[str]) -> str:
    """The command as a person would type it."""
    words = list(cmd)
    if words[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        words = ["torchrun"] + words[3:]
    elif words and words[0] == sys.executable:
        words = ["python"] + words[1:]
    return " ".join(words)


# --------------------------------------------------------------------------- steps (parent side)


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


def _worker_step(ctx: Context, rec: StepRecord, worker: str, config: dict[str, Any], torchrun: bool) -> dict[str, Any]:
    """Run ``--run-step worker`` (under torchrun when asked) and return the JSON it wrote (``{}`` if none)."""
    config_path = ctx.work / f"{worker}.config.json"
    result_path = ctx.work / f"{worker}.result.json"
    result_path.unlink(missing_ok=True)
    config_path.write_text(json.dumps(config))
    args = ("-m", "benchmarks.device_check", "--run-step", worker, "--step-config", str(config_path),
            "--step-result", str(result_path))
    cmd = _torchrun(*args) if torchrun else _python(*args)
    rec.command = _shown(cmd)
    done = run_process(cmd, ctx.limit(rec.name), ctx.work / "logs" / f"{rec.name}.log", prefix=f"[{rec.name}] ")
    results = json.loads(result_path.read_text()) if result_path.is_file() else {}
    checks = results.get("checks", {})
    problems = [f"check failed: {name}" for name, passed in checks.items() if not passed]
    if done.returncode == 0 and not result_path.is_file():
        problems.append("the worker wrote no result")
    _finish(rec, done, problems)
    return results


def step_embedded_data(ctx: Context, rec: StepRecord) -> None:
    from marginnce_kit.data.synthetic import is_complete

    config = _data_config(ctx.sizes)
    root = _data_root(ctx.sizes)
    workers = max(1, min(16, os.cpu_count() or 1))
    cmd = _python("-m", "marginnce_kit.data.synthetic", "--out", str(root), "--workers", str(workers))
    for name, value in ctx.sizes.data_overrides.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    rec.command = _shown(cmd)
    cached = is_complete(root, config)
    done = run_process(cmd, ctx.limit(rec.name), ctx.work / "logs" / f"{rec.name}.log", prefix=f"[{rec.name}] ")
    complete = is_complete(root, config)
    rec.results = {"root": str(root), "num_train": config.num_train, "num_test": config.num_test,
                   "image_size": config.image_size, "seconds_audio": config.seconds, "was_cached": cached,
                   "generator_workers": workers}
    _finish(rec, done, [] if complete else [f"{root} is not the complete dataset afterwards"])
    ctx.data_ok = rec.status == "ok"


def _junit_counts(path: Path) -> dict[str, Any]:
    """Totals and per-test outcomes of pytest's ``--junitxml`` file."""
    tree = ET.parse(path)
    cases = []
    for case in tree.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message, details = "passed", "", []
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").strip().splitlines()[0][:300] if node.get("message") else ""
                if tag != "skipped" and node.text:
                    details = node.text.strip().splitlines()[-20:]
                break
        cases.append({"test": test_id, "outcome": outcome, "seconds": round(float(case.get("time") or 0.0), 2),
                      "message": message, **({"details": details} if details else {})})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {**counts, "total": len(cases), "tests": cases,
            "skip_reasons": sorted({c["message"] for c in cases if c["outcome"] == "skipped"})}


_VERBOSE_LINE = re.compile(r"^(\S+::\S.*?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def _verbose_counts(text: str) -> dict[str, Any]:
    """The outcomes ``pytest -v`` printed, one ``path::test OUTCOME`` line each (when there is no XML)."""
    names = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "skipped",
             "XPASS": "passed"}
    cases = [{"test": m.group(1), "outcome": names[m.group(2)], "seconds": 0.0, "message": ""}
             for m in map(_VERBOSE_LINE.match, text.splitlines()) if m]
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {**counts, "total": len(cases), "tests": cases, "skip_reasons": []}


def step_cuda_tests(ctx: Context, rec: StepRecord) -> None:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if "torch.cuda.is_available" in p.read_text())
    junit = ctx.work / "cuda_tests.junit.xml"
    junit.unlink(missing_ok=True)
    cmd = _python("-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "-k", "cuda", f"--junitxml={junit}", *files)
    rec.command = _shown(cmd)
    log = ctx.work / "logs" / f"{rec.name}.log"
    done = run_process(cmd, ctx.limit(rec.name), log, prefix=f"[{rec.name}] ")
    problems: list[str] = []
    if junit.is_file():
        rec.results = {"files": files, **_junit_counts(junit)}
    elif log.is_file():  # killed before pytest wrote its XML: the outcomes it printed so far
        rec.results = {"files": files, **_verbose_counts(log.read_text()), "from": "pytest -v output (no JUnit XML)"}
    if rec.results.get("tests") is not None:
        bad = rec.results["failed"] + rec.results["error"]
        if bad:
            problems.append(f"{bad} test(s) failed")
        if rec.results["total"] == 0:
            problems.append("no test selected")
        cuda_skips = [r for r in rec.results["skip_reasons"] if "cuda" in r.lower()]
        if ctx.device == "cuda" and cuda_skips:
            problems.append(f"CUDA tests skipped on a CUDA device: {cuda_skips}")
    else:
        rec.results = {"files": files}
        problems.append("pytest wrote no JUnit XML")
    _finish(rec, done, problems)
    if rec.status == "ok" and ctx.device != "cuda":
        rec.status = "skipped"
        rec.error = "no CUDA device: the CUDA tests skip (run as a dry run; counts recorded)"


def _needs_data(ctx: Context, rec: StepRecord) -> bool:
    if not ctx.data_ok:
        rec.status = "skipped"
        rec.error = "needs the embedded dataset, whose step did not succeed"
    return ctx.data_ok


def _model_config(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    root = _data_root(s)
    return {"device": ctx.device, "backbone": s.backbone, "width": s.width, "dim": s.dim, "batch": s.batch,
            "train_root": str(root), "train_list": str(root / "train.txt"), "workers": _workers(s)}


def step_train_slice(ctx: Context, rec: StepRecord) -> None:
    if not _needs_data(ctx, rec):
        return
    s = ctx.sizes
    config = {**_model_config(ctx), "warmup_steps": s.warmup_steps, "timed_steps": s.timed_steps,
              "share_rounds": s.share_rounds, "preload_batches": s.preload_batches}
    rec.results = _worker_step(ctx, rec, "train_slice", config, torchrun=False)


def step_torchrun_ddp(ctx: Context, rec: StepRecord) -> None:
    if not _needs_data(ctx, rec):
        return
    config = {**_model_config(ctx), "steps": ctx.sizes.ddp_steps}
    rec.results = _worker_step(ctx, rec, "ddp", config, torchrun=True)


def step_torchrun_train(ctx: Context, rec: StepRecord) -> None:
    if not _needs_data(ctx, rec):
        return
    m = _model_config(ctx)
    run_dir = ctx.work / "torchrun_train"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = _torchrun("-m", "marginnce_kit.train", "--device", ctx.device, "--model", "reference",
                    "--backbone", m["backbone"], "--width", str(m["width"]), "--dim", str(m["dim"]),
                    "--train-root", m["train_root"], "--train-list", m["train_list"], "--epochs", "1",
                    "--batch-size", str(m["batch"]), "--limit-steps", str(ctx.sizes.trainer_steps),
                    "--workers", str(m["workers"]), "--out", str(run_dir), "--no-progress")
    rec.command = _shown(cmd)
    done = run_process(cmd, ctx.limit(rec.name), ctx.work / "logs" / f"{rec.name}.log", prefix=f"[{rec.name}] ")
    problems: list[str] = []
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    epochs = [r for r in records if "epoch" in r]
    if epochs:
        e = epochs[-1]
        rec.results = {"loss": e.get("loss"), "steps": e.get("steps"), "skipped_batches": e.get("skipped_batches"),
                       "epoch_seconds": e.get("seconds"), "data_failures": e.get("data_failures"),
                       "batch": m["batch"], "workers": m["workers"],
                       "note": "epoch_seconds includes the DataLoader's start and the loss's compilation"}
        if not (isinstance(e.get("loss"), (int, float)) and math.isfinite(e["loss"])):
            problems.append(f"loss not finite: {e.get('loss')!r}")
        if e.get("steps") != ctx.sizes.trainer_steps:
            problems.append(f"steps: expected {ctx.sizes.trainer_steps}, got {e.get('steps')!r}")
    else:
        problems.append("no epoch record in metrics.jsonl")
    _finish(rec, done, problems)


def step_benchmarks_run(ctx: Context, rec: StepRecord) -> None:
    name = f"{ctx.stem}-benchmarks-run"
    cmd = _python("-m", "benchmarks.run", "--device", ctx.device, *ctx.sizes.bench_args, "--out", str(ctx.out),
                  "--name", name)
    rec.command = _shown(cmd)
    json_path, md_path = ctx.out / f"{name}.json", ctx.out / f"{name}.md"
    for p in (json_path, md_path):
        p.unlink(missing_ok=True)
    done = run_process(cmd, ctx.limit(rec.name), ctx.work / "logs" / f"{rec.name}.log", prefix=f"[{rec.name}] ")
    problems: list[str] = []
    if json_path.is_file():
        data = json.loads(json_path.read_text())
        rows = [{k: r.get(k) for k in ("formulation", "B", "H", "W", "variant", "median_ms", "speedup_vs_upstream",
                                         "peak_MB", "matches_upstream")} for r in data.get("losses", [])]
        rec.results = {"json": json_path.name, "markdown": md_path.name, "losses": rows,
                       "train_step": data.get("train_step", [])}
        mismatched = [f"{r['formulation']} B={r['B']} {r['H']}x{r['W']} {r['variant']}" for r in rows
                      if r["matches_upstream"] is False]
        if mismatched:
            problems.append(f"differs from upstream: {mismatched}")
    else:
        problems.append(f"no {json_path.name}")
    _finish(rec, done, problems)


STEP_FUNCTIONS: dict[str, Callable[[Context, StepRecord], None]] = {
    "embedded_data": step_embedded_data,
    "cuda_tests": step_cuda_tests,
    "train_slice": step_train_slice,
    "torchrun_ddp": step_torchrun_ddp,
    "torchrun_train": step_torchrun_train,
    "benchmarks_run": step_benchmarks_run,
}


# --------------------------------------------------------------------------- workers (child side)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_config(cfg: dict[str, Any]):
    from marginnce_kit.train import TrainConfig

    return TrainConfig(model="reference", backbone=cfg["backbone"], width=cfg["width"], dim=cfg["dim"],
                       batch_size=cfg["batch"], train_root=cfg["train_root"], train_list=cfg["train_list"],
                       device=cfg["device"], workers=cfg["workers"], amp=True)


def _loader(config, world_size: int = 1, rank: int = 0):
    """The trainer's epoch-0 loader over the training set (its dataset, sampler and collate)."""
    from torch.utils.data import DataLoader

    from marginnce_kit.data import collate_batch
    from marginnce_kit.train import GlobalBatchSampler, build_train_set

    train_set = build_train_set(config)
    train_set.set_epoch(0, config.seed)
    sampler = GlobalBatchSampler(len(train_set), config.batch_size, world_size, rank, config.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate_batch,
                        pin_memory=config.device == "cuda")
    return train_set, loader


def _preload(loader, device: torch.device, limit: int) -> dict[str, Any]:
    """Up to ``limit`` batches of ``loader`` moved to ``device``; the loader's time in all and after its first batch
    (the workers' start excluded)."""
    batches, failures, clips, first = [], 0, 0, None
    start = time.perf_counter()
    for batch in loader:
        if first is None:
            first = time.perf_counter()
        if batch is None:
            failures += 1
            continue
        failures += len(batch["failures"])
        clips += int(batch["image"].shape[0])
        batches.append((batch["image"].to(device, non_blocking=True), batch["spectrogram"].to(device, non_blocking=True)))
        if len(batches) >= limit:
            break
    _sync(device)
    end = time.perf_counter()
    later = clips - (int(batches[0][0].shape[0]) if batches else 0)
    return {"batches": batches, "failures": failures, "clips": clips, "seconds": end - start,
            "clips_per_s_after_first": later / (end - first) if first is not None and later > 0 and end > first else None}


def _trainer_step(model, optimizer, device: torch.device, use_amp: bool) -> Callable[[Any, Any], torch.Tensor]:
    """One optimisation step exactly as ``marginnce_kit.train``'s loop takes it."""

    def step(image, spec) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, _ = model(image, spec)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def worker_train_slice(cfg: dict[str, Any]) -> dict[str, Any]:
    from marginnce_kit.train import build_train_model
    from marginnce_kit.training.step import build_optimizer
    from marginnce_loss import _compiled

    from .run import interleaved, median_ratio

    device = torch.device(cfg["device"])
    config = _train_config(cfg)
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        model = build_train_model(config, distributed=False, device=device)
        model.train()
        optimizer = build_optimizer(model, config)  # the trainer's (weight_decay=None: the method's own)
        use_amp = config.amp and device.type == "cuda"
        _, loader = _loader(config)
        pre = _preload(loader, device, cfg["preload_batches"])
        batches = pre["batches"]
        if not batches:
            raise RuntimeError("the embedded training set gave no batch")
        step = _trainer_step(model, optimizer, device, use_amp)

        def nth(i: int):
            return batches[i % len(batches)]

        _sync(device)
        t0 = time.perf_counter()
        step(*nth(0))
        _sync(device)
        first_step_s = time.perf_counter() - t0
        for i in range(1, cfg["warmup_steps"]):
            step(*nth(i))
        _sync(device)
        if device.type == "cuda":
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        losses = []
        t0 = time.perf_counter()
        for i in range(cfg["timed_steps"]):
            losses.append(step(*nth(cfg["warmup_steps"] + i)))
        _sync(device)
        timed_s = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
        loss_values = torch.stack(losses).float().cpu()

        # the loss's share: the loss's forward + backward on one step's features vs the whole step
        image, spec = nth(0)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            img, aud = model.encode(image, spec)
        img, aud = img.detach().requires_grad_(), aud.detach().requires_grad_()

        def loss_only() -> None:
            img.grad = aud.grad = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = model.criterion(img, aud)
            loss.backward()

        loss_only()
        times = interleaved({"step": lambda: step(image, spec), "loss": loss_only}, cfg["share_rounds"], device)
        caught = [str(r.message)[:300] for r in records if issubclass(r.category, (RuntimeWarning, UserWarning))]
    kernel = _compiled.KERNELS["thresholded_loss"]
    backend = model.criterion.backend
    resolved = _compiled.resolve_backend(backend, device)
    batch = int(batches[0][0].shape[0])
    gib = 2.0**30
    results = {
        "model": "reference", "backbone": config.backbone, "dim": config.dim, "batch": batch,
        "image": list(batches[0][0].shape[1:]), "spectrogram": list(batches[0][1].shape[1:]),
        "feature_map": list(img.shape[1:]), "feature_dtype": str(img.dtype).replace("torch.", ""),
        "autocast": "bfloat16" if use_amp else None, "optimizer": "Adam",
        "loss_backend": backend, "loss_backend_resolved": resolved,
        "compiled_fallback": None if kernel.failure is None else f"{type(kernel.failure).__name__}: {kernel.failure}"[:500],
        "loader_workers": config.workers, "loader_clips": pre["clips"], "loader_seconds": round(pre["seconds"], 3),
        "loader_clips_per_s": pre["clips"] / pre["seconds"] if pre["seconds"] > 0 else None,
        "loader_clips_per_s_after_first_batch": pre["clips_per_s_after_first"],
        "resident_batches": len(batches), "data_failures": pre["failures"],
        "first_step_s": round(first_step_s, 3), "warmup_steps": cfg["warmup_steps"], "timed_steps": cfg["timed_steps"],
        "timed_seconds": round(timed_s, 3), "step_ms": 1e3 * timed_s / cfg["timed_steps"],
        "clips_per_s": batch * cfg["timed_steps"] / timed_s,
        "loss_first": float(loss_values[0]), "loss_last": float(loss_values[-1]),
        "loss_min": float(loss_values.min()), "loss_max": float(loss_values.max()),
        "resident_GiB": resident / gib if device.type == "cuda" else None,
        "peak_allocated_GiB": peak / gib if peak is not None else None,
        "peak_reserved_GiB": reserved / gib if reserved is not None else None,
        "share_rounds": cfg["share_rounds"],
        "step_ms_interleaved": 1e3 * statistics.median(times["step"]),
        "loss_ms": 1e3 * statistics.median(times["loss"]),
        "loss_share": median_ratio(times["loss"], times["step"]),
        "warnings": sorted(set(caught))[:10],
    }
    results["checks"] = {
        "loss_finite": bool(torch.isfinite(loss_values).all()),
        "no_data_failures": pre["failures"] == 0,
        "no_compiled_fallback": kernel.failure is None,
    }
    return results


def worker_ddp(cfg: dict[str, Any]) -> dict[str, Any] | None:
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from marginnce_kit.train import build_train_model
    from marginnce_kit.training.step import build_optimizer

    cuda = cfg["device"] == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    t0 = time.perf_counter()
    dist.init_process_group(backend)
    init_s = time.perf_counter() - t0
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        probe = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(probe)
        all_reduce_ok = bool(torch.all(probe == world * (world + 1) / 2))

        config = _train_config(cfg)
        ddp_model = build_train_model(config, distributed=True, device=device)
        plain = build_train_model(config, distributed=False, device=device)
        sync_bn = sum(isinstance(m, nn.SyncBatchNorm) for m in ddp_model.modules())
        net = DistributedDataParallel(ddp_model, device_ids=[local_rank] if cuda else None)
        _, loader = _loader(config, world, rank)
        pre = _preload(loader, device, cfg["steps"] + 1)
        image, spec = pre["batches"][0]
        use_amp = config.amp and cuda

        def loss_and_grads(model, params):
            for p in params:
                p.grad = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, _ = model(image, spec)
            loss.backward()
            return loss.detach().float(), torch.cat([p.grad.float().flatten() for p in params])

        loss_ddp, grad_ddp = loss_and_grads(net, list(ddp_model.parameters()))
        loss_plain, grad_plain = loss_and_grads(plain, list(plain.parameters()))
        loss_rel = float((loss_ddp - loss_plain).abs() / loss_plain.abs().clamp_min(1e-30))
        grad_rel = float((grad_ddp - grad_plain).norm() / grad_plain.norm().clamp_min(1e-30))

        optimizer = build_optimizer(ddp_model, config)  # the trainer's (weight_decay=None: the method's own)
        step = _trainer_step(net, optimizer, device, use_amp)
        _sync(device)
        t0 = time.perf_counter()
        losses = [step(*pre["batches"][1 + i % max(1, len(pre["batches"]) - 1)]) for i in range(cfg["steps"])]
        _sync(device)
        steps_s = time.perf_counter() - t0
        values = torch.stack(losses).float().cpu()
        # every rank agrees on the mean loss (the trainer's Distributed.mean)
        mean = torch.tensor([float(values.mean())], dtype=torch.float64, device=device)
        dist.all_reduce(mean)
    finally:
        net = step = None  # type: ignore[assignment]  # drop the references to the DDP wrapper
        gc.collect()  # the DDP cycles go before the group (marginnce_kit.training.distributed.ProcessGroup.close)
        dist.destroy_process_group()
    if rank != 0:
        return None
    # tolerances: both models run the same kernels in one process; bfloat16 autocast and cuDNN's
    # algorithm choice allow small differences on CUDA, none are expected on CPU
    loss_tol, grad_tol = (1e-3, 1e-2) if use_amp else (1e-6, 1e-5)
    return {
        "backend": backend, "world_size": world, "init_seconds": round(init_s, 3), "all_reduce_ok": all_reduce_ok,
        "sync_batchnorm_layers": sync_bn, "gather_distributed": ddp_model.config.gather_distributed,
        "batch": int(image.shape[0]), "loss_ddp": float(loss_ddp), "loss_plain": float(loss_plain),
        "loss_rel_diff": loss_rel, "grad_rel_diff": grad_rel, "loss_rel_tol": loss_tol, "grad_rel_tol": grad_tol,
        "steps": cfg["steps"], "steps_seconds": round(steps_s, 3), "step_losses": [float(v) for v in values],
        "checks": {"all_reduce": all_reduce_ok, "ddp_loss_equals_plain": loss_rel <= loss_tol,
                   "ddp_grad_equals_plain": grad_rel <= grad_tol, "losses_finite": bool(torch.isfinite(values).all()),
                   "sync_batchnorm_on_cuda": (sync_bn > 0) == cuda},
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "train_slice": worker_train_slice,
    "ddp": worker_ddp,
}


def _run_worker(name: str, config_path: Path, result_path: Path) -> int:
    cfg = json.loads(config_path.read_text())
    result = WORKERS[name](cfg)
    if result is not None:
        tmp = result_path.with_name(result_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, result_path)
    return 0


# --------------------------------------------------------------------------- report


def device_meta(device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update({
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_GiB": round(props.total_memory / 2**30, 2),
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
            "nccl": ".".join(str(v) for v in torch.cuda.nccl.version()) if hasattr(torch.cuda, "nccl") else None,
        })
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 check=False, capture_output=True, text=True, timeout=20)
            meta["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            meta["driver"] = None
    return meta


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _key_numbers(rec: StepRecord) -> str:
    r = rec.results
    if not r:
        return rec.error or ""
    if rec.name == "embedded_data":
        return f"{r['num_train']} train / {r['num_test']} test clips" + (" (cached)" if r.get("was_cached") else "")
    if rec.name == "cuda_tests":
        return f"{r.get('passed', 0)} passed, {r.get('failed', 0)} failed, {r.get('error', 0)} errors, {r.get('skipped', 0)} skipped"
    if rec.name == "train_slice" and "clips_per_s" in r:
        mem = "" if r.get("peak_allocated_GiB") is None else f", peak {r['peak_allocated_GiB']:.2f} GiB"
        return (f"{r['clips_per_s']:.0f} clips/s (batch {r['batch']}, {r['step_ms']:.1f} ms/step){mem}, "
                f"loss share {100 * r['loss_share']:.2f}%, loss {'finite' if r['checks']['loss_finite'] else 'NOT finite'}")
    if rec.name == "torchrun_ddp" and "backend" in r:
        return (f"{r['backend']}, world {r['world_size']}: DDP vs plain loss rel. diff {r['loss_rel_diff']:.1e}, "
                f"grads {r['grad_rel_diff']:.1e}; {r['steps']} steps")
    if rec.name == "torchrun_train" and "loss" in r:
        return f"{r['steps']} steps, loss {_fmt(r['loss'], 4)}"
    if rec.name == "benchmarks_run" and "losses" in r:
        comp = [x for x in r["losses"] if x["variant"] == "compiled"] or [x for x in r["losses"] if x["variant"] == "eager"]
        if comp:
            return "speed-up vs upstream: " + ", ".join(
                f"{x['formulation']} B={x['B']} {x['H']}x{x['W']} {x['variant']} {x['speedup_vs_upstream']:.2f}x" for x in comp)
    return rec.error or ""


def markdown(meta: dict[str, Any], records: list[StepRecord], bench_md: str | None) -> str:
    lines = [f"# Device check: {meta['device']}", "",
             (f"`{meta['command']}` on {meta['date']}, {meta['total_seconds']:.0f} s in all "
              f"(budget {meta['budget_s']:.0f} s){'; tiny sizes (dry run)' if meta['tiny'] else ''}."), ""]
    env = [("device", meta.get("gpu") or meta["device"]), ("torch", meta["torch"]), ("CUDA", meta.get("cuda")),
           ("cuDNN", meta.get("cudnn")), ("NCCL", meta.get("nccl")), ("driver", meta.get("driver")),
           ("GPU memory", f"{meta['gpu_memory_GiB']} GiB" if meta.get("gpu_memory_GiB") else None),
           ("compute capability", meta.get("compute_capability")), ("python", meta["python"]),
           ("CPU cores", meta["cpu_count"])]
    lines += ["| | |", "|:---|:---|"] + [f"| {k} | {_fmt(v)} |" for k, v in env if v is not None] + [""]
    lines += ["## Steps", "", "| step | status | seconds | result |", "|:---|:---|---:|:---|"]
    for rec in records:
        lines.append(f"| {rec.name} | {rec.status} | {rec.seconds:.1f} | {_key_numbers(rec)} |")
    lines.append("")
    for rec in records:
        lines += [f"## {rec.name}: {rec.title}", "", f"Status **{rec.status}** in {rec.seconds:.1f} s."]
        if rec.command:
            lines += ["", f"`{rec.command}`"]
        if rec.error:
            lines += ["", f"{'Reason' if rec.status == 'skipped' else 'Error'}: {rec.error}"]
        r = rec.results
        if rec.name == "train_slice" and "clips_per_s" in r:
            lines += ["", "| quantity | value |", "|:---|---:|"] + [f"| {k} | {_fmt(v, 4)} |" for k, v in (
                ("batch", r["batch"]), ("image", "x".join(map(str, r["image"]))),
                ("spectrogram", "x".join(map(str, r["spectrogram"]))), ("backbone", r["backbone"]),
                ("features", f"{'x'.join(map(str, r['feature_map']))} {r['feature_dtype']}"),
                ("autocast", r["autocast"]), ("loss backend (resolved)", f"{r['loss_backend']} ({r['loss_backend_resolved']})"),
                ("compiled fallback", r["compiled_fallback"]), ("first step s (compiles)", r["first_step_s"]),
                ("timed steps", r["timed_steps"]), ("ms / step", r["step_ms"]), ("clips / s", r["clips_per_s"]),
                ("resident before the steps GiB (model, Adam, batches)", r["resident_GiB"]),
                ("peak allocated GiB", r["peak_allocated_GiB"]), ("peak reserved GiB", r["peak_reserved_GiB"]),
                ("loss fwd+bwd ms", r["loss_ms"]), ("step ms (interleaved)", r["step_ms_interleaved"]),
                ("loss share of a step", f"{100 * r['loss_share']:.2f}%"),
                ("loss first / last", f"{r['loss_first']:.4f} / {r['loss_last']:.4f}"),
                ("loader clips / s (all; after the first batch)",
                 (f"{r['loader_clips_per_s']:.0f}; {_fmt(r['loader_clips_per_s_after_first_batch'], 0)} "
                  f"({r['loader_workers']} workers, {r['loader_clips']} clips)")),
                ("data failures", r["data_failures"]))]
            if r.get("warnings"):
                lines += ["", "Warnings: " + "; ".join(f"`{w}`" for w in r["warnings"])]
        elif rec.name == "cuda_tests" and r.get("tests"):
            lines += ["", "| test | outcome | s | message |", "|:---|:---|---:|:---|"]
            lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.2f} | {t['message']} |" for t in r["tests"]]
            for t in r["tests"]:
                if t.get("details"):
                    lines += ["", f"{t['test']} ({t['outcome']}), last lines:", "", "```", *t["details"], "```"]
        elif r:
            shown = {k: v for k, v in r.items() if k not in ("checks", "losses", "train_step", "step_losses")}
            lines += ["", "```", json.dumps(shown, indent=1), "```"]
            if "checks" in r:
                lines += ["", "Checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in r["checks"].items())]
        if rec.output_tail:
            lines += ["", "Last output lines:", "", "```", *rec.output_tail, "```"]
        lines.append("")
    if bench_md:
        lines += ["## benchmarks.run tables", ""]
        lines += [("#" + line if line.startswith("#") else line) for line in bench_md.splitlines()]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of every step (CI)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: benchmarks/results/)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all steps together (default 470; each step also has its own limit)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these steps")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary folder, removed)")
    p.add_argument("--run-step", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--step-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--step-result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        p.error(f"--budget: expected a number of seconds > 0, got {args.budget}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_step:
        return _run_worker(args.run_step, args.step_config, args.step_result)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'")
    device = torch.device(device_type)
    sizes = TINY if args.tiny else REAL
    budget = args.budget if args.budget is not None else 470.0
    start = time.perf_counter()
    meta = device_meta(device)
    stem = f"device-check-{meta['device']}" + ("-tiny" if args.tiny else "")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work if args.work is not None else Path(tempfile.mkdtemp(prefix="device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(device=device_type, tiny=args.tiny, sizes=sizes, out=args.out, work=work, stem=stem,
                  deadline=start + budget)
    records: list[StepRecord] = [StepRecord(name, TITLES[name]) for name in STEPS]
    meta.update({
        "command": "python -m benchmarks.device_check" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "tiny": args.tiny, "budget_s": budget,
    })

    def write_report(final: bool) -> str:
        """The report so far (after every step, so a killed check still leaves its finished steps)."""
        meta["total_seconds"] = round(time.perf_counter() - start, 2)
        meta["complete"] = final
        bench = ctx.out / f"{stem}-benchmarks-run.md"
        ran = any(r.name == "benchmarks_run" and r.results for r in records)
        bench_md = bench.read_text() if ran and bench.is_file() else None
        result = {"meta": meta, "steps": [asdict(r) for r in records]}
        report = markdown(meta, records, bench_md)
        write_results(args.out, stem, result, report)
        return report

    try:
        for rec in records:
            name = rec.name
            if name not in args.steps:
                rec.error = "not asked for (--steps)"
                continue
            if name != "embedded_data" and "embedded_data" not in args.steps:
                ctx.data_ok = _data_root(sizes).is_dir()
            if ctx.limit(name) < 5:
                rec.error = f"the time budget ({budget:.0f} s) is spent"
                continue
            print(f"== {name}: {rec.title}", flush=True)
            t0 = time.perf_counter()
            try:
                STEP_FUNCTIONS[name](ctx, rec)
            except Exception as error:  # noqa: BLE001 -- a broken step is recorded; the next ones still run
                rec.status, rec.error = "failed", f"{type(error).__name__}: {error}"
                rec.seconds = round(time.perf_counter() - t0, 2)
            print(f"== {name}: {rec.status} in {rec.seconds:.1f} s" + (f" ({rec.error})" if rec.error else ""), flush=True)
            write_report(final=False)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report = write_report(final=True)
    print(f"\nwrote {args.out / (stem + '.md')} and .json")
    print("\n".join(line for line in report.splitlines() if line.startswith("| ") and " | " in line)[:4000])
    failed = [r.name for r in records if r.status in ("failed", "timeout")]
    if failed:
        print(f"steps not successful: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
