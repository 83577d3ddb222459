r"""Benchmark the loss fast path: ``python -m benchmarks.run [--quick]``.

For each formulation (max-MIL symmetric as EZ-VSL trains it; eq. 1 one direction as the reference
model trains it), each batch size ``B`` and feature map ``H x W`` (``C = 512``):

- ``upstream``: the formulation written the upstream way (:mod:`benchmarks.upstream_style`);
- ``eager`` / ``compiled``: :class:`marginnce_loss.LocalizationMarginNCE` with that backend;
- ``eager-rows`` (eq. 1, one thread only): eager with the rows product instead of the batched
  products eq. 1 picks for NCHW features with one thread, so that choice is measured too;
- ``floor``: the bare matrix products the formulation cannot avoid, on pre-laid-out contiguous
  operands (max-MIL: ``X @ A^T`` once; eq. 1: ``X @ A^T``, ``G @ A``, ``G^T @ X`` with
  ``X = [B*HW, C]``, ``G = [B*HW, B]``).

Each timing is one forward + backward to leaf features (wall clock, the device synchronised).
The variants of one size are timed interleaved in one process, in a rotating order, and a ratio is
the median of the per-round ratios, so machine noise common to a round cancels. Peak memory is
the most bytes the forward + backward allocated above what was allocated before it, gradients
included: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the allocation and free events of
``torch.profiler`` (``profile_memory=True``) replayed in time order.

Scale section (skipped by ``--quick``): peak memory and time of the default loss at large ``B``
(7 x 7 up to 4096, 14 x 14 up to 2048), upstream beside it where its memory model predicts it
fits ``--upstream-cap-gib`` (its prediction otherwise), and the largest ``B`` whose inputs,
gradients and loss memory fit ``--memory-budget-gib`` (16 GiB), from each side's memory model (see
:func:`bench_scale`). Profile section: ``torch.profiler`` self time per operator of one case
(``--profile-case``, default max-MIL B = 128, 7 x 7), upstream and ours.

Finally the loss's share of one training step of the reference model (ResNet-18 image and audio
encoders, random init, batch 32, 224 x 224 images, 257 x 200 spectrograms, SGD): the loss's
forward + backward time on the step's features over the whole step's time, timed interleaved.

The load average before and after is recorded: on a shared machine absolute times are inflated;
the interleaved ratios are what to read.

Writes ``benchmarks/results/<device>[-1thread].json`` (every number) and ``.md`` (the tables) and
prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import marginnce_loss

from .loss.cases import FORMULATIONS, MARGIN, bench_losses, features, floor_function, loss_functions
from .loss.report import markdown
from .loss.scale import bench_profile, bench_scale
from .loss.train_step import ReferenceModel, bench_train_step
from .machine import device_name, write_results
from .timing import fwd_bwd, gradient_bytes, interleaved, median_ratio, peak_bytes, ratio_quartiles, timed

# the names benchmarks.run has always offered (tests and the device check import them from here)
__all__ = ["main", "parse_args", "device_name", "write_results", "features", "loss_functions", "floor_function",
           "fwd_bwd", "timed", "peak_bytes", "interleaved", "median_ratio", "ratio_quartiles", "gradient_bytes",
           "bench_losses", "bench_scale", "bench_profile", "bench_train_step", "ReferenceModel", "markdown",
           "FORMULATIONS", "MARGIN", "RESULTS"]

RESULTS = Path(__file__).resolve().parent / "results"


def _scale_sizes(items: Sequence[str]) -> dict[int, list[int]]:
    """``["7:1024,2048", "14:512"]`` -> ``{7: [1024, 2048], 14: [512]}``."""
    out: dict[int, list[int]] = {}
    for item in items:
        try:
            side, bs = item.split(":")
            out[int(side)] = [int(b) for b in bs.split(",")]
        except ValueError:
            raise SystemExit(f"--scale-sizes: expected SIDE:B1,B2,... (e.g. 7:1024,2048), got {item!r}") from None
    return out


def _profile_case(text: str) -> tuple[str, int, int]:
    try:
        formulation, b, side = text.split(":")
        if formulation not in FORMULATIONS:
            raise ValueError
        return formulation, int(b), int(side)
    except ValueError:
        raise SystemExit(
            f"--profile-case: expected FORMULATION:B:SIDE with FORMULATION in {list(FORMULATIONS)}, got {text!r}"
        ) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="B in {32, 128}, 7x7 only, fewer rounds, no scale section or profile"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 32 64 128 256 512 1024")
    p.add_argument("--spatial", type=int, nargs="+", default=None, help="feature map sides, default: 7 14")
    p.add_argument("--formulations", nargs="+", choices=list(FORMULATIONS), default=list(FORMULATIONS))
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None, help="rounds per size (default 15, --quick 5)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds per size: fewer rounds for big sizes (>= 3)")
    p.add_argument("--no-compiled", action="store_true", help="skip backend='compiled'")
    p.add_argument("--channels-last", action="store_true", help="feed channels-last image features")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--scale-sizes",
        nargs="+",
        default=None,
        metavar="SIDE:B1,B2",
        help="scale section sizes (default 7:1024,2048,4096 14:512,1024,2048)",
    )
    p.add_argument("--no-scale", action="store_true", help="skip the scale section")
    p.add_argument("--memory-budget-gib", type=float, default=16.0, help="budget for the largest-B estimate")
    p.add_argument(
        "--upstream-cap-gib",
        type=float,
        default=6.0,
        help="run upstream in the scale section only where its model predicts at most this much",
    )
    p.add_argument("--calibration-batch", type=int, default=256, help="B at which upstream's memory model is measured")
    p.add_argument("--scale-budget", type=float, default=60.0, help="seconds of timed calls per scale size (>= 1 call)")
    p.add_argument("--profile-case", default="max-MIL:128:7", help="FORMULATION:B:SIDE profiled with torch.profiler")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-train-step", action="store_true")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-image", type=int, default=224)
    p.add_argument("--train-spec", type=int, nargs=2, default=[257, 200])
    p.add_argument("--train-repeats", type=int, default=None, help="default 5 (--quick 3)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument(
        "--name", default=None, help="results file stem (default: the device name, + '-1thread' with one thread)"
    )
    p.add_argument(
        "--data-loading",
        action="store_true",
        help="also run benchmarks.data_loading (its own data-loading-<cpu>.md/.json in --out)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_sizes = args.batch_sizes or ([32, 128] if args.quick else [32, 64, 128, 256, 512, 1024])
    spatial = args.spatial or ([7] if args.quick else [7, 14])
    repeats = args.repeats or (5 if args.quick else 15)
    backends = ["eager"] if args.no_compiled else ["eager", "compiled"]
    scale_sizes = _scale_sizes(args.scale_sizes) if args.scale_sizes else {7: [1024, 2048, 4096], 14: [512, 1024, 2048]}
    run_scale = not args.no_scale and (not args.quick or args.scale_sizes is not None)
    run_profile = not args.no_profile and not args.quick
    profile_case = _profile_case(args.profile_case)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    meta = {
        "device": device_name(device),
        "command": "python -m benchmarks.run"
        + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "marginnce_loss": marginnce_loss.__version__,
        "threads": torch.get_num_threads(),
        "channels": args.channels,
        "layout": "channels-last" if args.channels_last else "NCHW",
        "load_before": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "memory_measure": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "torch.profiler memory events",
    }
    rows = bench_losses(
        batch_sizes,
        spatial,
        args.channels,
        backends,
        repeats,
        args.budget,
        device,
        args.channels_last,
        log,
        args.formulations,
    )
    scale = None
    if run_scale:
        scale = bench_scale(
            scale_sizes,
            args.channels,
            device,
            args.memory_budget_gib,
            args.upstream_cap_gib,
            args.calibration_batch,
            args.scale_budget,
            log,
            args.formulations,
        )
    prof = None
    if run_profile:
        formulation, b, side = profile_case
        prof = bench_profile(formulation, b, side, args.channels, device, steps=5, top=12)
    train = []
    if not args.no_train_step:
        train = bench_train_step(
            args.train_batch,
            args.train_image,
            args.train_spec,
            backends,
            args.train_repeats or (3 if args.quick else 5),
            device,
            log,
        )
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    meta["run_s"] = time.perf_counter() - started
    result = {"meta": meta, "losses": rows, "scale": scale, "profile": prof, "train_step": train}
    if args.data_loading:  # one worker's clips/s, ours vs upstream-style (see benchmarks/data_loading.py)
        from . import data_loading

        quick = ["--clips", "16", "--rounds", "3"] if args.quick else []
        result["data_loading"] = data_loading.main(["--out", str(args.out)] + quick)["pipelines"]
    report = markdown(meta, rows, train, scale, prof)
    write_results(
        args.out, args.name or (meta["device"] + ("-1thread" if meta["threads"] == 1 else "")), result, report
    )
    print(report)
    return result


if __name__ == "__main__":
    main()
