"""The studies themselves: Table 5 and Table 6 (one function, :func:`study_table`), Table 4 (heard /
unheard classes), the study-level training curves, and :func:`run_studies`, which plans every run the
requested studies need, trains them (in parallel on CPU), then writes each study's table and figures."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..data.annotations import load_id_list
from ..training.diagnostics import ClipLabels
from . import negatives as NG
from . import noise as N
from .figures import plot_margin_sweep, plot_study_curves, study_figures
from .paper import METHOD_NAMES, PAPER, SECONDARY_ROWS, TABLE4_RUNS, TABLE5_ROWS, TABLE6_ROWS
from .presets import PRESETS, REAL_TRAIN, SeedPlan, StudyData, StudyPreset, all_seeds, embedded_data, seeds_of
from .runner import Runner, execute_jobs, figure_seed, plan_runs, run_name
from .tables import (
    add_margin_effects,
    add_selection,
    apply_holm,
    bound_table_rows,
    markdown_table,
    markdown_tables,
    model_table,
    same_clips,
    seeds_text,
    study_note,
    table_row,
    write_study,
)

__all__ = ["TABLES", "study_table", "study_table5", "study_table6", "study_table4", "study_curves", "run_studies"]

#: Table 5 and Table 6 as one study each: (title, the (model, margin) rows, the method's label or None for
#: its display name, and whether the margin-sweep figure is drawn)
TABLES: dict[str, tuple[str, list[tuple[str, float]], str | None, bool]] = {
    "table5": ("Table 5: marginNCE on three baselines", TABLE5_ROWS, None, False),
    "table6": ("Table 6: margin sweep (reference model)", TABLE6_ROWS, "Ours", True),
}


def _seed_fields(seeds: SeedPlan, models: Sequence[str]) -> dict[str, Any]:
    """``seeds`` (every seed, sorted) and ``seeds_by_method`` of a study's payload."""
    return {"seeds": list(all_seeds({m: seeds_of(seeds, m) for m in models})),
            "seeds_by_method": {m: list(seeds_of(seeds, m)) for m in models}}


def study_table(name: str, runner: Runner, seeds: SeedPlan, meta: dict[str, Any]) -> dict[str, Any]:
    """Table 5 or Table 6 (``name``): its rows on one identical clip set, each margin's Δ against its
    method's m = 0 row, the center-prior and ceiling rows; writes ``<name>.json`` / ``.md`` (and for
    Table 6 ``table6.png``). ``seeds``: one sequence for every method, or each method's own.

    Raises:
        KeyError: ``name`` is not one of :data:`TABLES`.
    """
    title, table_rows, label, sweep = TABLES[name]
    specs = [(m, SECONDARY_ROWS.get((m, mg)) or label or METHOD_NAMES[m], mg, PAPER[name].get((m, mg)),
              {"secondary": (m, mg) in SECONDARY_ROWS}) for m, mg in table_rows]
    rows, ids, excluded = model_table(runner, specs, seeds, runner.data.train_list, runner.data.test_list)
    payload = dict(meta, study=name, **_seed_fields(seeds, list(dict.fromkeys(m for m, _ in table_rows))), rows=rows,
                   n_test=len(ids), excluded=excluded)
    write_study(runner.out, name, payload, markdown_tables(title, rows, study_note(payload)))
    if sweep:
        plot_margin_sweep(rows, runner.out / f"{name}.png")
    return payload


def study_table5(runner: Runner, seeds: SeedPlan, meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`study_table` for Table 5."""
    return study_table("table5", runner, seeds, meta)


def study_table6(runner: Runner, seeds: SeedPlan, meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`study_table` for Table 6."""
    return study_table("table6", runner, seeds, meta)


def study_table4(runner: Runner, seeds: SeedPlan, meta: dict[str, Any]) -> dict[str, Any]:
    """Table 4 (open set): trained on the heard classes, scored on heard and unheard test clips.

    Raises:
        ValueError: the data has no heard / unheard lists.
    """
    d = runner.data
    if not (d.heard_train_list and d.heard_test_list and d.unheard_test_list):
        raise ValueError("table4: expected --heard-train-list, --heard-test-list and --unheard-test-list with real "
                         "data")
    tests = {"heard": d.heard_test_list, "unheard": d.unheard_test_list}
    for model, margin in TABLE4_RUNS:  # one training run, evaluated on both splits
        for s in seeds_of(seeds, model):
            runner.run(model, margin, s, d.heard_train_list, list(tests.values()), tag="heard_")
    rows: list[dict[str, Any]] = []
    bounds: list[dict[str, Any]] = []
    n_test, excluded = {}, {}
    for split, test in tests.items():
        results = [[runner.run(m, mg, s, d.heard_train_list, list(tests.values()), tag="heard_")
                    for s in seeds_of(seeds, m)] for m, mg in TABLE4_RUNS]
        evals = [[r[test] for r in row] for row in results]
        ids, excluded[split] = same_clips(runner, test, [e for row in evals for e in row])
        split_rows = [table_row(METHOD_NAMES[m], mg, ev, PAPER["table4"][(split, m, mg)], seeds_of(seeds, m), ids,
                                method_key=f"{split}:{m}", split=split, checkpoint="last")
                      for (m, mg), ev in zip(TABLE4_RUNS, evals)]
        add_margin_effects(split_rows, evals, ids)
        if runner.has_val:
            add_selection(split_rows, results, test, ids)
        rows += split_rows
        bounds += bound_table_rows(runner.bound_rows(test), ids, split=split)
        n_test[split] = len(ids)
    apply_holm(rows)
    rows += bounds
    fields = _seed_fields(seeds, list(dict.fromkeys(m for m, _ in TABLE4_RUNS)))
    payload = dict(meta, study="table4", **fields, rows=rows, n_test=n_test, excluded=excluded)
    note = (f"Data: {d.source}; trained on the heard classes only; {seeds_text(fields['seeds_by_method'])}; "
            f"test clips n = {n_test}. "
            "Heard: test clips of training classes; unheard: of classes never seen in training.")
    write_study(runner.out, "table4", payload,
                markdown_tables("Table 4: open-set (heard / unheard classes)", rows, note, split_column=True))
    return payload


def study_curves(runner: Runner, seeds: SeedPlan) -> Path:
    """``<out>/curves.png``: the training loss per epoch of every Table 5 run (a line per run, coloured
    by method), read from the runs' ``metrics.jsonl``."""
    runs = [(m, mg, s, runner.out / "runs" / run_name(m, mg, s)) for m, mg in TABLE5_ROWS for s in seeds_of(seeds, m)]
    path = runner.out / "curves.png"
    plan = {m: seeds_of(seeds, m) for m, _ in TABLE5_ROWS}
    plot_study_curves(runs, path, title=f"Table 5 runs: training loss per epoch ({seeds_text(plan)})")
    return path


def run_studies(preset: str | StudyPreset, out: Path, studies: Sequence[str], data: StudyData | None,
                seeds: Sequence[int] | None, device: str = "cpu", workers: int = 0, progress: bool = True,
                train_overrides: dict[str, Any] | None = None,
                jobs: int = 1, noise_grid: dict[str, tuple[float, ...]] | None = None,
                dataset: str | None = None, plan_only: bool = False, tensorboard: bool = False,
                label: str | None = None) -> dict[str, Any]:
    """Run ``studies`` of ``preset`` (``data=None``: the embedded data) into ``out``; ``train_overrides``
    (``TrainConfig`` fields) apply to every run (recorded in the output's ``train`` and ``overrides``);
    ``noise_grid`` (``noise_rates`` / ``noise_margins``) overrides the preset's noise-study grid; ``dataset`` the
    preset's embedded data set (a :mod:`marginnce_kit.data.synthetic` preset name); ``plan_only``: write the
    studies' plans (``negatives-plan.json``) and return before any run; ``tensorboard``: every run also writes its
    TensorBoard logs (``<out>/runs/<name>/tensorboard``; ``tensorboard --logdir <out>/runs``); ``label``: the
    preset's name in the output (default: ``preset`` when it is a name, else ``"file"``).

    Raises:
        ValueError: the noise study with real data.
    """
    changes: dict[str, Any] = dict(noise_grid or {})
    if dataset:
        changes["dataset"] = dataset
    if seeds:
        changes["negatives_seeds"] = tuple(seeds)
    p = dataclasses.replace(PRESETS[preset] if isinstance(preset, str) else preset, **changes)
    embedded = data is None
    if data is None:
        data = embedded_data(p.dataset, **p.dataset_overrides)
        train_kwargs = dict(p.train)
    else:
        train_kwargs = dict(REAL_TRAIN)
    train_kwargs.update(train_overrides or {})
    noise_seeds = tuple(seeds) if seeds else (p.noise_seeds or p.seeds)
    # each method's seeds in Table 5 (--seeds: the same for all); Tables 6 and 4 use `seeds`
    plan = {m: tuple(seeds) for m in METHOD_NAMES} if seeds else p.seed_plan(tuple(METHOD_NAMES))
    seeds = tuple(seeds) if seeds else p.seeds
    for name in ("noise", "negatives"):
        if name in studies and not embedded:
            raise ValueError(f"{name}: the study runs on the embedded data only (it sets the faulty-positive rate and "
                             f"the classes of the training split)")
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, data, train_kwargs, device, workers, progress, tensorboard)
    batch = int(train_kwargs.get("batch_size", 64))
    labels = ClipLabels.from_embedded(data.train_root)
    try:
        scn = labels.same_class_negatives_per_anchor(load_id_list(data.train_list), batch) if labels else None
    except ValueError:  # fewer than two labelled clips in the list: the runs will say what is wrong
        scn = None
    meta = {"preset": label or (preset if isinstance(preset, str) else "file"), "seeds": list(seeds),
            "data": dict(asdict(data), batch_size=batch,
                         same_class_negatives_per_anchor=None if scn is None else round(scn, 3)),
            "train": train_kwargs, "overrides": dict(train_overrides or {}), "torch": torch.__version__}
    results: dict[str, Any] = {}
    t0 = time.time()
    if "figures" in studies:
        figure_seed(plan)  # a seed every Table 5 method runs: checked before any training
    if "negatives" in studies:
        path = NG.write_plan(out, p, batch)  # before any run: the plan to commit
        if plan_only:
            print(f"plan: {path}")
    if plan_only:
        return results
    jobs_list = [(runner, r) for r in plan_runs(studies, data, seeds, plan)]
    noise_plan = N.plan(runner, p, noise_seeds) if "noise" in studies else None
    if noise_plan is not None:
        jobs_list += noise_plan.jobs
    negatives_plan = NG.plan(runner, p) if "negatives" in studies else None
    if negatives_plan is not None:
        jobs_list += negatives_plan.jobs
    jobs_list = list({(id(rn), spec): (rn, spec) for rn, spec in jobs_list}.values())
    execute_jobs(jobs_list, jobs if device == "cpu" else 1)
    # the measured cost of the study: every run's training + evaluation time, as recorded when it ran
    meta["compute"] = {"runs": len(jobs_list), "jobs": jobs,
                       "train_and_eval_seconds_total": round(sum(rn.run(*r)["_seconds"]["train_and_eval"]
                                                                 for rn, r in jobs_list), 1),
                       "cpu_seconds_total": round(sum(rn.run(*r)["_seconds"].get("cpu", 0.0)
                                                      for rn, r in jobs_list), 1),
                       "runs_without_cpu_time": sum("cpu" not in rn.run(*r)["_seconds"] for rn, r in jobs_list)}
    for name in ("table5", "table6"):
        if name in studies:
            results[name] = study_table(name, runner, plan if name == "table5" else seeds, meta)
            print(markdown_table(name.replace("table", "Table "), results[name]["rows"], study_note(results[name])))
    if "table5" in studies:
        print(f"figure: {study_curves(runner, plan)}")
    if "table4" in studies:
        results["table4"] = study_table4(runner, seeds, meta)
        print(Path(out / "table4.md").read_text())
    if noise_plan is not None:
        results["noise"] = N.study_noise(runner, noise_plan, noise_seeds, meta)
        print(Path(out / "noise.md").read_text())
    if negatives_plan is not None:
        results["negatives"] = NG.study_negatives(runner, negatives_plan, p, meta)
        print(Path(out / "negatives.md").read_text())
    if "figures" in studies:
        if "table5" not in studies:
            study_table5(runner, (figure_seed(plan),), meta)
        print(f"figure: {study_figures(runner, figure_seed(plan), meta)}")
    print(f"done in {time.time() - t0:.0f} s; results in {out}/")
    return results
