"""The paper's studies in one command: Table 5 (marginNCE on three baselines), Table 6 (margin sweep),
Table 4 (heard / unheard classes) and Fig. 1-style qualitative figures.

    python -m baselines.table5                       # Table 5 on the embedded default dataset
    python -m baselines.table5 --preset smoke        # the same study in under 3 minutes (CI runs it)
    python -m baselines.table5 --preset full         # several seeds, all studies (mean +- std)
    python -m baselines.table5 --studies table5 table6 table4 figures
    python -m baselines.table5 --train-root data/vggsound --train-list vggss_144k.txt \
        --test-root data/vggss --test-list vggss_test.csv --annotations vggss.json   # the paper's protocol

Writes ``<out>/table5.json`` (``{"rows": [...]}``, each row with ``method``, ``margin``, ``ciou``,
``auc``, ``paper_ciou``, ``paper_auc``, ...) and ``<out>/table5.md`` (likewise ``table6``,
``table4``, and the PNG figures). Every table carries two rows computed on the same test clips:
``center prior`` (a fixed centred Gaussian map) and ``ceiling`` (the best any map can score
under the protocol). Finished runs are reused, so an interrupted study resumes where it stopped.
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

from .train import TrainConfig, atomic_write_text, build_test_set, build_train_set, train

__all__ = ["PRESETS", "PAPER", "StudyPreset", "run_studies", "main"]

# --------------------------------------------------------------------------- the paper's numbers (SPEC 8)

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
STUDIES = ("table5", "table6", "table4", "figures")


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class StudyPreset:
    """How big each run is. ``dataset`` names a :mod:`baselines.data.synthetic` preset (embedded data)."""

    dataset: str
    seeds: Tuple[int, ...]
    studies: Tuple[str, ...]
    train: Dict[str, Any] = field(default_factory=dict)


# CPU-sized: the small backbone (stride 32, 7 x 7 maps), Adam at 1e-3, decoded clips cached in memory
_EMBEDDED_TRAIN = dict(backbone="small", width=16, dim=128, batch_size=64, lr=1e-3, weight_decay=1e-4, epochs=10,
                       cache=True)

PRESETS: Dict[str, StudyPreset] = {
    "smoke": StudyPreset("smoke", (0,), ("table5",), dict(_EMBEDDED_TRAIN, epochs=4, batch_size=32)),
    "default": StudyPreset("default", (0, 1), ("table5", "figures"), dict(_EMBEDDED_TRAIN)),
    "full": StudyPreset("default", (0, 1, 2, 3, 4), STUDIES, dict(_EMBEDDED_TRAIN)),
}

# the paper's protocol (SPEC 8): 20 epochs, Adam with weight decay, batch 128, lr 1e-4, ResNet-18
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


def embedded_data(dataset_preset: str, progress: bool = True) -> StudyData:
    from .data.synthetic import PRESETS as DATA_PRESETS, ensure_dataset

    root = ensure_dataset(config=DATA_PRESETS[dataset_preset])
    r = str(root)
    return StudyData(r, f"{r}/train.txt", r, f"{r}/test.csv", f"{r}/vggss.json", "vggss",
                     f"{r}/heard_train.txt", f"{r}/heard_test.csv", f"{r}/unheard_test.csv",
                     source=f"embedded:{dataset_preset}:{Path(r).name}")


# --------------------------------------------------------------------------- running


def _run_name(model: str, margin: float, seed: int, tag: str = "") -> str:
    return f"{tag}{model}_m{margin:+.2f}_s{seed}"


class Runner:
    """Trains (or reuses) one run per (model, margin, seed, train list) and evaluates it on test splits."""

    def __init__(self, out: Path, data: StudyData, train_kwargs: Dict[str, Any], device: str, workers: int,
                 progress: bool) -> None:
        self.out, self.data, self.train_kwargs = out, data, train_kwargs
        self.device, self.workers, self.progress = device, workers, progress
        self._test_sets: Dict[str, Any] = {}
        self._train_sets: Dict[str, Any] = {}
        self._reference_rows: Dict[str, Dict[str, Dict[str, float]]] = {}

    def test_set(self, test_list: str):
        if test_list not in self._test_sets:
            self._test_sets[test_list] = build_test_set(self.data.test_root, test_list, self.data.annotations,
                                                        self.data.annotation_format,
                                                        cache=bool(self.train_kwargs.get("cache")))
        return self._test_sets[test_list]

    def reference_rows(self, test_list: str) -> Dict[str, Dict[str, float]]:
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
        from .evaluate import evaluate_model
        from .models import build_model
        from .train import load_checkpoint

        spec = (model, margin, seed, train_list, test_lists, tag)
        cached = self._cached(*spec)
        if cached is not None:
            return cached
        result_path, config, key = self._cache_entry(*spec)
        run_dir = result_path.parent
        name = run_dir.name
        t0 = time.time()
        if self.progress:
            print(f"  training {name} ...", flush=True)
        if train_list not in self._train_sets:
            self._train_sets[train_list] = build_train_set(config)
        # no cached result for this key: whatever run_dir holds (a stale or killed run) is replaced
        train(config, run_dir, progress=self.progress, train_set=self._train_sets[train_list], overwrite=True)
        state = load_checkpoint(run_dir / "checkpoint.pt")
        net = build_model(config.model_config())
        net.load_state_dict(state["model"])
        results = {t: evaluate_model(net, self.test_set(t), self.device,
                                     batch_size=64, workers=self.workers) for t in test_lists}
        results["_seconds"] = {"train_and_eval": round(time.time() - t0, 1)}
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


def _run_job(args: Tuple[Path, StudyData, Dict[str, Any], str, int, int, RunSpec]) -> Tuple[str, float]:
    out, data, train_kwargs, device, workers, threads, (model, margin, seed, train_list, tests, tag) = args
    torch.set_num_threads(threads)
    t0 = time.time()
    Runner(out, data, train_kwargs, device, workers, progress=False).run(model, margin, seed, train_list, tests, tag)
    return _run_name(model, margin, seed, tag), time.time() - t0


def execute_runs(runner: "Runner", runs: Sequence[RunSpec], jobs: int) -> None:
    """Train and evaluate ``runs`` (cached ones are skipped), ``jobs`` at a time in separate processes,
    each with ``cpu_count // jobs`` threads: small CPU models use two single-thread processes better
    than one two-thread process."""
    todo = [r for r in runs if not runner.is_cached(*r)]
    if not todo:
        return
    print(f"{len(todo)} training runs to do ({len(runs) - len(todo)} cached), {jobs} at a time", flush=True)
    if jobs <= 1:
        for r in todo:
            runner.run(*r)
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    args = [(runner.out, runner.data, runner.train_kwargs, runner.device, runner.workers, threads, r) for r in todo]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_job, a) for a in args]
        for i, f in enumerate(as_completed(futures), 1):
            name, seconds = f.result()
            print(f"  [{i}/{len(todo)}] {name} done in {seconds:.0f} s", flush=True)


# --------------------------------------------------------------------------- aggregation and tables


def _stats(values: List[float]) -> Tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _row(method: str, margin: Optional[float], evals: List[Dict[str, Any]], paper: Optional[Tuple[float, float]],
         seeds: Sequence[int], **extra: Any) -> Dict[str, Any]:
    row: Dict[str, Any] = {"method": method, "margin": margin}
    for key in ("ciou", "auc", "mean_ciou"):
        mean, std = _stats([e[key] for e in evals])
        row[key], row[f"{key}_std"] = round(mean, 2), round(std, 2)
    row["per_seed"] = [{"seed": s, "ciou": round(e["ciou"], 2), "auc": round(e["auc"], 2)} for s, e in zip(seeds, evals)]
    row["n_seeds"], row["n_test"] = len(evals), evals[0]["n"]
    row["paper_ciou"], row["paper_auc"] = (paper if paper else (None, None))
    row.update(extra)
    return row


def _reference_table_rows(ref: Dict[str, Dict[str, float]], **extra: Any) -> List[Dict[str, Any]]:
    return [dict({"method": name, "margin": None, "ciou": round(r["ciou"], 2), "auc": round(r["auc"], 2),
                  "mean_ciou": round(r["mean_ciou"], 2), "ciou_std": 0.0, "auc_std": 0.0, "n_seeds": 0,
                  "n_test": r["n"], "paper_ciou": None, "paper_auc": None}, **extra)
            for name, r in ref.items()]


def _mark_margin_effects(rows: List[Dict[str, Any]], group: str = "method_key") -> None:
    """For each margin != 0 row: the difference from the same method's margin-0 row, and whether it
    exceeds the spread (the larger of the two rows' seed std; with one seed the spread is unknown)."""
    base = {r[group]: r for r in rows if r.get("margin") == 0.0 and group in r}
    for r in rows:
        b = base.get(r.get(group))
        if b is None or r is b or r.get("margin") is None:
            continue
        for key in ("ciou", "auc"):
            delta = round(r[key] - b[key], 2)
            spread = max(r[f"{key}_std"], b[f"{key}_std"])
            r[f"delta_{key}"] = delta
            r[f"{key}_beyond_spread"] = (abs(delta) > spread) if min(r["n_seeds"], b["n_seeds"]) > 1 else None


def _fmt(mean: Optional[float], std: Optional[float], n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def markdown_table(title: str, rows: List[Dict[str, Any]], note: str, split_column: bool = False) -> str:
    head = ["split"] if split_column else []
    head += ["method", "margin", "cIoU", "AUC", "mean cIoU", "paper cIoU", "paper AUC", "Δ cIoU vs m=0", "beyond spread"]
    lines = [f"## {title}", "", note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = r.get("n_seeds", 0)
        m = "-" if r["margin"] is None else f"{r['margin']:+.1f}"
        beyond = r.get("ciou_beyond_spread")
        cells = [r["split"]] if split_column else []
        cells += [r["method"], m, _fmt(r["ciou"], r["ciou_std"], n), _fmt(r["auc"], r["auc_std"], n),
                  _fmt(r["mean_ciou"], r.get("mean_ciou_std", 0.0), n),
                  "-" if r["paper_ciou"] is None else f"{r['paper_ciou']:.2f}",
                  "-" if r["paper_auc"] is None else f"{r['paper_auc']:.2f}",
                  f"{r['delta_ciou']:+.2f}" if "delta_ciou" in r else "",
                  "" if "delta_ciou" not in r else ("yes" if beyond else "no" if beyond is not None else "n/a (1 seed)")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(out: Path, name: str, payload: Dict[str, Any], md: str) -> None:
    atomic_write_text(json.dumps(payload, indent=2), out / f"{name}.json")
    atomic_write_text(md, out / f"{name}.md")


def _note(payload: Dict[str, Any]) -> str:
    return (f"Data: {payload['data']['source']}; seeds {list(payload['seeds'])}; test clips {payload['n_test']}. "
            f"Ours = cIoU (AP50) / AUC / mean cIoU in percent (mean ± std over seeds); paper = VGGSound-144K -> VGG-SS.")


# --------------------------------------------------------------------------- studies


def study_table5(runner: Runner, seeds: Sequence[int], meta: Dict[str, Any]) -> Dict[str, Any]:
    test = runner.data.test_list
    rows = []
    for model, margin in TABLE5_ROWS:
        evals = [runner.run(model, margin, s, runner.data.train_list, [test])[test] for s in seeds]
        rows.append(_row(METHOD_NAMES[model], margin, evals, PAPER["table5"][(model, margin)], seeds, method_key=model))
    _mark_margin_effects(rows)
    ref = runner.reference_rows(test)
    rows += _reference_table_rows(ref)
    payload = dict(meta, study="table5", rows=rows, n_test=ref["ceiling"]["n"])
    _write(runner.out, "table5", payload, markdown_table("Table 5: marginNCE on three baselines", rows, _note(payload)))
    return payload


def study_table6(runner: Runner, seeds: Sequence[int], meta: Dict[str, Any]) -> Dict[str, Any]:
    test = runner.data.test_list
    rows = []
    for model, margin in TABLE6_ROWS:
        evals = [runner.run(model, margin, s, runner.data.train_list, [test])[test] for s in seeds]
        rows.append(_row("Ours", margin, evals, PAPER["table6"][(model, margin)], seeds, method_key=model))
    _mark_margin_effects(rows)
    ref = runner.reference_rows(test)
    rows += _reference_table_rows(ref)
    payload = dict(meta, study="table6", rows=rows, n_test=ref["ceiling"]["n"])
    _write(runner.out, "table6", payload, markdown_table("Table 6: margin sweep (reference model)", rows, _note(payload)))
    plot_margin_sweep(rows, runner.out / "table6.png")
    return payload


def study_table4(runner: Runner, seeds: Sequence[int], meta: Dict[str, Any]) -> Dict[str, Any]:
    d = runner.data
    if not (d.heard_train_list and d.heard_test_list and d.unheard_test_list):
        raise ValueError("table4: expected --heard-train-list, --heard-test-list and --unheard-test-list with real data")
    tests = {"heard": d.heard_test_list, "unheard": d.unheard_test_list}
    rows = []
    for split, test in tests.items():
        split_rows = []
        for model, margin in TABLE4_RUNS:
            evals = [runner.run(model, margin, s, d.heard_train_list, list(tests.values()), tag="heard_")[test]
                     for s in seeds]
            split_rows.append(_row(METHOD_NAMES[model], margin, evals, PAPER["table4"][(split, model, margin)], seeds,
                                   method_key=f"{split}:{model}", split=split))
        _mark_margin_effects(split_rows)
        rows += split_rows + _reference_table_rows(runner.reference_rows(test), split=split)
    payload = dict(meta, study="table4", rows=rows, n_test={k: runner.reference_rows(t)["ceiling"]["n"] for k, t in tests.items()})
    note = (f"Data: {d.source}; trained on the heard classes only; seeds {list(seeds)}. "
            "Heard: test clips of training classes; unheard: of classes never seen in training.")
    _write(runner.out, "table4", payload, markdown_table("Table 4: open-set (heard / unheard classes)", rows, note, split_column=True))
    return payload


def plot_margin_sweep(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r for r in rows if r["margin"] is not None), key=lambda r: r["margin"])
    ms = [r["margin"] for r in pts]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "ciou", "cIoU (AP50)"), (axes[1], "auc", "AUC")):
        ax.errorbar(ms, [r[key] for r in pts], yerr=[r[f"{key}_std"] for r in pts], marker="o", capsize=3,
                    label="ours (embedded / given data)")
        ax2 = ax.twinx()
        ax2.plot(ms, [r[f"paper_{key}"] for r in pts], "s--", color="tab:red", label="paper (VGG-SS)")
        ax2.set_ylabel(f"paper {label}", color="tab:red")
        ax.set_xlabel("margin m")
        ax.set_ylabel(label)
        ax.invert_xaxis()
        ax.set_title(f"{label} vs margin")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_figures(runner: Runner, seed: int, meta: Dict[str, Any], n: int = 6) -> Path:
    """Fig. 1-style: image with its ground-truth box, then each Table 5 method's response-map overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .data import load_annotations
    from .evaluation import normalize_map, upsample_map
    from .models import build_model
    from .train import load_checkpoint

    test_set = runner.test_set(runner.data.test_list)
    idx = list(range(0, len(test_set), max(1, len(test_set) // n)))[:n]
    items = [test_set[i] for i in idx]
    image = torch.stack([it["image"] for it in items])
    spec = torch.stack([it["spectrogram"] for it in items])
    boxes = load_annotations(runner.data.annotations, runner.data.annotation_format, [it["id"] for it in items])
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    shown = [(it["image"] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() for it in items]
    columns = [("image + GT", None)] + [(f"{METHOD_NAMES[m]} m={mg:+.1f}", (m, mg)) for m, mg in TABLE5_ROWS]
    maps: Dict[Tuple[str, float], np.ndarray] = {}
    for _, key in columns[1:]:
        model, margin = key
        ckpt = runner.out / "runs" / _run_name(model, margin, seed) / "checkpoint.pt"
        state = load_checkpoint(ckpt)
        net = build_model(TrainConfig.from_dict(state["config"]).model_config())
        net.load_state_dict(state["model"])
        net.eval()
        maps[key] = normalize_map(upsample_map(net.localize(image, spec).float())).numpy()
    fig, axes = plt.subplots(len(items), len(columns), figsize=(1.9 * len(columns), 1.9 * len(items)))
    for r, it in enumerate(items):
        for c, (title, key) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(shown[r])
            if key is not None:
                ax.imshow(maps[key][r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            for x0, y0, x1, y1 in boxes[it["id"]]:
                s = 224
                ax.add_patch(plt.Rectangle((x0 * s, y0 * s), (x1 - x0) * s, (y1 - y0) * s, fill=False, lw=1.2, ec="lime"))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"Response maps on {meta['data']['source']} test clips (seed {seed}); green: ground truth", fontsize=8)
    fig.tight_layout()
    path = runner.out / "figure1.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_studies(preset: str, out: Path, studies: Sequence[str], data: Optional[StudyData], seeds: Optional[Sequence[int]],
                device: str = "cpu", workers: int = 0, progress: bool = True, train_overrides: Optional[Dict[str, Any]] = None,
                jobs: int = 1) -> Dict[str, Any]:
    p = PRESETS[preset]
    if data is None:
        data = embedded_data(p.dataset, progress=progress)
        train_kwargs = dict(p.train)
    else:
        train_kwargs = dict(REAL_TRAIN)
    train_kwargs.update(train_overrides or {})
    seeds = tuple(seeds) if seeds else p.seeds
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, data, train_kwargs, device, workers, progress)
    meta = {"preset": preset, "seeds": list(seeds), "data": asdict(data), "train": train_kwargs,
            "torch": torch.__version__}
    results: Dict[str, Any] = {}
    t0 = time.time()
    runs = plan_runs(studies, data, seeds)
    execute_runs(runner, runs, jobs if device == "cpu" else 1)
    # the measured cost of the study: every run's training + evaluation time, as recorded when it ran
    meta["compute"] = {"runs": len(runs), "jobs": jobs,
                       "train_and_eval_seconds_total": round(sum(runner.run(*r)["_seconds"]["train_and_eval"]
                                                                 for r in runs), 1)}
    if "table5" in studies:
        results["table5"] = study_table5(runner, seeds, meta)
        print(markdown_table("Table 5", results["table5"]["rows"], _note(results["table5"])))
    if "table6" in studies:
        results["table6"] = study_table6(runner, seeds, meta)
        print(markdown_table("Table 6", results["table6"]["rows"], _note(results["table6"])))
    if "table4" in studies:
        results["table4"] = study_table4(runner, seeds, meta)
        print(Path(out / "table4.md").read_text())
    if "figures" in studies:
        if "table5" not in studies:
            study_table5(runner, seeds[:1], meta)
        print(f"figure: {study_figures(runner, seeds[0], meta)}")
    print(f"done in {time.time() - t0:.0f} s; results in {out}/")
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m baselines.table5", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="default")
    p.add_argument("--out", default="results", help="output folder (default: results/)")
    p.add_argument("--studies", nargs="+", choices=STUDIES, default=None,
                   help="which studies (default: the preset's)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the preset's seeds")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per run")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs at a time on CPU (default: the number of CPU cores, at most 2)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
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
    run_studies(args.preset, Path(args.out), studies, data, args.seeds, args.device, args.workers, args.progress,
                overrides, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
