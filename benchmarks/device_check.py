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
import datetime
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .device.plan import REAL, STATUSES, STEPS, TINY, TITLES, Context, StepRecord, _data_root, _finish
from .device.process import REPO, Completed, run_process
from .device.report import device_meta, markdown
from .device.steps import STEP_FUNCTIONS, _junit_counts, _verbose_counts
from .device.workers import WORKERS, _run_worker
from .machine import write_results

__all__ = ["main", "parse_args", "STEPS", "STATUSES", "TITLES", "STEP_FUNCTIONS", "WORKERS", "Context", "StepRecord",
           "Completed", "run_process", "REAL", "TINY", "REPO", "RESULTS"]
__all__ += ["_finish", "_junit_counts", "_verbose_counts"]  # the tests' names

RESULTS = Path(__file__).resolve().parent / "results"


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
    meta.update(
        {
            "command": "python -m benchmarks.device_check"
            + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "tiny": args.tiny,
            "budget_s": budget,
        }
    )

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
            print(
                f"== {name}: {rec.status} in {rec.seconds:.1f} s" + (f" ({rec.error})" if rec.error else ""), flush=True
            )
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
