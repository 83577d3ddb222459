"""A study table from its runs' per-clip scores: every row on one identical set of clips
(:func:`same_clips`), the mean and SD over seeds (:func:`table_row`), the center-prior and ceiling rows
(:func:`bound_table_rows`), each margin's Δ against its method's m = 0 row with its interval and p-value
(:func:`add_margin_effects`), the same for the ``best_val`` checkpoint of every run (:func:`add_selection`),
Holm's adjustment over a table's comparisons (:func:`apply_holm`), the Markdown (:func:`markdown_table`) and the
files (:func:`write_study`)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from ..evaluation import summarize_cious
from ..io import atomic_write_text
from .paper import METHOD_NAMES
from .presets import SeedPlan, all_seeds, seeds_of
from .runner import Runner, selected_eval
from .stats import FEW_SEEDS, LEVEL, common_clips, holm, paired_effects, stack_per_clip

__all__ = ["DELTA_NOTE", "seeds_text", "table_row", "bound_table_rows", "add_margin_effects", "add_selection",
           "apply_holm", "markdown_table", "markdown_tables", "write_study", "study_note", "same_clips", "model_table",
           "ROW_METRICS"]

#: The fields of a row that :func:`add_selection` repeats under ``row["best_val"]``.
ROW_METRICS = ("ciou", "ciou_std", "auc", "auc_std", "mean_ciou", "mean_ciou_std", "per_seed", "delta_ciou",
               "delta_ciou_ci95", "delta_auc", "delta_auc_ci95", "delta_mean_ciou", "delta_mean_ciou_ci95", "p_value",
               "resolved", "interval", "n_seeds_paired", "few_seeds")


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summary_on(evaluation: dict[str, Any], ids: Sequence[str]) -> dict[str, float]:
    """The protocol's summary of one evaluation restricted to the clips ``ids``."""
    by_id = dict(zip(evaluation["per_clip"]["id"], evaluation["per_clip"]["ciou"]))
    return summarize_cious([by_id[i] for i in ids])


def table_row(method: str, margin: float | None, evals: list[dict[str, Any]], paper: tuple[float, float] | None,
         seeds: Sequence[int], ids: Sequence[str], **extra: Any) -> dict[str, Any]:
    per = [summary_on(e, ids) for e in evals]
    row: dict[str, Any] = {"method": method, "margin": margin}
    for key in ("ciou", "auc", "mean_ciou"):
        mean, std = _stats([p[key] for p in per])
        row[key], row[f"{key}_std"] = round(mean, 2), round(std, 2)
    row["per_seed"] = [{"seed": s, "ciou": round(p["ciou"], 2), "auc": round(p["auc"], 2),
                        "mean_ciou": round(p["mean_ciou"], 2)} for s, p in zip(seeds, per)]
    row["n_seeds"], row["n"], row["n_test"] = len(evals), len(ids), len(ids)
    row["paper_ciou"], row["paper_auc"] = (paper if paper else (None, None))
    row.update(extra)
    return row


def bound_table_rows(ref: dict[str, dict[str, Any]], ids: Sequence[str], **extra: Any) -> list[dict[str, Any]]:
    rows = []
    for name, r in ref.items():
        s = summary_on(r, ids)
        rows.append(dict({"method": name, "margin": None, "ciou": round(s["ciou"], 2), "auc": round(s["auc"], 2),
                          "mean_ciou": round(s["mean_ciou"], 2), "ciou_std": 0.0, "auc_std": 0.0,
                          "mean_ciou_std": 0.0, "n_seeds": 0, "n": len(ids), "n_test": len(ids),
                          "paper_ciou": None, "paper_auc": None}, **extra))
    return rows


def add_margin_effects(rows: list[dict[str, Any]], evals: list[list[dict[str, Any]]], ids: Sequence[str],
                        group: str = "method_key") -> None:
    """For each row whose margin differs from its group's m = 0 row: Δ of cIoU / AUC / mean cIoU with
    95% paired-bootstrap intervals (:mod:`marginnce_kit.studies.stats`) on the clips ``ids``, seeds paired by
    position (``evals[i][j]`` is row ``i``'s seed ``j``), and the paper's Δ where the paper has both rows.
    ``evals`` is aligned with ``rows``."""
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


def add_selection(rows: list[dict[str, Any]], results: list[list[dict[str, Any]]], test: str | Sequence[str],
                  ids: Sequence[str], selection: str = "best_val", group: str = "method_key") -> None:
    """For every model row: the same metrics and Δ fields (:data:`ROW_METRICS`) for checkpoint ``selection``
    under ``row[selection]``, plus ``epochs`` (each seed's selected epoch). ``results[i][j]``: row ``i``'s seed
    ``j``'s run results (:meth:`Runner.run`); ``rows`` is aligned with ``results``; ``test``: the test list the
    runs were scored on, or each row's."""
    tests = [test] * len(rows) if isinstance(test, str) else list(test)
    evals = [[selected_eval(r, t, selection) for r in row] for row, t in zip(results, tests)]
    shadow = [dict(r) for r in rows]
    for r, ev in zip(shadow, evals):
        r.update(table_row(r["method"], r["margin"], ev, None, [p["seed"] for p in r["per_seed"]], ids))
        for key in list(r):
            if key.startswith("delta_") or key in ("p_value", "resolved", "interval", "n_seeds_paired", "few_seeds"):
                del r[key]
    add_margin_effects(shadow, evals, ids, group)
    for r, sh, res in zip(rows, shadow, results):
        r[selection] = {k: sh[k] for k in ROW_METRICS if k in sh}
        r[selection]["epochs"] = [x["_best_val"]["epoch"] for x in res] if selection == "best_val" else None


def apply_holm(rows: list[dict[str, Any]]) -> None:
    """Holm's adjustment over the table's comparisons (every row with a ``p_value``), for each selection apart:
    ``p_holm`` and ``resolved_holm`` (adjusted p below ``1 - LEVEL``) beside ``resolved``."""
    for where in (lambda r: r, lambda r: r.get("best_val")):
        found = [where(r) for r in rows if where(r) and "p_value" in where(r)]
        if not found:
            continue
        for block, adjusted in zip(found, holm([b["p_value"] for b in found])):
            block["p_holm"] = float(f"{adjusted:.3g}")
            block["resolved_holm"] = bool(adjusted < 1.0 - LEVEL)


def _fmt(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def _fmt_delta(r: dict[str, Any], key: str) -> str:
    if f"delta_{key}" not in r:
        return ""
    lo, hi = r[f"delta_{key}_ci95"]
    return f"{r[f'delta_{key}']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _yes(r: dict[str, Any], key: str) -> str:
    if key not in r:
        return ""
    return ("yes" if r[key] else "no") + ("†" if r.get("few_seeds") else "")


DELTA_NOTE = ("seeds: training runs averaged in the row; n: test clips. Δ [lo, hi]: the row minus the same "
              "method's m = 0 row (cIoU / AUC points), both scored on the same test clips and trained with the "
              "same seeds (same initialisation and data order), with its 95% interval: a t-interval over seeds and "
              "clips together (a crossed design: every seed scored on every clip; the variance of the grand mean "
              "from the rows', the columns' and the residual mean squares, Satterthwaite's degrees of freedom; "
              "covers a known effect "
              "93-97% of the time in simulation, tests/test_stats_coverage.py); with one seed, clips only "
              "(scipy.stats.bootstrap, paired). p: two-sided test of Δ cIoU = 0 with the same variance. resolved: the "
              "cIoU interval excludes 0 (one comparison at a time); Holm: resolved after Holm's adjustment over every "
              f"comparison of this table (the family-wise error rate at {1 - LEVEL:.2f}). † 2-{FEW_SEEDS - 1} seeds: "
              "the interval rests on that many per-seed effects (valid as far as they are normal, and wide): a "
              "pointer, not a finding. paper Δ: the same difference in the paper's table. ± is the standard deviation "
              "over seeds. checkpoint: last = the last epoch's weights; best_val = each run's best epoch on the "
              "validation split (clips that are neither trained on nor tested), upstream's best.pth without the "
              "test set.")


def markdown_table(title: str, rows: list[dict[str, Any]], note: str, split_column: bool = False,
                   extra_column: tuple[str, str] | Sequence[tuple[str, str]] | None = None,
                   selection: str = "last") -> str:
    """A study table in Markdown: ``title``, ``note`` above, the Δ definition below. ``extra_column``:
    ``(header, row key)`` (or several) of leading columns (e.g. the faulty-positive rate). ``selection``:
    ``"last"`` (the rows' own fields) or ``"best_val"`` (their ``best_val`` block; the bounds rows as they are)."""
    extras: list[tuple[str, str]] = []
    if extra_column is not None:  # one (header, key) pair, or several
        one = isinstance(extra_column[0], str)
        extras = [cast(tuple[str, str], extra_column)] if one else list(cast(Sequence[tuple[str, str]], extra_column))
    head = ["split"] if split_column else []
    head += [h for h, _ in extras]
    head += ["method", "margin", "seeds", "n", "cIoU", "AUC", "mean cIoU", "Δ cIoU [95% CI]", "Δ AUC [95% CI]", "p",
             "resolved", "Holm", "paper cIoU", "paper AUC", "paper Δ cIoU"]
    lines = [f"## {title} (checkpoint: {selection})", "", note, "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for row in rows:
        r = dict(row, **row[selection]) if selection != "last" and row.get(selection) else row
        n = r.get("n_seeds", 0)
        m = "-" if r["margin"] is None else f"{r['margin']:+.3g}"
        cells = [r["split"]] if split_column else []
        cells += [str(r[k]) if r.get(k) is not None else "-" for _, k in extras]
        cells += [r["method"], m, str(n) if n else "-", str(r.get("n", r.get("n_test", ""))),
                  _fmt(r["ciou"], r["ciou_std"], n),
                  _fmt(r["auc"], r["auc_std"], n), _fmt(r["mean_ciou"], r.get("mean_ciou_std", 0.0), n),
                  _fmt_delta(r, "ciou"), _fmt_delta(r, "auc"),
                  f"{r['p_value']:.2g}" if "p_value" in r else "",
                  _yes(r, "resolved"), _yes(r, "resolved_holm"),
                  "-" if r.get("paper_ciou") is None else f"{r['paper_ciou']:.2f}",
                  "-" if r.get("paper_auc") is None else f"{r['paper_auc']:.2f}",
                  f"{r['paper_delta_ciou']:+.2f}" if "paper_delta_ciou" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + DELTA_NOTE + "\n"


def markdown_tables(title: str, rows: list[dict[str, Any]], note: str, **kwargs: Any) -> str:
    """:func:`markdown_table` for each checkpoint selection the rows have (``last``, then ``best_val``)."""
    parts = [markdown_table(title, rows, note, **kwargs)]
    if any(r.get("best_val") for r in rows):
        parts.append(markdown_table(title, rows, note, selection="best_val", **kwargs))
    return "\n".join(parts)


def write_study(out: Path, name: str, payload: dict[str, Any], md: str) -> None:
    atomic_write_text(json.dumps(payload, indent=2), out / f"{name}.json")
    atomic_write_text(md, out / f"{name}.md")


def seeds_text(seeds: SeedPlan, models: Sequence[str] = tuple(METHOD_NAMES)) -> str:
    """``"seeds [0, 1, 2]"``, or with per-method seeds
    ``"seeds: LVS, EZ-VSL (w/o OGL) [0, 1, 2]; Ours [0, 1, 2, 3]"``."""
    if not isinstance(seeds, Mapping) or len({seeds_of(seeds, m) for m in models if m in seeds}) <= 1:
        return f"seeds {list(all_seeds(seeds))}"
    groups: dict[tuple[int, ...], list[str]] = {}
    for m in models:
        if m in seeds:
            groups.setdefault(seeds_of(seeds, m), []).append(METHOD_NAMES.get(m, m))
    return "seeds: " + "; ".join(f"{', '.join(names)} {list(v)}" for v, names in groups.items())


def study_note(payload: dict[str, Any]) -> str:
    excluded = len(payload.get("excluded", []))
    plan = payload.get("seeds_by_method") or payload["seeds"]
    return (f"Data: {payload['data']['source']}; {seeds_text(plan)}; test clips n = {payload['n_test']} "
            f"(every row on the same clips; {excluded} excluded, listed in the JSON). "
            f"Ours = cIoU (AP50) / AUC / mean cIoU in percent (mean ± std over seeds); "
            f"paper = VGGSound-144K -> VGG-SS.")


def same_clips(runner: Runner, test: str, evals: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """The clips every evaluation (and the reference rows) scored, and the excluded ones with reasons."""
    test_set = runner.test_set(test)
    tracker = getattr(test_set, "failures", None)
    keep, excluded = common_clips(evals + list(runner.bound_rows(test).values()), list(test_set.ids),
                                  tracker.failed if tracker is not None else None)
    if not keep:
        raise ValueError(f"{test}: no test clip was scored by every run ({len(excluded)} excluded)")
    return keep, excluded


def model_table(runner: Runner, specs: Sequence[tuple[str, str, float, tuple[float, float] | None, dict[str, Any]]],
                 seeds: SeedPlan, train_list: str, test: str, tag: str = "",
                 group: str = "method_key") -> tuple[list[dict[str, Any]], list[str], list[dict[str, str]]]:
    """Rows of ``specs`` = ``(model, label, margin, paper, extra)`` on one identical clip set, their Δ
    against m = 0, then the centre-prior and ceiling rows; also the clip ids and the excluded clips.
    ``seeds``: one sequence for every row, or each model's own (:data:`~.presets.SeedPlan`)."""
    results = [[runner.run(model, margin, s, train_list, [test], tag) for s in seeds_of(seeds, model)]
               for model, _, margin, _, _ in specs]
    evals = [[r[test] for r in row] for row in results]
    ids, excluded = same_clips(runner, test, [e for row in evals for e in row])
    rows = [table_row(label, margin, ev, paper, seeds_of(seeds, model), ids,
                      **dict({"method_key": model, "checkpoint": "last"}, **extra))
            for (model, label, margin, paper, extra), ev in zip(specs, evals)]
    add_margin_effects(rows, evals, ids, group)
    if runner.has_val:
        add_selection(rows, results, test, ids, "best_val", group)
    apply_holm(rows)
    return rows + bound_table_rows(runner.bound_rows(test), ids), ids, excluded

