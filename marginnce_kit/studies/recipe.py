"""Measure candidate training recipes of the embedded studies at margin 0 (the reference model).

    python -m marginnce_kit.studies.recipe --out results/recipe --recipes constant cosine --seeds 0 1 2 3
    python -m marginnce_kit.studies.recipe --out results/recipe-dataset --recipes cosine-patch8-112 \
        --datasets default vggsound-like --seeds 0 1 2 3 4 5 6 7

For each recipe, data set and seed: trains the reference model at m = 0 on the embedded training set,
evaluates it on an embedded test set of ``--num-test`` clips, and records the seed spread of cIoU /
AUC / mean cIoU, each epoch's training loss (does it still fall at the last epoch?) and the measured
seconds. Writes ``<out>/recipes.json`` and ``<out>/recipes.md``; runs are cached in ``<out>/runs``.

Recipe decisions are taken on these m = 0 numbers only (spread between seeds, convergence), never on
a margin's effect, and apply to every method alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.synthetic import PRESETS as DATA_PRESETS
from ..io import atomic_write_json, read_jsonl
from ..layout import RunLayout
from .presets import _EMBEDDED_TRAIN, embedded_data
from .runner import Runner, execute_runs, run_name

__all__ = ["RECIPES", "measure", "main"]

#: candidate recipes: changes to the embedded training settings (``marginnce_kit.studies.presets._EMBEDDED_TRAIN``)
RECIPES: dict[str, dict[str, Any]] = {
    "constant": {},  # Adam 1e-3, constant, 10 epochs (the recipe before this measurement)
    "cosine": {"lr_schedule": "cosine", "warmup_steps": 31},  # + 1 epoch warm-up, cosine decay to 0
    "cosine20": {"lr_schedule": "cosine", "warmup_steps": 31, "epochs": 20},
    "cosine5": {"lr_schedule": "cosine", "warmup_steps": 31, "epochs": 5},  # half the steps
    "cosine-lr5e-4": {"lr_schedule": "cosine", "warmup_steps": 31, "lr": 5e-4},  # half the peak lr
    "cosine-group": {"lr_schedule": "cosine", "warmup_steps": 31, "norm": "group"},  # batch-independent norm
    # more training clips for about the same steps (each clip seen fewer times): 4,000 x 5 epochs, 8,000 x 3
    "cosine-4k": {"lr_schedule": "cosine", "warmup_steps": 31, "epochs": 5, "num_train": 4000},
    "cosine-8k": {"lr_schedule": "cosine", "warmup_steps": 31, "epochs": 3, "num_train": 8000},
    # the compact encoder without its highest-resolution stage (a cheaper step): more seeds per hour
    "cosine-patch8": {"lr_schedule": "cosine", "warmup_steps": 31, "backbone": "patch8"},
    # half the image side (a quarter of the pixels to decode, crop, normalise and convolve), stride-16 image encoder
    "cosine-112": {"lr_schedule": "cosine", "warmup_steps": 31, "image_size": 112},
    "cosine-patch8-112": {"lr_schedule": "cosine", "warmup_steps": 31, "backbone": "patch8", "image_size": 112},
}
#: recipe keys that change the embedded dataset (``SyntheticConfig`` fields), not the training settings
DATA_KEYS: frozenset[str] = frozenset({"num_train"})


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def measure(out: Path, recipes: Sequence[str], seeds: Sequence[int], num_test: int, jobs: int,
            datasets: Sequence[str] = ("default",)) -> dict[str, Any]:
    summary: dict[str, Any] = {"command": "python -m marginnce_kit.studies.recipe " + " ".join(sys.argv[1:]),
                               "num_test": num_test, "seeds": list(seeds), "recipes": {}}
    for recipe, dataset in [(r, d) for r in recipes for d in datasets]:
        name = recipe if list(datasets) == ["default"] else f"{recipe} @ {dataset}"
        changes = RECIPES[recipe]
        data = embedded_data(dataset, num_test=num_test, **{k: v for k, v in changes.items() if k in DATA_KEYS})
        kwargs = dict(_EMBEDDED_TRAIN, **{k: v for k, v in changes.items() if k not in DATA_KEYS})
        folder = recipe if list(datasets) == ["default"] else f"{recipe}-{dataset}"
        runner = Runner(out / folder, data, kwargs, "cpu", 0, progress=False)
        specs = [("reference", 0.0, s, data.train_list, (data.test_list,), "") for s in seeds]
        t0 = time.time()
        execute_runs(runner, specs, jobs)
        wall = time.time() - t0
        per_seed = []
        for s in seeds:
            r = runner.run(*specs[seeds.index(s)])
            ev = r[data.test_list]
            run_dir = out / folder / "runs" / run_name("reference", 0.0, s)
            losses = [rec["loss"] for rec in read_jsonl(RunLayout(run_dir).metrics, "metrics log") if "epoch" in rec]
            c = ev["per_clip"]["ciou"]
            per_seed.append({"seed": s, "ciou": ev["ciou"], "auc": ev["auc"], "mean_ciou": ev["mean_ciou"],
                             "ciou_first500": 100.0 * sum(v >= 0.5 for v in c[:500]) / min(500, len(c)),
                             "loss_per_epoch": [round(v, 4) for v in losses],
                             "last_epoch_loss_drop": round(losses[-2] - losses[-1], 4) if len(losses) > 1 else None,
                             "train_and_eval_seconds": r["_seconds"]["train_and_eval"]})
        prior = runner.bound_rows(data.test_list)["center prior"]
        summary["recipes"][name] = {
            "train": kwargs, "data": data.source, "center_prior_ciou": round(prior["ciou"], 2), "per_seed": per_seed,
            "wall_seconds_this_call": round(wall, 1),
            **{f"{k}_mean": round(statistics.fmean(p[k] for p in per_seed), 2) for k in ("ciou", "auc", "mean_ciou")},
            **{f"{k}_sd": round(_sd([p[k] for p in per_seed]), 2)
               for k in ("ciou", "auc", "mean_ciou", "ciou_first500")},
            "last_epoch_loss_drop_mean": round(statistics.fmean(p["last_epoch_loss_drop"] for p in per_seed), 4),
        }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(summary, out / "recipes.json")
    lines = ["# Recipe measurements at m = 0 (reference model)", "", f"`{summary['command']}`.", "",
             "| recipe | data | seeds | cIoU mean | center prior cIoU | cIoU SD (all test clips) | "
             "cIoU SD (first 500) | AUC SD | mean cIoU SD | loss drop in last epoch | s per run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["recipes"].items():
        secs = statistics.fmean(p["train_and_eval_seconds"] for p in r["per_seed"])
        lines.append(f"| {name} | {r['data']} | {len(r['per_seed'])} | {r['ciou_mean']:.2f} | "
                     f"{r['center_prior_ciou']:.2f} | {r['ciou_sd']:.2f} | "
                     f"{r['ciou_first500_sd']:.2f} | {r['auc_sd']:.2f} | {r['mean_ciou_sd']:.2f} | "
                     f"{r['last_epoch_loss_drop_mean']:+.4f} | {secs:.0f} |")
    (out / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m marginnce_kit.studies.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/recipe", help="output folder (default: %(default)s)")
    p.add_argument("--recipes", nargs="+", choices=tuple(RECIPES), default=["constant", "cosine"],
                   help="recipes to measure (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3], help="(default: %(default)s)")
    p.add_argument("--num-test", type=int, default=2000, help="test clips (default: %(default)s)")
    p.add_argument("--datasets", nargs="+", choices=tuple(DATA_PRESETS), default=["default"],
                   help="embedded data sets to measure each recipe on (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: %(default)s)")
    args = p.parse_args(argv)
    measure(Path(args.out), args.recipes, list(args.seeds), args.num_test, args.jobs, args.datasets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
