"""The paper's studies in one command: Table 5 (marginNCE on three baselines), Table 6 (margin sweep),
Table 4 (heard / unheard classes), the noisy-correspondence study and Fig. 1-style figures.

    python -m baselines.table5                       # Table 5 on the embedded data (5 seeds, 2,000 test clips)
    python -m baselines.table5 --preset smoke        # the same study in minutes (CI runs it)
    python -m baselines.table5 --preset full         # 10 seeds, all studies
    python -m baselines.table5 --studies table5 table6 table4 noise figures
    python -m baselines.table5 --train-root data/vggsound --train-list vggss_144k.txt \
        --test-root data/vggss --test-list vggss_test.csv --annotations vggss.json --seeds 0   # the paper's protocol

Writes ``<out>/table5.json`` (``{"rows": [...], "n_test", "excluded": [{"id", "reason"}], ...}``, each row
with ``method``, ``margin``, ``n``, ``ciou``, ``auc``, ``mean_ciou`` (mean over seeds, ``*_std``),
``paper_ciou``, ``paper_auc`` and, when its margin differs from its method's m = 0 row, ``delta_ciou``,
``delta_auc``, ``delta_mean_ciou`` with ``delta_*_ci95`` ``[lo, hi]`` (95% paired bootstrap over seeds,
then clips: :mod:`baselines.studies.stats`) and ``resolved``) and ``<out>/table5.md`` (likewise
``table6``, ``table4``, ``noise``, and the PNG figures). ``<out>`` defaults to ``runs/studies/<preset>``;
the committed results live in ``results/`` and are rewritten only by an explicit ``--out``. Every row of
a table is scored on one identical set of clips (clips some run could not score are excluded from every
row and listed with their reason), including two rows computed on those clips: ``center prior`` (a fixed
centred Gaussian map) and ``ceiling`` (the best any map can score under the protocol). Finished runs are
reused, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .io import atomic_write_text
from .scoring import evaluate_model
from .train import TrainConfig, build_test_set, build_train_set, train
from .training.checkpoint import load_model

__all__ = ["PRESETS", "PAPER", "StudyPreset", "run_studies", "main"]

# --------------------------------------------------------------------------- the paper's numbers (its Tables 4, 5 and 6)

METHOD_NAMES = {"lvs": "LVS", "ezvsl": "EZ-VSL (w/o OGL)", "reference": "Ours"}

PAPER: Dict[str, Dict[Tuple[str, float], Tuple[float, float]]] = {
    "table5": {
        ("lvs", 0.0): (33.99, 37.76), ("lvs", -0.2): (34.80, 38.17), ("lvs", -0.3): (35.73, 38.52),
        ("ezvsl", 0.0): (37.57, 38.70), ("ezvsl", -0.2): (38.70, 39.26),
        ("reference", 0.0): (36.93, 38.58), ("reference", -0.2): (38.25, 39.06),
    },
    "table6": {
        ("reference", 0.2): (37.05, 38.56), ("reference", 0.0): (36.93, 38.58),
        ("reference", -0.1): (37.51, 38.89), ("reference", -0.2): (38.25, 39.06),
        ("reference", -0.3): (37.65, 38.84), ("reference", -0.4): (36.93, 38.47),
    },
    # Table 4 (open set): (split, method, margin) -> (cIoU, AUC); LVS / EZ-VSL at their default loss
    "table4": {
        ("heard", "lvs", 0.0): (28.90, 36.20), ("heard", "ezvsl", 0.0): (31.86, 36.19),
        ("heard", "reference", -0.2): (36.35, 37.92), ("heard", "reference", 0.0): (34.40, 37.38),
        ("heard", "reference", 0.2): (34.83, 37.50),
        ("unheard", "lvs", 0.0): (26.30, 34.70), ("unheard", "ezvsl", 0.0): (32.66, 36.72),
        ("unheard", "reference", -0.2): (37.90, 39.17), ("unheard", "reference", 0.0): (36.74, 38.39),
        ("unheard", "reference", 0.2): (36.15, 38.44),
    },
}

TABLE5_ROWS = list(PAPER["table5"])
TABLE6_ROWS = list(PAPER["table6"])
TABLE4_RUNS = [("lvs", 0.0), ("ezvsl", 0.0), ("reference", -0.2), ("reference", 0.0), ("reference", 0.2)]
STUDIES = ("table5", "table6", "table4", "noise", "figures")


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class StudyPreset:
    """How big each run is. ``dataset`` names a :mod:`baselines.data.synthetic` preset (embedded data),
    ``dataset_overrides`` changes some of its fields (e.g. a larger test split); ``noise_rates`` and
    ``noise_margins`` span the noisy-correspondence study (:mod:`baselines.studies.noise`)."""

    dataset: str
    seeds: Tuple[int, ...]
    studies: Tuple[str, ...]
    train: Dict[str, Any] = field(default_factory=dict)
    dataset_overrides: Dict[str, Any] = field(default_factory=dict)
    noise_rates: Tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)
    noise_margins: Tuple[float, ...] = (0.0, -0.1, -0.2, -0.3)


# CPU-sized: the small backbone (stride 32, 7 x 7 maps), Adam at 1e-3, decoded clips cached in memory
_EMBEDDED_TRAIN = dict(backbone="small", width=16, dim=128, batch_size=64, lr=1e-3, weight_decay=1e-4, epochs=10,
                       cache=True)
# The embedded recipe adds a cosine decay with one epoch of linear warm-up (31 steps of batch 64 on the 2,000
# training clips). Measured at m = 0 on the reference model, 4 seeds each (results/recipe/recipes.md): the seed
# SD of cIoU fell from 5.21 to 2.99 points (AUC 2.42 -> 1.46) at the same cost, and the last epoch's loss drop
# from 0.077 to 0.024 (the constant-lr loss was still falling at epoch 10). Applied to every method alike.
_EMBEDDED_RECIPE = dict(_EMBEDDED_TRAIN, lr_schedule="cosine", warmup_steps=31)
# 2,000 test clips instead of 500: evaluation is cheap and the clip-level part of every interval shrinks by 2x
_EMBEDDED_DATA = dict(num_test=2000)

PRESETS: Dict[str, StudyPreset] = {
    "smoke": StudyPreset("smoke", (0,), ("table5",), dict(_EMBEDDED_RECIPE, epochs=4, batch_size=32, warmup_steps=12),
                         noise_rates=(0.0, 0.4), noise_margins=(0.0, -0.2)),
    # 5 seeds: the reference model's Δ cIoU (m = -0.2 vs 0) came to a 95% half-width of 1.55 points (3 seeds: 2.38)
    "default": StudyPreset("default", (0, 1, 2, 3, 4), ("table5", "figures"), dict(_EMBEDDED_RECIPE),
                           dataset_overrides=dict(_EMBEDDED_DATA)),
    "full": StudyPreset("default", tuple(range(10)), STUDIES, dict(_EMBEDDED_RECIPE),
                        dataset_overrides=dict(_EMBEDDED_DATA)),
}

# the paper's protocol (its implementation details): 20 epochs, Adam with weight decay, batch 128, lr 1e-4, ResNet-18
REAL_TRAIN = dict(backbone="resnet18", dim=512, epochs=20, batch_size=128, lr=1e-4, weight_decay=1e-4, cache=False)


# --------------------------------------------------------------------------- data


@dataclass
class StudyData:
    """Where one study's clips live (real or embedded)."""

    train_root: str
    train_list: str
    test_root: str
    test_list: str
    annotations: str
    annotation_format: str = "vggss"
    heard_train_list: str = ""
    heard_test_list: str = ""
    unheard_test_list: str = ""
    source: str = "embedded"


def embedded_data(dataset_preset: str, progress: bool = True, **overrides: Any) -> StudyData:
    """The embedded dataset ``baselines.data.synthetic.PRESETS[dataset_preset]`` with ``overrides``
    (``SyntheticConfig`` fields, e.g. ``num_test=2000``), generated on first use."""
    from .data.synthetic import PRESETS as DATA_PRESETS, ensure_dataset

    root = ensure_dataset(config=DATA_PRESETS[dataset_preset].replace(**overrides))
    r = str(root)
    changed = "".join(f",{k}={v}" for k, v in sorted(overrides.items()))
    return StudyData(r, f"{r}/train.txt", r, f"{r}/test.csv", f"{r}/vggss.json", "vggss",
                     f"{r}/heard_train.txt", f"{r}/heard_test.csv", f"{r}/unheard_test.csv",
                     source=f"embedded:{dataset_preset}{changed}:{Path(r).name}")


# --------------------------------------------------------------------------- running


def _run_name(model: str, margin: float, seed: int, tag: str = "") -> str:
    return f"{tag}{model}_m{margin:+.2f}_s{seed}"


_TEST_SETS: Dict[str, Any] = {}
_TRAIN_SETS: Dict[str, Any] = {}


class Runner:
    """Trains (or reuses) one run per (model, margin, seed, train list) and evaluates it on test splits."""

    def __init__(self, out: Path, data: StudyData, train_kwargs: Dict[str, Any], device: str, workers: int,
                 progress: bool) -> None:
        self.out, self.data, self.train_kwargs = out, data, train_kwargs
        self.device, self.workers, self.progress = device, workers, progress
        self._reference_rows: Dict[str, Dict[str, Dict[str, float]]] = {}

    def test_set(self, test_list: str):
        key = json.dumps([self.data.test_root, test_list, self.data.annotations, self.data.annotation_format,
                          bool(self.train_kwargs.get("cache"))])
        if key not in _TEST_SETS:  # shared by every runner of this process (decoded clips reused)
            _TEST_SETS[key] = build_test_set(self.data.test_root, test_list, self.data.annotations,
                                             self.data.annotation_format, cache=bool(self.train_kwargs.get("cache")))
        return _TEST_SETS[key]

    def train_set(self, config: TrainConfig):
        key = json.dumps([config.train_root, config.train_list, config.cache, config.max_failures])
        if key not in _TRAIN_SETS:
            _TRAIN_SETS.clear()  # one training set's decoded clips in memory at a time
            _TRAIN_SETS[key] = build_train_set(config)
        return _TRAIN_SETS[key]

    def reference_rows(self, test_list: str) -> Dict[str, Dict[str, Any]]:
        """``center prior`` and ``ceiling`` on every clip of the split, with ``per_clip`` scores."""
        from .evaluate import reference_rows

        if test_list not in self._reference_rows:
            self._reference_rows[test_list] = reference_rows(self.test_set(test_list))
        return self._reference_rows[test_list]

    def _config(self, model: str, margin: float, seed: int, train_list: str) -> TrainConfig:
        return TrainConfig(model=model, margin=margin, seed=seed, train_root=self.data.train_root,
                           train_list=train_list, device=self.device, workers=self.workers, **self.train_kwargs)

    def _cache_entry(self, model: str, margin: float, seed: int, train_list: str, test_lists: Sequence[str],
                     tag: str = "") -> Tuple[Path, TrainConfig, Dict[str, Any]]:
        """Where a run's result lives, its config, and the key a cached result must carry."""
        config = self._config(model, margin, seed, train_list)
        path = self.out / "runs" / _run_name(model, margin, seed, tag) / "result.json"
        return path, config, {"config": asdict(config), "tests": list(test_lists)}

    def _cached(self, *spec: Any) -> Optional[Dict[str, Dict[str, Any]]]:
        path, _, key = self._cache_entry(*spec)
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["results"]
        return None

    def is_cached(self, *spec: Any) -> bool:
        return self._cached(*spec) is not None

    def run(self, model: str, margin: float, seed: int, train_list: str, test_lists: Sequence[str],
            tag: str = "") -> Dict[str, Dict[str, Any]]:
        """Train once, evaluate on every test list; cached in ``runs/<name>/result.json``."""
        spec = (model, margin, seed, train_list, test_lists, tag)
        cached = self._cached(*spec)
        if cached is not None:
            return cached
        result_path, config, key = self._cache_entry(*spec)
        run_dir = result_path.parent
        name = run_dir.name
        t0, cpu0 = time.time(), time.process_time()
        if self.progress:
            print(f"  training {name} ...", flush=True)
        # no cached result for this key: whatever run_dir holds (a stale or killed run) is replaced
        train(config, run_dir, progress=self.progress, train_set=self.train_set(config), overwrite=True)
        net, _, _ = load_model(run_dir / "checkpoint.pt")
        results = {t: evaluate_model(net, self.test_set(t), self.device,
                                     batch_size=64, workers=self.workers) for t in test_lists}
        # wall time depends on the machine's load; CPU time (this process, all its threads) does not
        results["_seconds"] = {"train_and_eval": round(time.time() - t0, 1),
                               "cpu": round(time.process_time() - cpu0, 1)}
        atomic_write_text(json.dumps({"key": key, "results": results}, indent=2), result_path)
        return results


RunSpec = Tuple[str, float, int, str, Tuple[str, ...], str]  # model, margin, seed, train list, test lists, tag


def plan_runs(studies: Sequence[str], data: StudyData, seeds: Sequence[int]) -> List[RunSpec]:
    """Every training run the requested studies need, once each (Table 6 shares rows with Table 5)."""
    runs: List[RunSpec] = []
    test = (data.test_list,)
    if "table5" in studies or "figures" in studies:
        runs += [(m, mg, s, data.train_list, test, "") for m, mg in TABLE5_ROWS
                 for s in (seeds if "table5" in studies else seeds[:1])]
    if "table6" in studies:
        runs += [(m, mg, s, data.train_list, test, "") for m, mg in TABLE6_ROWS for s in seeds]
    if "table4" in studies:
        tests = (data.heard_test_list, data.unheard_test_list)
        runs += [(m, mg, s, data.heard_train_list, tests, "heard_") for m, mg in TABLE4_RUNS for s in seeds]
    return list(dict.fromkeys(runs))


_WORKER_RUNNERS: Dict[str, "Runner"] = {}  # per worker process (its datasets are shared: _TEST_SETS, _TRAIN_SETS)


def _run_job(args: Tuple[Path, StudyData, Dict[str, Any], str, int, int, RunSpec]) -> Tuple[str, float]:
    out, data, train_kwargs, device, workers, threads, (model, margin, seed, train_list, tests, tag) = args
    torch.set_num_threads(threads)
    t0 = time.time()
    key = json.dumps([str(out), asdict(data), train_kwargs, device, workers], sort_keys=True)
    if key not in _WORKER_RUNNERS:
        _WORKER_RUNNERS[key] = Runner(out, data, train_kwargs, device, workers, progress=False)
    _WORKER_RUNNERS[key].run(model, margin, seed, train_list, tests, tag)
    return _run_name(model, margin, seed, tag), time.time() - t0


def execute_runs(runner: "Runner", runs: Sequence[RunSpec], jobs: int) -> None:
    """Train and evaluate ``runs`` of one runner (see :func:`execute_jobs`)."""
    execute_jobs([(runner, r) for r in runs], jobs)


def execute_jobs(pairs: Sequence[Tuple["Runner", RunSpec]], jobs: int) -> None:
    """Train and evaluate each ``(runner, run)`` (cached ones are skipped), ``jobs`` at a time in separate
    processes, each with ``cpu_count // jobs`` threads: small CPU models use two single-thread processes
    better than one two-thread process. A worker process keeps its decoded clips for its next runs."""
    todo = [(rn, r) for rn, r in pairs if not rn.is_cached(*r)]
    if not todo:
        return
    print(f"{len(todo)} training runs to do ({len(pairs) - len(todo)} cached), {jobs} at a time", flush=True)
    if jobs <= 1:
        for rn, r in todo:
            rn.run(*r)
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    args = [(rn.out, rn.data, rn.train_kwargs, rn.device, rn.workers, threads, r) for rn, r in todo]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_job, a) for a in args]
        for i, f in enumerate(as_completed(futures), 1):
            name, seconds = f.result()
            print(f"  [{i}/{len(todo)}] {name} done in {seconds:.0f} s", flush=True)
    import gc

    gc.collect()


# --------------------------------------------------------------------------- aggregation and tables


def _stats(values: List[float]) -> Tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _summary_on(evaluation: Dict[str, Any], ids: Sequence[str]) -> Dict[str, float]:
    """The protocol's summary of one evaluation restricted to the clips ``ids``."""
    from .evaluation import summarize_cious

    by_id = dict(zip(evaluation["per_clip"]["id"], evaluation["per_clip"]["ciou"]))
    return summarize_cious([by_id[i] for i in ids])


def _row(method: str, margin: Optional[float], evals: List[Dict[str, Any]], paper: Optional[Tuple[float, float]],
         seeds: Sequence[int], ids: Sequence[str], **extra: Any) -> Dict[str, Any]:
    per = [_summary_on(e, ids) for e in evals]
    row: Dict[str, Any] = {"method": method, "margin": margin}
    for key in ("ciou", "auc", "mean_ciou"):
        mean, std = _stats([p[key] for p in per])
        row[key], row[f"{key}_std"] = round(mean, 2), round(std, 2)
    row["per_seed"] = [{"seed": s, "ciou": round(p["ciou"], 2), "auc": round(p["auc"], 2),
                        "mean_ciou": round(p["mean_ciou"], 2)} for s, p in zip(seeds, per)]
    row["n_seeds"], row["n"], row["n_test"] = len(evals), len(ids), len(ids)
    row["paper_ciou"], row["paper_auc"] = (paper if paper else (None, None))
    row.update(extra)
    return row


def _reference_table_rows(ref: Dict[str, Dict[str, Any]], ids: Sequence[str], **extra: Any) -> List[Dict[str, Any]]:
    rows = []
    for name, r in ref.items():
        s = _summary_on(r, ids)
        rows.append(dict({"method": name, "margin": None, "ciou": round(s["ciou"], 2), "auc": round(s["auc"], 2),
                          "mean_ciou": round(s["mean_ciou"], 2), "ciou_std": 0.0, "auc_std": 0.0,
                          "mean_ciou_std": 0.0, "n_seeds": 0, "n": len(ids), "n_test": len(ids),
                          "paper_ciou": None, "paper_auc": None}, **extra))
    return rows


def _add_margin_effects(rows: List[Dict[str, Any]], evals: List[List[Dict[str, Any]]], ids: Sequence[str],
                        group: str = "method_key") -> None:
    """For each row whose margin differs from its group's m = 0 row: Δ of cIoU / AUC / mean cIoU with
    95% paired-bootstrap intervals (:mod:`baselines.studies.stats`) on the clips ``ids``, seeds paired by
    position (``evals[i][j]`` is row ``i``'s seed ``j``), and the paper's Δ where the paper has both rows.
    ``evals`` is aligned with ``rows``."""
    from .studies.stats import paired_effects, stack_per_clip

    base = {r[group]: i for i, r in enumerate(rows) if r.get("margin") == 0.0 and group in r}
    for i, r in enumerate(rows):
        b = base.get(r.get(group))
        if b is None or b == i or r.get("margin") is None:
            continue
        if len(evals[i]) != len(evals[b]):
            raise ValueError(f"{r['method']} m={r['margin']}: expected the {len(evals[b])} seeds of its m = 0 row, "
                             f"got {len(evals[i])}")
        r.update(paired_effects(stack_per_clip(evals[i], ids), stack_per_clip(evals[b], ids)))
        pb = rows[b]
        for key in ("ciou", "auc"):
            if r.get(f"paper_{key}") is not None and pb.get(f"paper_{key}") is not None:
                r[f"paper_delta_{key}"] = round(r[f"paper_{key}"] - pb[f"paper_{key}"], 2)


def _fmt(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def _fmt_delta(r: Dict[str, Any], key: str) -> str:
    if f"delta_{key}" not in r:
        return ""
    lo, hi = r[f"delta_{key}_ci95"]
    return f"{r[f'delta_{key}']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


DELTA_NOTE = ("Δ [lo, hi]: the row minus the same method's m = 0 row (cIoU / AUC points), both scored on the same "
              "test clips and trained with the same seeds (same initialisation and data order), with its 95% "
              "paired-bootstrap interval: seeds resampled, then clips (one draw of clips for every drawn seed); "
              "with one seed, clips only (scipy.stats.bootstrap, paired). resolved: the cIoU interval excludes 0. "
              "paper Δ: the same difference in the paper's table. ± is the standard deviation over seeds.")


def markdown_table(title: str, rows: List[Dict[str, Any]], note: str, split_column: bool = False,
                   extra_column: Optional[Tuple[str, str]] = None) -> str:
    """A study table in Markdown: ``title``, ``note`` above, the Δ definition below. ``extra_column``:
    ``(header, row key)`` of one more leading column (e.g. the faulty-positive rate)."""
    head = ["split"] if split_column else []
    head += [extra_column[0]] if extra_column else []
    head += ["method", "margin", "n", "cIoU", "AUC", "mean cIoU", "Δ cIoU [95% CI]", "Δ AUC [95% CI]", "resolved",
             "paper cIoU", "paper AUC", "paper Δ cIoU"]
    lines = [f"## {title}", "", note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = r.get("n_seeds", 0)
        m = "-" if r["margin"] is None else f"{r['margin']:+.1f}"
        cells = [r["split"]] if split_column else []
        cells += [str(r.get(extra_column[1], "")) if r.get(extra_column[1]) is not None else "-"] if extra_column else []
        cells += [r["method"], m, str(r.get("n", r.get("n_test", ""))), _fmt(r["ciou"], r["ciou_std"], n),
                  _fmt(r["auc"], r["auc_std"], n), _fmt(r["mean_ciou"], r.get("mean_ciou_std", 0.0), n),
                  _fmt_delta(r, "ciou"), _fmt_delta(r, "auc"),
                  "" if "resolved" not in r else ("yes" if r["resolved"] else "no"),
                  "-" if r["paper_ciou"] is None else f"{r['paper_ciou']:.2f}",
                  "-" if r["paper_auc"] is None else f"{r['paper_auc']:.2f}",
                  f"{r['paper_delta_ciou']:+.2f}" if "paper_delta_ciou" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + DELTA_NOTE + "\n"


def _write(out: Path, name: str, payload: Dict[str, Any], md: str) -> None:
    atomic_write_text(json.dumps(payload, indent=2), out / f"{name}.json")
    atomic_write_text(md, out / f"{name}.md")


def _note(payload: Dict[str, Any]) -> str:
    excluded = len(payload.get("excluded", []))
    return (f"Data: {payload['data']['source']}; seeds {list(payload['seeds'])}; test clips n = {payload['n_test']} "
            f"(every row on the same clips; {excluded} excluded, listed in the JSON). "
            f"Ours = cIoU (AP50) / AUC / mean cIoU in percent (mean ± std over seeds); paper = VGGSound-144K -> VGG-SS.")


def _same_clips(runner: Runner, test: str, evals: List[Dict[str, Any]]) -> Tuple[List[str], List[Dict[str, str]]]:
    """The clips every evaluation (and the reference rows) scored, and the excluded ones with reasons."""
    from .studies.stats import common_clips

    test_set = runner.test_set(test)
    tracker = getattr(test_set, "failures", None)
    keep, excluded = common_clips(evals + list(runner.reference_rows(test).values()), list(test_set.ids),
                                  tracker.failed if tracker is not None else None)
    if not keep:
        raise ValueError(f"{test}: no test clip was scored by every run ({len(excluded)} excluded)")
    return keep, excluded


def _model_table(runner: Runner, specs: Sequence[Tuple[str, str, float, Optional[Tuple[float, float]], Dict[str, Any]]],
                 seeds: Sequence[int], train_list: str, test: str, tag: str = "",
                 group: str = "method_key") -> Tuple[List[Dict[str, Any]], List[str], List[Dict[str, str]]]:
    """Rows of ``specs`` = ``(model, label, margin, paper, extra)`` on one identical clip set, their Δ
    against m = 0, then the centre-prior and ceiling rows; also the clip ids and the excluded clips."""
    evals = [[runner.run(model, margin, s, train_list, [test], tag)[test] for s in seeds]
             for model, _, margin, _, _ in specs]
    ids, excluded = _same_clips(runner, test, [e for row in evals for e in row])
    rows = [_row(label, margin, ev, paper, seeds, ids, **dict({"method_key": model}, **extra))
            for (model, label, margin, paper, extra), ev in zip(specs, evals)]
    _add_margin_effects(rows, evals, ids, group)
    return rows + _reference_table_rows(runner.reference_rows(test), ids), ids, excluded


# --------------------------------------------------------------------------- studies


def study_table5(runner: Runner, seeds: Sequence[int], meta: Dict[str, Any]) -> Dict[str, Any]:
    specs = [(m, METHOD_NAMES[m], mg, PAPER["table5"][(m, mg)], {}) for m, mg in TABLE5_ROWS]
    rows, ids, excluded = _model_table(runner, specs, seeds, runner.data.train_list, runner.data.test_list)
    payload = dict(meta, study="table5", seeds=list(seeds), rows=rows, n_test=len(ids), excluded=excluded)
    _write(runner.out, "table5", payload, markdown_table("Table 5: marginNCE on three baselines", rows, _note(payload)))
    return payload


def study_table6(runner: Runner, seeds: Sequence[int], meta: Dict[str, Any]) -> Dict[str, Any]:
    specs = [(m, "Ours", mg, PAPER["table6"][(m, mg)], {}) for m, mg in TABLE6_ROWS]
    rows, ids, excluded = _model_table(runner, specs, seeds, runner.data.train_list, runner.data.test_list)
    payload = dict(meta, study="table6", seeds=list(seeds), rows=rows, n_test=len(ids), excluded=excluded)
    _write(runner.out, "table6", payload, markdown_table("Table 6: margin sweep (reference model)", rows, _note(payload)))
    from .studies.figures import plot_margin_sweep

    plot_margin_sweep(rows, runner.out / "table6.png")
    return payload


def study_table4(runner: Runner, seeds: Sequence[int], meta: Dict[str, Any]) -> Dict[str, Any]:
    d = runner.data
    if not (d.heard_train_list and d.heard_test_list and d.unheard_test_list):
        raise ValueError("table4: expected --heard-train-list, --heard-test-list and --unheard-test-list with real data")
    tests = {"heard": d.heard_test_list, "unheard": d.unheard_test_list}
    for model, margin in TABLE4_RUNS:  # one training run, evaluated on both splits
        for s in seeds:
            runner.run(model, margin, s, d.heard_train_list, list(tests.values()), tag="heard_")
    rows: List[Dict[str, Any]] = []
    n_test, excluded = {}, {}
    for split, test in tests.items():
        evals = [[runner.run(m, mg, s, d.heard_train_list, list(tests.values()), tag="heard_")[test] for s in seeds]
                 for m, mg in TABLE4_RUNS]
        ids, excluded[split] = _same_clips(runner, test, [e for row in evals for e in row])
        split_rows = [_row(METHOD_NAMES[m], mg, ev, PAPER["table4"][(split, m, mg)], seeds, ids,
                           method_key=f"{split}:{m}", split=split) for (m, mg), ev in zip(TABLE4_RUNS, evals)]
        _add_margin_effects(split_rows, evals, ids)
        rows += split_rows + _reference_table_rows(runner.reference_rows(test), ids, split=split)
        n_test[split] = len(ids)
    payload = dict(meta, study="table4", seeds=list(seeds), rows=rows, n_test=n_test, excluded=excluded)
    note = (f"Data: {d.source}; trained on the heard classes only; seeds {list(seeds)}; test clips n = {n_test}. "
            "Heard: test clips of training classes; unheard: of classes never seen in training.")
    _write(runner.out, "table4", payload, markdown_table("Table 4: open-set (heard / unheard classes)", rows, note, split_column=True))
    return payload


def run_studies(preset: str, out: Path, studies: Sequence[str], data: Optional[StudyData], seeds: Optional[Sequence[int]],
                device: str = "cpu", workers: int = 0, progress: bool = True, train_overrides: Optional[Dict[str, Any]] = None,
                jobs: int = 1, noise_grid: Optional[Dict[str, Tuple[float, ...]]] = None) -> Dict[str, Any]:
    """Run ``studies`` of ``preset`` (``data=None``: the embedded data) into ``out``; ``noise_grid``
    (``noise_rates`` / ``noise_margins``) overrides the preset's noise-study grid."""
    import dataclasses

    from .studies import noise as N

    p = dataclasses.replace(PRESETS[preset], **(noise_grid or {}))
    embedded = data is None
    if data is None:
        data = embedded_data(p.dataset, progress=progress, **p.dataset_overrides)
        train_kwargs = dict(p.train)
    else:
        train_kwargs = dict(REAL_TRAIN)
    train_kwargs.update(train_overrides or {})
    seeds = tuple(seeds) if seeds else p.seeds
    if "noise" in studies and not embedded:
        raise ValueError("noise: the noisy-correspondence study runs on the embedded data only (it sets the "
                         "faulty-positive rate of the training split)")
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, data, train_kwargs, device, workers, progress)
    meta = {"preset": preset, "seeds": list(seeds), "data": asdict(data), "train": train_kwargs,
            "torch": torch.__version__}
    results: Dict[str, Any] = {}
    t0 = time.time()
    jobs_list = [(runner, r) for r in plan_runs(studies, data, seeds)]
    noise_plan = N.plan(runner, p, seeds) if "noise" in studies else None
    if noise_plan is not None:
        jobs_list += noise_plan.jobs
    jobs_list = list({(id(rn), spec): (rn, spec) for rn, spec in jobs_list}.values())
    execute_jobs(jobs_list, jobs if device == "cpu" else 1)
    # the measured cost of the study: every run's training + evaluation time, as recorded when it ran
    meta["compute"] = {"runs": len(jobs_list), "jobs": jobs,
                       "train_and_eval_seconds_total": round(sum(rn.run(*r)["_seconds"]["train_and_eval"]
                                                                 for rn, r in jobs_list), 1),
                       "cpu_seconds_total": round(sum(rn.run(*r)["_seconds"].get("cpu", 0.0) for rn, r in jobs_list), 1),
                       "runs_without_cpu_time": sum("cpu" not in rn.run(*r)["_seconds"] for rn, r in jobs_list)}
    if "table5" in studies:
        results["table5"] = study_table5(runner, seeds, meta)
        print(markdown_table("Table 5", results["table5"]["rows"], _note(results["table5"])))
    if "table6" in studies:
        results["table6"] = study_table6(runner, seeds, meta)
        print(markdown_table("Table 6", results["table6"]["rows"], _note(results["table6"])))
    if "table4" in studies:
        results["table4"] = study_table4(runner, seeds, meta)
        print(Path(out / "table4.md").read_text())
    if noise_plan is not None:
        results["noise"] = N.study_noise(runner, noise_plan, seeds, meta)
        print(Path(out / "noise.md").read_text())
    if "figures" in studies:
        from .studies.figures import study_figures

        if "table5" not in studies:
            study_table5(runner, seeds[:1], meta)
        print(f"figure: {study_figures(runner, seeds[0], meta)}")
    print(f"done in {time.time() - t0:.0f} s; results in {out}/")
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m baselines.table5", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="default", help="(default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/studies/<preset>; the committed results live in results/ "
                        "and are only rewritten by an explicit --out results/<preset>)")
    p.add_argument("--studies", nargs="+", choices=STUDIES, default=None,
                   help="which studies (default: the preset's)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the preset's seeds")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per run (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs at a time on CPU (default: the number of CPU cores, at most 2)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--noise-rates", nargs="+", type=float, default=None,
                   help="noise study: faulty-positive rates (default: the preset's, 0 0.2 0.4 0.6)")
    p.add_argument("--noise-margins", nargs="+", type=float, default=None,
                   help="noise study: margins (default: the preset's, 0 -0.1 -0.2 -0.3; 0 must be one of them)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    g = p.add_argument_group("real data (the paper's protocol: VGGSound-144K -> VGG-SS)")
    g.add_argument("--train-root", default="")
    g.add_argument("--train-list", default="")
    g.add_argument("--test-root", default="")
    g.add_argument("--test-list", default="")
    g.add_argument("--annotations", default="")
    g.add_argument("--annotation-format", choices=("vggss", "flickr"), default="vggss")
    g.add_argument("--heard-train-list", default="", help="vggss_heard.txt (Table 4)")
    g.add_argument("--heard-test-list", default="", help="vggss_heard_test.csv (Table 4)")
    g.add_argument("--unheard-test-list", default="", help="vggss_unheard_test.csv (Table 4)")
    g.add_argument("--pretrained", action="store_true", help="ImageNet weights for the visual encoders")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    real = [args.train_root, args.train_list, args.test_root, args.test_list, args.annotations]
    data = None
    if any(real):
        if not all(real):
            raise SystemExit("table5: real data needs all of --train-root --train-list --test-root --test-list --annotations")
        data = StudyData(args.train_root, args.train_list, args.test_root, args.test_list, args.annotations,
                         args.annotation_format, args.heard_train_list, args.heard_test_list, args.unheard_test_list,
                         source=f"real:{args.train_list} -> {args.test_list}")
    overrides: Dict[str, Any] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.pretrained:
        overrides["pretrained"] = True
    studies = tuple(args.studies) if args.studies else PRESETS[args.preset].studies
    import os

    jobs = args.jobs if args.jobs is not None else max(1, min(2, os.cpu_count() or 1))
    for name in ("noise_rates", "noise_margins"):
        values = getattr(args, name)
        if values is not None and any(not (0.0 <= v < 1.0) for v in values) and name == "noise_rates":
            raise SystemExit(f"table5: --noise-rates expects rates in [0, 1), got {values}")
        if values is not None and name == "noise_margins" and 0.0 not in values:
            raise SystemExit(f"table5: --noise-margins must include 0 (every effect is against m = 0), got {values}")
    noise = {k: tuple(v) for k, v in (("noise_rates", args.noise_rates), ("noise_margins", args.noise_margins))
             if v is not None}
    out = Path(args.out) if args.out else Path("runs") / "studies" / args.preset
    run_studies(args.preset, out, studies, data, args.seeds, args.device, args.workers, args.progress,
                overrides, jobs, noise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
