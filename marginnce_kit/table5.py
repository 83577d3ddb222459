"""The paper's studies in one command: Table 5 (marginNCE on three baselines), Table 6 (margin sweep),
Table 4 (heard / unheard classes), the noisy-correspondence study (exploratory), the faulty-negative study and
Fig. 1-style figures.

    python -m marginnce_kit.table5                       # Table 5, embedded VGGSound-like data (Ours 8 seeds, LVS/EZ 2)
    python -m marginnce_kit.table5 --dataset default     # the same on the earlier 10-class embedded data
    python -m marginnce_kit.table5 --preset smoke        # the same study in minutes (CI runs it)
    python -m marginnce_kit.table5 --preset full         # Ours at 64 seeds, the others at 10; every study
    python -m marginnce_kit.table5 --studies table5 table6 table4 noise negatives figures
    python -m marginnce_kit.table5 --train-root data/vggsound --train-list vggss_144k.txt \
        --test-root data/vggss --test-list vggss_test.csv --annotations vggss.json --seeds 0   # the paper's protocol
    python -m marginnce_kit.table5 ... --seeds 0 --epochs 1 --limit-steps 2 --batch-size 8 --backbone small  # smoke

Writes ``<out>/table5.json`` (``{"rows": [...], "n_test", "excluded": [{"id", "reason"}], "data": {...,
"batch_size", "same_class_negatives_per_anchor"}, ...}``, each row with ``method``, ``margin``, ``n``,
``n_seeds``, ``per_seed``, ``ciou``, ``auc``, ``mean_ciou`` (mean over seeds, ``*_std``), ``paper_ciou``,
``paper_auc``, ``checkpoint`` (``"last"``) and, when its margin differs from its method's m = 0 row,
``delta_ciou``, ``delta_auc``, ``delta_mean_ciou`` with ``delta_*_ci95`` ``[lo, hi]`` (95% t-interval over seeds
and clips: :mod:`marginnce_kit.studies.stats`), ``p_value``, ``resolved`` and ``resolved_holm`` (Holm over the
table's comparisons); ``best_val`` holds the same fields for each run's best epoch on the validation split) and
``<out>/table5.md`` (a table per checkpoint selection; likewise ``table6``, ``table4``, ``noise``, ``negatives``
with its committed ``negatives-plan.json``, and the PNG figures). ``<out>`` defaults to ``runs/studies/<preset>``;
the committed results live in ``results/`` and are rewritten only by an explicit ``--out``. A preset can give
one method more seeds in Table 5 than the others (``StudyPreset.method_seeds``; the JSON's ``seeds_by_method``);
``--seeds`` sets every method's. Every row of a table is scored on one identical set of clips (clips some run could
not score are excluded from every row and listed with their reason), including two rows computed on those clips:
``center prior`` (a fixed centred Gaussian map) and ``ceiling`` (the best any map can score under the protocol).
Finished runs are reused, so an interrupted study resumes where it stopped. ``--batch-size``, ``--backbone``,
``--image-size``, ``--epochs``, ``--limit-steps``, ``--max-failures`` and ``--pretrained`` override the preset's
(or the paper's) settings for every run of the study (recorded in the JSON's ``train`` and ``overrides`` and in
each run's cache key). Table 5 also writes ``<out>/curves.png`` (every run's training loss per epoch) beside each
run's own ``runs/<name>/curves.png``. Errors the user can fix are one line on stderr, exit status 1.

The code lives in :mod:`marginnce_kit.studies` (``paper``, ``presets``, ``runner``, ``tables``, ``run``,
``figures``, ``noise``, ``negatives``, ``stats``); this module is the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli import UsageError, make_parser, one_line, program_name, run_main
from .data.failures import DataError
from .data.synthetic import PRESETS as DATA_PRESETS
from .studies.paper import METHOD_NAMES, PAPER, STUDIES, TABLE4_RUNS, TABLE5_ROWS, TABLE6_ROWS
from .studies.presets import NEGATIVES_SCOPES, PRESETS, REAL_TRAIN, StudyData, StudyPreset, embedded_data
from .studies.run import run_studies, study_table, study_table4, study_table5, study_table6
from .studies.runner import Runner, StudyInterrupted, execute_jobs, execute_runs, plan_runs, run_name
from .studies.tables import (
    DELTA_NOTE,
    markdown_table,
)
from .training.config import AUTO_WORKERS, TrainConfig
from .training.options import add_data_arguments, add_field_argument, check_paths, data_error, read_config_file
from .training.runtime import auto_workers, check_runnable

__all__ = ["PRESETS", "PAPER", "METHOD_NAMES", "STUDIES", "TABLE5_ROWS", "TABLE6_ROWS", "TABLE4_RUNS", "REAL_TRAIN",
           "StudyPreset", "StudyData", "embedded_data", "Runner", "plan_runs", "execute_runs", "execute_jobs",
           "run_name", "markdown_table", "DELTA_NOTE", "study_table", "study_table5", "study_table6",
           "study_table4", "run_studies", "TRAIN_OVERRIDES", "parse_args", "main"]


#: TrainConfig fields a study run can override for every run (``--epochs`` ...); ``None``: not given
TRAIN_OVERRIDES = ("batch_size", "backbone", "image_size", "epochs", "limit_steps", "max_failures", "pretrained")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    summary, _, details = (__doc__ or "").partition("\n")
    p = make_parser("marginnce_kit.table5", summary, details)
    p.add_argument("--preset", choices=tuple(PRESETS), default="default", help="how big each run is")
    p.add_argument("--config", default="", metavar="PATH",
                   help="a preset file (JSON / YAML, the form --print-config writes) instead of --preset")
    p.add_argument("--print-config", action="store_true",
                   help="print the preset these options make (JSON, a preset file) and exit")
    p.add_argument("--out", default=None,
                   help="output folder (None: runs/studies/<preset>; the committed results live in results/ "
                        "and are only rewritten by an explicit --out results/<preset>)")
    p.add_argument("--studies", nargs="+", choices=STUDIES, default=None, help="which studies (None: the preset's)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="override the preset's seeds (every method's, in every study)")
    p.add_argument("--dataset", choices=tuple(DATA_PRESETS), default=None,
                   help="the embedded data set (None: the preset's, vggsound-like; default: the earlier 10-class set)")
    add_field_argument(p, "device", help="where to train and evaluate")
    add_field_argument(p, "workers", default=0, help="DataLoader workers per run (auto or -1: as marginnce_kit.train "
                                                     "resolves it; 0 on CPU)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs at a time on CPU (None: the number of CPU cores, at most 2)")
    p.add_argument("--noise-rates", nargs="+", type=float, default=None,
                   help="noise study: faulty-positive rates (None: the preset's, 0 0.2 0.4 0.6)")
    p.add_argument("--noise-margins", nargs="+", type=float, default=None,
                   help="noise study: margins (None: the preset's, 0 -0.1 -0.2 -0.3; 0 must be one of them)")
    p.add_argument("--negatives-scope", choices=NEGATIVES_SCOPES, default=None,
                   help="faulty-negative study: every cell of its plan, or only the primary contrast's (None: the "
                        "preset's, all); the plan is the same, the rest can follow from the cache")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--tensorboard", action="store_true",
                   help="every run also writes TensorBoard logs to <out>/runs/<name>/tensorboard "
                        "(tensorboard --logdir <out>/runs)")
    p.add_argument("--plan-only", action="store_true",
                   help="write the requested studies' plans (negatives-plan.json) into --out and stop: the plan to "
                        "commit before the runs")
    o = p.add_argument_group("overrides for every run of the study (None: the preset's, or the paper's with real data)")
    for name in TRAIN_OVERRIDES:
        add_field_argument(o, name, **({"default": None} if name != "pretrained" else {}))
    g = p.add_argument_group("real data (the paper's protocol: VGGSound-144K -> VGG-SS)")
    add_data_arguments(g, required=False)
    add_field_argument(g, "val_list", help="validation ids under --test-root (annotated, not in the test list): "
                                           "every row also reports the best_val checkpoint")
    add_field_argument(g, "val_annotations")
    g.add_argument("--heard-train-list", default="", help="vggss_heard.txt (Table 4)")
    g.add_argument("--heard-test-list", default="", help="vggss_heard_test.csv (Table 4)")
    g.add_argument("--unheard-test-list", default="", help="vggss_unheard_test.csv (Table 4)")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace, real: bool, preset: StudyPreset) -> dict[str, Any]:
    """The given overrides, checked once here, before any run starts (as every run's TrainConfig would
    check them), together with ``--workers`` and each of ``--seeds``."""
    given = {k: getattr(args, k) for k in TRAIN_OVERRIDES}
    overrides = {k: v for k, v in given.items() if v is not None and v is not False}  # None / False: not given
    base = TrainConfig(**dict(REAL_TRAIN if real else preset.train, **overrides), train_root="-", train_list="-",
                       workers=args.workers, device=args.device)  # checked when made, once
    check_runnable(base)
    for seed in args.seeds or ():
        replace(base, seed=seed)  # each --seeds value, checked as a run's config checks it
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        dups = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
        raise UsageError(f"--seeds expects distinct seeds, got {args.seeds} (repeated: {dups})")
    return overrides


def _preset(args: argparse.Namespace) -> StudyPreset:
    """``--config``'s preset file, else ``PRESETS[--preset]``; with ``--dataset`` and the noise grid applied.

    Raises:
        UsageError: a preset file that does not read or does not make a valid preset (one line).
    """
    if args.config:
        try:
            preset = StudyPreset.from_dict(read_config_file(args.config))
        except (TypeError, ValueError) as e:
            raise UsageError(f"--config {args.config!r}: {one_line(str(e))}", "fix the file (table5 --print-config "
                             "writes one)") from None
    else:
        preset = PRESETS[args.preset]
    changes: dict[str, Any] = {}
    if args.dataset:
        changes["dataset"] = args.dataset
    if args.noise_rates is not None:
        changes["noise_rates"] = tuple(args.noise_rates)
    if args.noise_margins is not None:
        changes["noise_margins"] = tuple(args.noise_margins)
    if args.negatives_scope is not None:
        changes["negatives_scope"] = args.negatives_scope
    try:
        return replace(preset, **changes)
    except ValueError as e:
        raise UsageError(one_line(str(e)).replace("noise_rates:", "--noise-rates:")
                         .replace("noise_margins:", "--noise-margins:")) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marginnce_kit.table5``; returns the exit status.

    Raises:
        UsageError: an error the user can fix (one line under :func:`marginnce_kit.cli.run_main`): partial
            real-data paths, a noise grid without m = 0 or a rate outside [0, 1), an override no run
            accepts, too many broken clips.
    """
    args = parse_args(argv)
    preset = _preset(args)
    if args.print_config:
        print(json.dumps(preset.to_dict(), indent=2))
        return 0
    real = [args.train_root, args.train_list, args.test_root, args.test_list, args.annotations]
    data = None
    if any(real):
        if not all(real):
            raise UsageError("real data needs all of --train-root --train-list --test-root --test-list "
                             "--annotations", "give the five paths, or none for the embedded data")
        check_paths(args)  # before any run trains: a wrong test path must not wait for the training to end
        for option in ("heard_train_list", "heard_test_list", "unheard_test_list"):
            value = getattr(args, option)
            if value and not Path(value).is_file():
                flag = "--" + option.replace("_", "-")
                raise UsageError(f"{flag}: no such file {value!r}", f"check the path given to {flag}")
        data = StudyData(args.train_root, args.train_list, args.test_root, args.test_list, args.annotations,
                         args.annotation_format, args.heard_train_list, args.heard_test_list, args.unheard_test_list,
                         source=f"real:{args.train_list} -> {args.test_list}", val_list=args.val_list,
                         val_annotations=args.val_annotations or args.annotations)
    overrides = _overrides(args, data is not None, preset)
    studies = tuple(args.studies) if args.studies else preset.studies
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs expects an int >= 1 (training runs at a time), got {args.jobs}")
    jobs = args.jobs if args.jobs is not None else max(1, min(2, os.cpu_count() or 1))
    workers = auto_workers(args.device) if args.workers == AUTO_WORKERS else args.workers
    for name in ("noise", "negatives"):
        if name in studies and data is not None:
            raise UsageError(f"the {name} study runs on the embedded data only (it sets the faulty-positive rate "
                             f"and the classes of the training split)",
                             f"drop --studies {name}, or the real-data paths")
    if args.dataset and data is not None:
        raise UsageError("--dataset names embedded data; real data comes from the paths", "drop --dataset")
    out = Path(args.out) if args.out else Path("runs") / "studies" / args.preset
    try:
        run_studies(preset, out, studies, data, args.seeds, args.device, workers, args.progress, overrides, jobs,
                    plan_only=args.plan_only, tensorboard=args.tensorboard,
                    label=f"file:{args.config}" if args.config else args.preset)
    except DataError as e:  # raised in a worker process too: the main process shows it once, as one line
        raise data_error(e) from None
    except StudyInterrupted as e:  # Ctrl-C, SIGINT or SIGTERM: every run stopped; one line, 130 / 143
        print(f"{program_name()}: {e}", file=sys.stderr, flush=True)
        return e.exit_status
    return 0


if __name__ == "__main__":
    run_main(main)
