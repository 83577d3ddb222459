r"""Time study runs of the embedded recipe as a study runs them: ``python -m benchmarks.study_runs``.

A study trains two single-thread runs at a time on two cores (``marginnce_kit.studies.runner``), so
memory bandwidth is shared; a kernel timed alone misses that. This benchmark times whole runs (the
embedded recipe's training and the 2,000-clip evaluation, clips decoded beforehand) of the reference
model at m = 0, two at a time (seeds 0 and 1 in two processes), for each variant in turn:

- ``channels-last``: the compact encoder as shipped (``marginnce_kit.models``: weights and inputs
  channels-last);
- ``contiguous``: the same model in PyTorch's default layout (the model converted back, inputs left
  as the data pipeline makes them).

``--rounds`` rounds, the variants alternating; a variant's time is the mean of its two concurrent
runs, and the ratio is the median over rounds of the per-round ratio. ``--backbone`` and
``--image-size`` select the encoder (default: the embedded recipe's). Writes
``benchmarks/results/study-runs-<cpu>.json`` and ``.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .machine import device_name, write_results

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("channels-last", "contiguous")


def _one_run(variant: str, seed: int, backbone: str, image_size: int, out: str) -> float:
    """One run in this process (the child side); returns its seconds."""
    import time

    torch.set_num_threads(1)
    from marginnce_kit import models
    from marginnce_kit.studies.presets import PRESETS, embedded_data
    from marginnce_kit.studies.runner import Runner

    if variant == "contiguous":  # the shipped model, converted back to the default layout
        init = models.AudioVisualModel.__init__

        def contiguous_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            init(self, *args, **kwargs)
            self._memory_format = torch.contiguous_format
            self.to(memory_format=torch.contiguous_format)

        models.AudioVisualModel.__init__ = contiguous_init  # type: ignore[method-assign]
    preset = PRESETS["default"]
    data = embedded_data(preset.dataset, **preset.dataset_overrides)
    train = dict(preset.train, backbone=backbone, image_size=image_size)
    runner = Runner(Path(out), data, train, "cpu", 0, progress=False)
    config = runner._config("reference", 0.0, seed, data.train_list)
    for ds in (runner.train_set(config), runner.test_set(data.test_list)):  # decode first: time the run only
        for clip_id in ds.ids:
            ds._decoded(clip_id)
    t0 = time.perf_counter()
    runner.run("reference", 0.0, seed, data.train_list, (data.test_list,))
    return time.perf_counter() - t0


def _pair(variant: str, backbone: str, image_size: int) -> list[float]:
    """Two runs at a time (seeds 0 and 1), each in its own process; their seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.study_runs", "--child", variant, "--backbone", backbone,
               "--image-size", str(image_size)]
        procs = [subprocess.Popen([*cmd, "--seed", str(s), "--out", f"{tmp}/{s}"], stdout=subprocess.PIPE, text=True)
                 for s in (0, 1)]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a benchmark run failed: {outs}")
    return [json.loads(o.strip().splitlines()[-1])["seconds"] for o in outs]


def measure(rounds: int, backbone: str, image_size: int) -> dict:
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            times[v].append(statistics.fmean(_pair(v, backbone, image_size)))
    return {"command": "python -m benchmarks.study_runs " + " ".join(sys.argv[1:]),
            "date": datetime.date.today().isoformat(), "machine": device_name(torch.device("cpu")),
            "torch": torch.__version__, "backbone": backbone, "image_size": image_size, "rounds": rounds,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "seconds_per_run": {v: [round(t, 1) for t in ts] for v, ts in times.items()},
            "speed_up_of_channels_last": round(statistics.median(
                c / s for s, c in zip(times["channels-last"], times["contiguous"])), 3)}


def report(result: dict) -> str:
    lines = [f"# Study runs of the embedded recipe, two at a time ({result['machine']})", "",
             f"`{result['command']}`; torch {result['torch']}; encoder `{result['backbone']}` at "
             f"{result['image_size']} pixels; load average {result['load_average_before']} before, "
             f"{result['load_average_after']} after.", "",
             "| layout | seconds per run, each round (two concurrent runs' mean) |", "|---|---|"]
    for v, ts in result["seconds_per_run"].items():
        lines.append(f"| {v} | {', '.join(f'{t:.1f}' for t in ts)} |")
    lines += ["", f"Channels-last speed-up (median over rounds): {result['speed_up_of_channels_last']:.2f}x."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from marginnce_kit.studies.presets import PRESETS

    recipe = PRESETS["default"].train
    p = argparse.ArgumentParser(prog="python -m benchmarks.study_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="(default: %(default)s)")
    p.add_argument("--backbone", default=recipe["backbone"], help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=recipe["image_size"], help="(default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps({"seconds": _one_run(args.child, args.seed, args.backbone, args.image_size, str(args.out))}))
        return 0
    result = measure(args.rounds, args.backbone, args.image_size)
    text = report(result)
    write_results(args.out, f"study-runs-{result['machine'].removeprefix('cpu-')}", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
