"""The device check's steps, parent side: each builds its command, runs it under its time limit
(:func:`~benchmarks.device.process.run_process`) and fills its :class:`~benchmarks.device.plan.StepRecord`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .plan import Context, StepRecord, _data_config, _data_root, _finish, _workers
from .process import REPO, Completed, _python, _shown, _torchrun, run_process

__all__ = ["STEP_FUNCTIONS"]


def _run(ctx: Context, rec: StepRecord, cmd: list[str]) -> Completed:
    """``cmd`` under the step's time limit, with the check's environment (the compile caches); its output echoed
    with the step's name and logged to ``<work>/logs/<step>.log``."""
    return run_process(cmd, ctx.limit(rec.name), ctx.work / "logs" / f"{rec.name}.log", prefix=f"[{rec.name}] ",
                       env=ctx.env)


def _worker_step(ctx: Context, rec: StepRecord, worker: str, config: dict[str, Any], torchrun: bool) -> dict[str, Any]:
    """Run ``--run-step worker`` (under torchrun when asked) and return the JSON it wrote (``{}`` if none)."""
    config_path = ctx.work / f"{worker}.config.json"
    result_path = ctx.work / f"{worker}.result.json"
    result_path.unlink(missing_ok=True)
    result_path.with_name(f"{worker}.partial.json").unlink(missing_ok=True)
    config_path.write_text(json.dumps(config))
    args = ("-m", "benchmarks.device_check", "--run-step", worker, "--step-config", str(config_path),
            "--step-result", str(result_path))
    cmd = _torchrun(*args) if torchrun else _python(*args)
    rec.command = _shown(cmd)
    done = _run(ctx, rec, cmd)
    partial_path = result_path.with_name(f"{worker}.partial.json")
    problems: list[str] = []
    if result_path.is_file():
        results = json.loads(result_path.read_text())
    elif partial_path.is_file():  # cut before its end: what it had finished
        results = {**json.loads(partial_path.read_text()), "partial": True}
        problems.append("the worker stopped before its end (partial result)")
    else:
        results = {}
        if done.returncode == 0:
            problems.append("the worker wrote no result")
    problems = [f"check failed: {name}" for name, passed in results.get("checks", {}).items() if not passed] + problems
    _finish(rec, done, problems)
    return results


def step_kernels(ctx: Context, rec: StepRecord) -> None:
    """Compiled vs eager vs float64 for the kernels and adapters (:mod:`benchmarks.device.kernels`)."""
    s = ctx.sizes
    config = {"device": ctx.device, **s.kernel_sizes, "repeats": s.kernel_repeats,
              "compiled": None if s.kernel_compiled is None else list(s.kernel_compiled)}
    rec.results = _worker_step(ctx, rec, "kernels", config, torchrun=False)


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
    done = _run(ctx, rec, cmd)
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
    done = _run(ctx, rec, cmd)
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
            "train_root": str(root), "train_list": str(root / "train.txt"), "workers": s.workers}


def step_train_slice(ctx: Context, rec: StepRecord) -> None:
    if not _needs_data(ctx, rec):
        return
    s = ctx.sizes
    config = {**_model_config(ctx), "warmup_steps": s.warmup_steps, "timed_steps": s.timed_steps,
              "share_rounds": s.share_rounds, "preload_batches": s.preload_batches,
              "pipeline_steps": s.pipeline_steps}
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
                    "--workers", _workers(ctx.sizes), "--out", str(run_dir), "--no-progress")
    rec.command = _shown(cmd)
    done = _run(ctx, rec, cmd)
    problems: list[str] = []
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    epochs = [r for r in records if "epoch" in r]
    if epochs:
        e = epochs[-1]
        rec.results = {
            "loss": e.get("loss"),
            "steps": e.get("steps"),
            "skipped_batches": e.get("skipped_batches"),
            "epoch_seconds": e.get("seconds"),
            "data_failures": e.get("data_failures"),
            "batch": m["batch"],
            "workers": _workers(ctx.sizes),
            "note": "epoch_seconds includes the DataLoader's start and the loss's compilation",
        }
        if not (isinstance(e.get("loss"), (int, float)) and math.isfinite(e["loss"])):
            problems.append(f"loss not finite: {e.get('loss')!r}")
        if e.get("steps") != ctx.sizes.trainer_steps:
            problems.append(f"steps: expected {ctx.sizes.trainer_steps}, got {e.get('steps')!r}")
    else:
        problems.append("no epoch record in metrics.jsonl")
    _finish(rec, done, problems)


def step_benchmarks_run(ctx: Context, rec: StepRecord) -> None:
    name = f"{ctx.stem}-benchmarks-run"
    cmd = _python(
        "-m", "benchmarks.run", "--device", ctx.device, *ctx.sizes.bench_args, "--out", str(ctx.out), "--name", name
    )
    rec.command = _shown(cmd)
    json_path, md_path = ctx.out / f"{name}.json", ctx.out / f"{name}.md"
    for p in (json_path, md_path):
        p.unlink(missing_ok=True)
    done = _run(ctx, rec, cmd)
    problems: list[str] = []
    if json_path.is_file():
        data = json.loads(json_path.read_text())
        rows = [
            {
                k: r.get(k)
                for k in (
                    "formulation",
                    "B",
                    "H",
                    "W",
                    "variant",
                    "median_ms",
                    "speedup_vs_upstream",
                    "peak_MB",
                    "matches_upstream",
                )
            }
            for r in data.get("losses", [])
        ]
        rec.results = {
            "json": json_path.name,
            "markdown": md_path.name,
            "losses": rows,
            "train_step": data.get("train_step", []),
        }
        mismatched = [
            f"{r['formulation']} B={r['B']} {r['H']}x{r['W']} {r['variant']}"
            for r in rows
            if r["matches_upstream"] is False
        ]
        if mismatched:
            problems.append(f"differs from upstream: {mismatched}")
    else:
        problems.append(f"no {json_path.name}")
    _finish(rec, done, problems)


STEP_FUNCTIONS: dict[str, Callable[[Context, StepRecord], None]] = {
    "kernels": step_kernels,
    "embedded_data": step_embedded_data,
    "cuda_tests": step_cuda_tests,
    "train_slice": step_train_slice,
    "torchrun_ddp": step_torchrun_ddp,
    "torchrun_train": step_torchrun_train,
    "benchmarks_run": step_benchmarks_run,
}
