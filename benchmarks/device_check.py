r"""The first command to run on a machine with a GPU: ``python -m benchmarks.device_check --budget 360``.

    python -m benchmarks.device_check [--device cuda|cpu] [--tiny] [--out DIR] [--budget SECONDS]
                                      [--steps NAME ...] [--work DIR]

A lent GPU comes with a few minutes of usable time, so the steps run most valuable first and the report
(``.md`` and ``.json``) is rewritten, atomically, before and after every step: a check cut at any point (its
budget spent, SIGTERM, the machine taken back) leaves valid results of every step it finished, the step it was
in marked ``running`` (killed outright) or ``interrupted`` (SIGTERM / SIGINT: its processes are stopped too and
``meta.stopped`` names the signal). Each step runs in its own process with a time limit and is recorded as
``ok``, ``failed`` (its error and the output's last lines), ``timeout`` or ``skipped`` (with the reason); the
next steps still run.

1. ``kernels``: compiled vs eager vs float64 for the four fused kernels (eq. 1 and max-MIL similarity, and the
   two losses built on them) and both adapters (EZ-VSL's ``max_xmil_loss``, the reference model's ``loss``),
   including the max-MIL kernels whose rewritten backward ``"auto"`` still keeps eager on CUDA; one warm compile
   each (:mod:`benchmarks.device.kernels`). ``--tiny`` compiles one (max-MIL) of them.
2. ``benchmarks_run``: ``python -m benchmarks.run`` at B = 128 and 1024, 7 x 7 and 14 x 14, both formulations,
   eager and compiled: time and peak memory against upstream's formulation, and the largest B whose inputs,
   gradients and loss fit 16 GiB (its scale section); tables in ``device-check-<device>-benchmarks-run.md`` /
   ``.json`` and copied into the report.
3. ``embedded_data``: the embedded synthetic dataset (:mod:`marginnce_kit.data.synthetic`, preset ``default``:
   2,000 training clips), generated into its cache unless it is there already (the next steps read it).
4. ``train_slice``: the reference model (ResNet-18 image and audio encoders), 224 x 224 frames, 257 x 200
   spectrograms, batch 128, the trainer's own loader, optimiser and step (:mod:`marginnce_kit.training.step`),
   bfloat16 autocast on CUDA, the default loss backend; the loader with ``--workers auto``. Measured apart and
   together: the loader alone (one epoch preloaded onto the device: clips/s, after its first batch), the step
   alone (10 warm-up and 90 timed steps over the preloaded batches: clips/s, peak memory, the loss's share of a
   step, interleaved over 20 rounds), then loader and step together (a fresh epoch's loader feeding the steps).
5. ``torchrun_ddp``: ``torchrun --standalone --nproc_per_node 1`` of a worker that creates an NCCL process group
   (gloo on CPU), checks an ``all_reduce``, wraps the trainer's model built for DDP (SyncBatchNorm on CUDA,
   gathered negatives) in ``DistributedDataParallel``, checks its loss and gradients on one batch against the
   plain model of the same seed, then takes a few of the trainer's steps. With one process this checks that the
   NCCL/DDP path runs, not the multi-rank arithmetic (the gloo tests do that).
6. ``torchrun_train``: ``torchrun --standalone --nproc_per_node 1 -m marginnce_kit.train`` on the embedded data
   for a few steps (the user's command): the loss in ``metrics.jsonl`` must be finite.
7. ``cuda_tests``: ``pytest -k cuda`` over the test files that hold CUDA-only tests: passed / failed / skipped
   counts from pytest's JUnit XML (last: the slowest step). On a CPU they skip, and the step is ``skipped``.

Compile caches: every step's process gets ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` inside the work
folder (unless set already), so the kernels the first step compiles are reused by the later steps.

Writes ``<out>/device-check-<device>.md`` and ``.json`` (``<device>`` as :func:`benchmarks.machine.device_name`,
e.g. ``cuda-nvidia-h200``; ``--tiny`` adds ``-tiny``): the device, the torch / CUDA / cuDNN / NCCL versions, the
matrix-product precision settings (TF32, reduced-precision reductions: PyTorch's defaults, which nothing here
changes), every step's status, time, command and numbers. Exit status 0 when no step failed or timed out and
the check was not stopped.

``--tiny`` is a dry run of the same steps at tiny sizes (the ``small`` backbone, batch 8, a few steps, 32 clips);
``--device cpu --tiny`` is what CI runs (``tests/test_device_check.py``).

Time: the steps share ``--budget`` seconds (default 360, so the check ends within 6 minutes); each step also has
its own limit, and a step killed at its limit is recorded as ``timeout``. A step that cannot start with 5 s left
is ``skipped`` (the budget is spent).
"""

from __future__ import annotations

import argparse
import datetime
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .device.kernels import CASES as KERNEL_CASES
from .device.plan import REAL, STATUSES, STEPS, TINY, TITLES, Context, StepRecord, _data_root, _finish
from .device.process import REPO, Completed, run_process
from .device.report import device_meta, markdown
from .device.steps import STEP_FUNCTIONS, _junit_counts, _verbose_counts
from .device.workers import WORKERS, _run_worker
from .machine import write_results

__all__ = ["main", "parse_args", "STEPS", "STATUSES", "TITLES", "STEP_FUNCTIONS", "WORKERS", "Context", "StepRecord",
           "Completed", "run_process", "REAL", "TINY", "REPO", "RESULTS",
           "DEFAULT_BUDGET_S", "Stopped", "KERNEL_CASES"]
__all__ += ["_finish", "_junit_counts", "_verbose_counts"]  # the tests' names

RESULTS = Path(__file__).resolve().parent / "results"
#: Seconds for all steps together when ``--budget`` is not given.
DEFAULT_BUDGET_S = 360.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of every step (CI)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: benchmarks/results/)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all steps together (default 360; each step also has its own limit)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these steps")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary folder, removed)")
    p.add_argument("--run-step", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--step-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--step-result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        p.error(f"--budget: expected a number of seconds > 0, got {args.budget}")
    return args


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived while the check ran (raised by the handler :func:`main` installs; a
    ``BaseException``, like ``KeyboardInterrupt``, so that no step's ``except Exception`` records it as a failure)."""


def _stop(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # the report of the stop is written undisturbed by a second signal
    raise Stopped(signal.Signals(signum).name)


def _compile_caches(work: Path) -> dict[str, str]:
    """``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` inside ``work`` for the steps, unless already set."""
    import os

    wanted = {"TORCHINDUCTOR_CACHE_DIR": work / "torchinductor", "TRITON_CACHE_DIR": work / "triton"}
    return {k: str(v) for k, v in wanted.items() if not os.environ.get(k)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_step:
        return _run_worker(args.run_step, args.step_config, args.step_result)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device: expected 'cpu' on this machine (CUDA is not available), got 'cuda'")
    device = torch.device(device_type)
    sizes = TINY if args.tiny else REAL
    budget = args.budget if args.budget is not None else DEFAULT_BUDGET_S
    start = time.perf_counter()
    meta = device_meta(device)
    stem = f"device-check-{meta['device']}" + ("-tiny" if args.tiny else "")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work if args.work is not None else Path(tempfile.mkdtemp(prefix="device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(device=device_type, tiny=args.tiny, sizes=sizes, out=args.out, work=work, stem=stem,
                  deadline=start + budget, env=_compile_caches(work))
    records: list[StepRecord] = [StepRecord(name, TITLES[name]) for name in STEPS]
    shown_args = " ".join(argv if argv is not None else sys.argv[1:])
    meta.update({
        "command": ("python -m benchmarks.device_check " + shown_args).rstrip(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "tiny": args.tiny, "budget_s": budget, "compile_caches": ctx.env, "stopped": None,
    })

    def write_report(final: bool) -> str:
        """The report so far (before and after every step, so a killed check still leaves its finished steps)."""
        meta["total_seconds"] = round(time.perf_counter() - start, 2)
        meta["complete"] = final and meta["stopped"] is None
        bench = ctx.out / f"{stem}-benchmarks-run.md"
        ran = any(r.name == "benchmarks_run" and r.results for r in records)
        bench_md = bench.read_text() if ran and bench.is_file() else None
        result = {"meta": meta, "steps": [asdict(r) for r in records]}
        report = markdown(meta, records, bench_md)
        write_results(args.out, stem, result, report)
        return report

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    current: StepRecord | None = None
    t0 = time.perf_counter()
    try:
        write_report(final=False)
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
            current, rec.status, t0 = rec, "running", time.perf_counter()
            write_report(final=False)  # a check killed during this step shows it as running
            try:
                STEP_FUNCTIONS[name](ctx, rec)
            except Exception as error:  # noqa: BLE001 -- a broken step is recorded; the next ones still run
                rec.status, rec.error = "failed", f"{type(error).__name__}: {error}"
                rec.seconds = round(time.perf_counter() - t0, 2)
            if rec.status == "running":
                rec.status, rec.error = "failed", "the step recorded no outcome"
            current = None
            print(f"== {name}: {rec.status} in {rec.seconds:.1f} s" + (f" ({rec.error})" if rec.error else ""),
                  flush=True)
            write_report(final=False)
    except Stopped as stop:
        meta["stopped"] = str(stop)
        if current is not None:
            current.status, current.seconds = "interrupted", round(time.perf_counter() - t0, 2)
            current.error = f"the check was stopped ({stop}) during this step; its processes were stopped"
        for rec in records:
            if rec.status == "skipped" and rec.error is None:
                rec.error = f"not run: the check was stopped ({stop})"
        print(f"\nstopped by {stop}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report = write_report(final=True)
    print(f"\nwrote {args.out / (stem + '.md')} and .json")
    print("\n".join(line for line in report.splitlines() if line.startswith("| ") and " | " in line)[:4000])
    failed = [r.name for r in records if r.status in ("failed", "timeout", "interrupted")]
    if failed:
        print(f"steps not successful: {failed}", file=sys.stderr)
    if meta["stopped"] is not None:
        return 128 + int(getattr(signal, meta["stopped"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
