"""The faulty-negative study (``python -m marginnce_kit.table5 --studies negatives``, part of ``--preset full``).

The paper's argument for a negative margin is noisy correspondence (Sec. 1, 2.2): faulty positives (a clip whose
sound is not its frame's) and faulty negatives (a negative of the same class as the anchor, which contrastive
learning pushes away although it matches). How common the second is depends on the number of classes K against the
batch: an anchor meets ``(B - 1) / K`` same-class negatives on average. The study trains the reference model and
EZ-VSL on the embedded data with K in ``StudyPreset.negatives_classes`` x faulty-positive rate in
``negatives_rates`` x m in {0, -0.2} (EZ-VSL also at its logit-matched margin, a secondary row), every other knob
that of ``negatives_dataset`` (``"vggsound-like"``: same-class clips separable by ear, off-screen and silent clips),
``negatives_seeds`` seeds per cell, and two controls (secondary): the ``"default"`` embedded data (K = 10, no
clip-level correspondence) and the largest K with twice the training clips (does the number of clips per class,
which falls as K rises at a fixed total, move the result by itself?).

The plan (cells, seeds, the primary contrast and its test) is written by :func:`plan_document` to
``<out>/negatives-plan.json`` and committed before the runs; the results quote the commit that holds it.

Primary contrast (pre-registered): for the reference model at the last epoch, ``C = Δ(K_max) - Δ(K_min)``, each
``Δ(K)`` the effect of m = -0.2 on cIoU averaged over the faulty-positive rates (per seed and clip), both estimated
over seeds and clips (:func:`~.stats.crossed_interval`), ``C``'s variance the sum, Welch-Satterthwaite degrees of
freedom, a two-sided t-test at 0.05 and its 95% interval. Everything else is secondary, and its ``resolved_holm``
is Holm-adjusted over the study's secondary comparisons.

Writes ``negatives.json`` (``rows`` with ``method``, ``num_classes``, ``same_class_negatives_per_anchor``,
``faulty_positive_rate``, ``margin``, ``seeds``, the metrics, the Δ fields with their intervals, ``best_val`` and
``mechanism``; ``contrasts``), ``negatives.md`` and ``negatives.png`` (the effect against K, and the mechanism).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.annotations import load_id_list
from ..data.synthetic import PRESETS as DATA_PRESETS
from ..io import atomic_write_text, read_json
from ..training.diagnostics import ClipLabels
from .figures import plot_negatives
from .paper import LOGIT_MATCHED_MARGIN, METHOD_NAMES
from .presets import NEGATIVES_METHODS, StudyPreset, embedded_data
from .runner import Runner, selected_eval
from .stats import LEVEL, difference_of_effects, holm, stack_per_clip
from .tables import add_margin_effects, add_selection, apply_holm, markdown_tables, same_clips, table_row, write_study

__all__ = ["Cell", "NegativesPlan", "plan", "plan_document", "write_plan", "study_negatives", "PRIMARY"]

#: The pre-registered primary contrast (:func:`plan_document`).
PRIMARY = {
    "method": "reference", "margin": -0.2, "checkpoint": "last", "metric": "ciou",
    "estimand": "Δ cIoU (m = -0.2 minus m = 0) at the largest K minus at the smallest K, each averaged over the "
                "faulty-positive rates (per seed and test clip)",
    "test": "two-sided t-test at 0.05: each Δ(K) with its seeds-and-clips (crossed) variance, the two variances "
            "added, Welch-Satterthwaite degrees of freedom; its 95% t-interval",
    "hypothesis": "if the proxy's unbeatable same-class negatives produce the margin's negative effect, the effect "
                  "rises (towards the paper's positive sign) as K grows",
}


@dataclass
class Cell:
    """One (data, method, margin) of the study: its runner (that data's train and test splits), run tag and label."""

    method: str
    num_classes: int
    rate: float
    margin: float
    variant: str  # "factorial", "default proxy", "2x clips"
    runner: Runner
    tag: str

    @property
    def key(self) -> str:
        """The group of rows a margin's Δ is taken within (same data, same method)."""
        return f"{self.method}:{self.num_classes}:{self.rate}:{self.variant}"

    @property
    def secondary(self) -> bool:
        return self.variant != "factorial" or self.margin not in (0.0, -0.2)


@dataclass
class NegativesPlan:
    """Every cell of the study and its runs."""

    seeds: tuple[int, ...]
    cells: list[Cell] = field(default_factory=list)
    jobs: list[tuple[Runner, tuple[Any, ...]]] = field(default_factory=list)


def _cell_data(preset: StudyPreset, k: int, rate: float, variant: str) -> dict[str, Any]:
    """The (data preset, overrides) of a cell's training data."""
    base = DATA_PRESETS[preset.negatives_dataset].replace(**preset.dataset_overrides)
    if variant == "default proxy":  # the "default" knobs at the study's sizes
        sizes = {"num_train": base.num_train, "num_test": base.num_test, "num_val": base.num_val}
        return {"preset": "default", "overrides": dict(preset.dataset_overrides, **sizes)}
    overrides = dict(preset.dataset_overrides, num_classes=k, faulty_positive_rate=rate)
    if variant == "2x clips":
        overrides["num_train"] = 2 * base.num_train
    return {"preset": preset.negatives_dataset, "overrides": overrides}


def _is_primary_cell(preset: StudyPreset, method: str, k: int, margin: float, variant: str) -> bool:
    """Whether the primary contrast (:data:`PRIMARY`) reads the cell."""
    ks = preset.negatives_classes
    return (method == PRIMARY["method"] and variant == "factorial" and k in (min(ks), max(ks))
            and margin in (0.0, PRIMARY["margin"]))


def _cells(preset: StudyPreset, scope: str = "all") -> list[tuple[str, int, float, float, str]]:
    """``(method, K, rate, margin, variant)`` of every cell in table order (``scope``:
    :attr:`~.presets.StudyPreset.negatives_scope`)."""
    if scope in ("primary", "primary+controls"):
        controls = scope == "primary+controls"
        return [c for c in _cells(preset) if _is_primary_cell(preset, c[0], c[1], c[3], c[4])
                or (controls and c[0] == "reference" and c[4] != "factorial")]
    ks, rates = preset.negatives_classes, preset.negatives_rates
    out = [(m, k, r, mg, "factorial") for m in NEGATIVES_METHODS for k in ks for r in rates
           for mg in preset.negatives_margins(m)]
    default = DATA_PRESETS["default"]
    out += [(m, default.num_classes, default.faulty_positive_rate, mg, "default proxy") for m in NEGATIVES_METHODS
            for mg in (0.0, -0.2)]
    out += [("reference", max(ks), max(rates), mg, "2x clips") for mg in (0.0, -0.2)]
    return out


def plan_document(preset: StudyPreset, batch_size: int) -> dict[str, Any]:
    """The study's plan as committed before its runs: cells, seeds, the primary contrast and its test."""
    cells = [{"method": m, "num_classes": k, "faulty_positive_rate": r, "margin": mg, "variant": v,
              "secondary": v != "factorial" or mg not in (0.0, -0.2), "data": _cell_data(preset, k, r, v)}
             for m, k, r, mg, v in _cells(preset)]
    return {"study": "negatives", "seeds": list(preset.negatives_seeds), "batch_size": batch_size,
            "classes": list(preset.negatives_classes), "faulty_positive_rates": list(preset.negatives_rates),
            "logit_matched_margin": LOGIT_MATCHED_MARGIN, "cells": cells,
            "primary": dict(PRIMARY, classes=[min(preset.negatives_classes), max(preset.negatives_classes)]),
            "secondary": "every other row and contrast; resolved_holm: Holm over the secondary comparisons",
            "level": LEVEL}


def write_plan(out: Path, preset: StudyPreset, batch_size: int) -> Path:
    """``<out>/negatives-plan.json`` (:func:`plan_document`), written when absent (a committed plan is never
    rewritten: the results say whether it matches the study that ran)."""
    path = Path(out) / "negatives-plan.json"
    if not path.exists():
        atomic_write_text(json.dumps(plan_document(preset, batch_size), indent=2) + "\n", path)
    return path


def plan(runner: Runner, preset: StudyPreset) -> NegativesPlan:
    """Build the data sets (generated on first use) and list the runs; a cell whose data is the study's own
    reuses the main runner, so its runs are shared with Tables 5 and 6."""
    own = DATA_PRESETS[preset.dataset].replace(**preset.dataset_overrides)
    p = NegativesPlan(tuple(preset.negatives_seeds))
    runners: dict[str, tuple[Runner, str]] = {}
    for method, k, rate, margin, variant in _cells(preset, preset.negatives_scope):
        spec = _cell_data(preset, k, rate, variant)
        name = json.dumps(spec, sort_keys=True)
        if name not in runners:
            if DATA_PRESETS[spec["preset"]].replace(**spec["overrides"]) == own:
                runners[name] = (runner, "")
            else:
                d = embedded_data(spec["preset"], **spec["overrides"])
                tag = {"factorial": "", "default proxy": "dflt_", "2x clips": "x2_"}[variant]
                runners[name] = (Runner(runner.out, d, runner.train_kwargs, runner.device, runner.workers,
                                        runner.progress, runner.tensorboard), f"neg_{tag}K{k}_fp{rate:.1f}_")
        rn, tag = runners[name]
        p.cells.append(Cell(method, k, rate, margin, variant, rn, tag))
        p.jobs += [(rn, (method, margin, s, rn.data.train_list, (rn.data.test_list,), tag)) for s in p.seeds]
    return p


def _plan_commit(path: Path) -> str | None:
    """The last git commit that holds ``path`` (``None``: not committed, or not a git checkout)."""
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%H", "--", path.name], cwd=path.parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _mechanism(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """The last epoch's mechanism measures, averaged over a row's seeds."""
    last = [r["_epochs"][-1].get("mechanism") for r in results if r.get("_epochs")]
    last = [m for m in last if m]
    out: dict[str, float | None] = {}
    for key in ("faulty_weight_ratio", "faulty_weight_share", "mean_anchor_weight", "median_s_pos",
                "median_s_same_class", "median_s_other_class", "same_class_negatives_per_anchor"):
        values = [m[key] for m in last if m.get(key) is not None]
        out[key] = round(float(np.mean(values)), 4) if values else None
    return out


def _per_clip_delta(results: list[dict[str, Any]], base: list[dict[str, Any]], test: str, ids: Sequence[str],
                    selection: str) -> np.ndarray:
    t = stack_per_clip([selected_eval(r, test, selection) for r in results], ids)["ciou"]
    b = stack_per_clip([selected_eval(r, test, selection) for r in base], ids)["ciou"]
    return t - b


def study_negatives(runner: Runner, p: NegativesPlan, preset: StudyPreset, meta: dict[str, Any]) -> dict[str, Any]:
    """Score every cell, the primary and the secondary contrasts; write the files (module docstring)."""
    batch = int(runner.train_kwargs.get("batch_size", 64))
    document = plan_document(preset, batch)
    plan_path = write_plan(runner.out, preset, batch)
    committed = read_json(plan_path, "study plan")
    results = [[c.runner.run(c.method, c.margin, s, c.runner.data.train_list, [c.runner.data.test_list], c.tag)
                for s in p.seeds] for c in p.cells]
    selections = ("last", "best_val") if runner.has_val else ("last",)
    rows: list[dict[str, Any]] = []
    ids_of: dict[tuple[int, str], list[str]] = {}
    excluded: dict[str, Any] = {}
    groups: dict[tuple[int, str], list[int]] = {}
    for i, c in enumerate(p.cells):  # one clip set per test split (K and variant): every rate and method on it
        groups.setdefault((c.num_classes, c.variant), []).append(i)
    for (k, variant), members in groups.items():
        test = p.cells[members[0]].runner.data.test_list
        evals = [selected_eval(r, p.cells[i].runner.data.test_list, sel) for i in members for r in results[i]
                 for sel in selections]
        ids, excl = same_clips(p.cells[members[0]].runner, test, evals)
        ids_of[(k, variant)] = ids
        excluded[f"K{k}:{variant}"] = excl
        for i in members:
            c = p.cells[i]
            labels = ClipLabels.from_embedded(c.runner.data.train_root)
            scn = labels.same_class_negatives_per_anchor(load_id_list(c.runner.data.train_list), batch) \
                if labels is not None else None
            label = METHOD_NAMES[c.method] + (", logit-matched" if c.margin == LOGIT_MATCHED_MARGIN else "")
            rows.append(table_row(label, c.margin, [r[c.runner.data.test_list] for r in results[i]], None, p.seeds,
                                  ids, method_key=c.key, model=c.method, num_classes=c.num_classes,
                                  faulty_positive_rate=c.rate, variant=c.variant, secondary=c.secondary,
                                  same_class_negatives_per_anchor=None if scn is None else round(scn, 3),
                                  mechanism=_mechanism(results[i]), checkpoint="last", _cell=i))
    order = [r.pop("_cell") for r in rows]
    ordered_results = [results[i] for i in order]
    cells = [p.cells[i] for i in order]
    for (k, variant), ids in ids_of.items():
        idx = [j for j, c in enumerate(cells) if (c.num_classes, c.variant) == (k, variant)]
        sub = [rows[j] for j in idx]
        add_margin_effects(sub, [[r[cells[j].runner.data.test_list] for r in ordered_results[j]] for j in idx], ids)
        if runner.has_val:
            add_selection(sub, [ordered_results[j] for j in idx], [cells[j].runner.data.test_list for j in idx], ids)
    contrasts = _contrasts(preset, cells, ordered_results, ids_of, selections)
    apply_holm(rows)  # every row's Δ is secondary: only the pre-registered contrast is primary
    _holm_contrasts(contrasts)
    payload = dict(meta, study="negatives", seeds=list(p.seeds), rows=rows, contrasts=contrasts, excluded=excluded,
                   n_test={f"K{k}:{v}": len(ids) for (k, v), ids in ids_of.items()}, batch_size=batch,
                   plan={"path": str(plan_path), "commit": _plan_commit(plan_path), "matches": committed == document,
                         "scope": preset.negatives_scope, "cells_run": len(p.cells),
                         "cells_planned": len(document["cells"])})
    note = (f"Data: {preset.negatives_dataset}'s knobs with K classes and the faulty-positive rate set per cell "
            f"(controls: the default embedded data; twice the training clips); batch {batch}; seeds "
            f"{list(p.seeds)}; each Δ against the same data and method at m = 0, on that data's test clips "
            f"(n = {payload['n_test']}). Every row is secondary (Holm over them); the primary contrast is below. "
            f"Plan: {plan_path.name} at commit {payload['plan']['commit']} (matches: {payload['plan']['matches']}); "
            f"scope {preset.negatives_scope!r}: {len(p.cells)} of the plan's {len(document['cells'])} cells run"
            + ("" if preset.negatives_scope == "all" else " (the other cells were not run)") + ".")
    md = markdown_tables("Faulty negatives: the margin's effect against the number of classes", rows, note,
                         extra_column=[("K", "num_classes"),
                                       ("same-class neg./anchor", "same_class_negatives_per_anchor"),
                                       ("faulty-positive rate", "faulty_positive_rate"), ("data", "variant")])
    write_study(runner.out, "negatives", payload, md + "\n" + _contrast_markdown(contrasts))
    plot_negatives(rows, [[r.get("_epochs", []) for r in res] for res in ordered_results], runner.out / "negatives.png")
    return payload


def _contrasts(preset: StudyPreset, cells: list[Cell], results: list[list[dict[str, Any]]],
               ids_of: dict[tuple[int, str], list[str]], selections: Sequence[str]) -> list[dict[str, Any]]:
    """The primary contrast and the secondary ones (module docstring), for each checkpoint selection."""
    def ran(method: str, k: int, rates: Sequence[float], margin: float, variant: str) -> bool:
        have = {(c.method, c.num_classes, c.rate, c.variant, c.margin) for c in cells}
        return all((method, k, r, variant, mg) in have for r in rates for mg in (0.0, margin))

    def delta(method: str, k: int, rates: Sequence[float], margin: float, variant: str,
              sel: str) -> np.ndarray | None:
        if not ran(method, k, rates, margin, variant):
            return None
        parts = []
        for rate in rates:
            base = [j for j, c in enumerate(cells) if (c.method, c.num_classes, c.rate, c.variant, c.margin)
                    == (method, k, rate, variant, 0.0)]
            treat = [j for j, c in enumerate(cells) if (c.method, c.num_classes, c.rate, c.variant, c.margin)
                     == (method, k, rate, variant, margin)]
            j0, j1 = base[0], treat[0]
            parts.append(_per_clip_delta(results[j1], results[j0], cells[j0].runner.data.test_list,
                                         ids_of[(k, variant)], sel))
        return np.mean(parts, axis=0)

    ks, rates = preset.negatives_classes, preset.negatives_rates
    lo, hi = min(ks), max(ks)
    out: list[dict[str, Any]] = []

    def add(name: str, x: np.ndarray | None, y: np.ndarray | None, sel: str, primary: bool = False) -> None:
        if x is None or y is None:  # a cell of the contrast was not run (negatives_scope)
            return
        est = difference_of_effects(x, y)
        a, b = est.interval()
        out.append({"name": name, "checkpoint": sel, "primary": primary, "estimate": round(est.mean, 2),
                    "ci95": [round(a, 2), round(b, 2)], "df": round(est.df, 1),
                    "p_value": float(f"{est.p_value():.3g}"), "resolved": bool(a > 0 or b < 0)})

    for sel in selections:
        for method in NEGATIVES_METHODS:
            margins = [mg for mg in preset.negatives_margins(method) if mg != 0.0]
            for mg in margins:
                tag = f"{METHOD_NAMES[method]}, m = {mg:+.3g}"
                is_primary = method == PRIMARY["method"] and mg == PRIMARY["margin"] and sel == PRIMARY["checkpoint"]
                add(f"{tag}: Δ(K={hi}) - Δ(K={lo}), mean over rates", delta(method, hi, rates, mg, "factorial", sel),
                    delta(method, lo, rates, mg, "factorial", sel), sel, is_primary)
                for k in ks:
                    if k not in (lo, hi):
                        add(f"{tag}: Δ(K={k}) - Δ(K={lo}), mean over rates", delta(method, k, rates, mg, "factorial",
                                                                                     sel),
                            delta(method, lo, rates, mg, "factorial", sel), sel)
                if len(rates) > 1:
                    add(f"{tag}: Δ(rate={max(rates)}) - Δ(rate={min(rates)}), mean over K",
                        _joined([delta(method, k, [max(rates)], mg, "factorial", sel) for k in ks]),
                        _joined([delta(method, k, [min(rates)], mg, "factorial", sel) for k in ks]), sel)
        x2 = delta("reference", hi, [max(rates)], -0.2, "2x clips", sel)
        add(f"Ours, m = -0.2: Δ with twice the clips per class - Δ (K={hi}, rate {max(rates)})", x2,
            delta("reference", hi, [max(rates)], -0.2, "factorial", sel), sel)
    return out


def _joined(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The per-(seed, clip) deltas of several test splits side by side (``None`` if one was not run)."""
    return None if any(x is None for x in parts) else np.concatenate(parts, axis=1)  # type: ignore[arg-type]


def _holm_contrasts(contrasts: list[dict[str, Any]]) -> None:
    """Holm over the secondary contrasts (the primary is a single pre-registered test)."""
    secondary = [c for c in contrasts if not c["primary"]]
    for c, adjusted in zip(secondary, holm([c["p_value"] for c in secondary]) if secondary else []):
        c["p_holm"] = float(f"{adjusted:.3g}")
        c["resolved_holm"] = bool(adjusted < 1.0 - LEVEL)
    for c in contrasts:
        if c["primary"]:
            c["p_holm"], c["resolved_holm"] = c["p_value"], c["resolved"]


def _contrast_markdown(contrasts: list[dict[str, Any]]) -> str:
    lines = ["## Contrasts: how the margin's effect changes with K (cIoU points)", "",
             f"Primary (pre-registered, {PRIMARY['test']}): marked **primary**. The others are secondary; Holm: "
             "resolved after Holm's adjustment over the secondary contrasts.", "",
             "| contrast | checkpoint | estimate [95% CI] | df | p | resolved | Holm |",
             "|---|---|---|---|---|---|---|"]
    for c in contrasts:
        name = f"**primary**: {c['name']}" if c["primary"] else c["name"]
        lo, hi = c["ci95"]
        lines.append(f"| {name} | {c['checkpoint']} | {c['estimate']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {c['df']} | "
                     f"{c['p_value']:.2g} | {'yes' if c['resolved'] else 'no'} | "
                     f"{'yes' if c['resolved_holm'] else 'no'} |")
    return "\n".join(lines) + "\n"

