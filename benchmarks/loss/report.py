"""The loss benchmark's Markdown report (see :mod:`benchmarks.run`)."""

from __future__ import annotations

from .cases import FORMULATIONS, MARGIN

__all__ = ["markdown"]


def _load_note(meta: dict) -> str:
    shared = max((meta.get("load_before") or [0])[0], (meta.get("load_after") or [0])[0]) > 0.5 + meta["threads"]
    if not shared:
        return ""
    return (
        "**Shared machine**: the 1-minute load average exceeded this run's threads, other jobs were running. "
        "Absolute times are inflated and noisy; the speed-ups are medians of ratios within interleaved rounds "
        "(noise common to a round cancels), their quartiles show the spread that remains."
    )


def markdown(
    meta: dict, rows: list[dict], train: list[dict], scale: dict | None = None, prof: dict | None = None
) -> str:
    lines = [
        f"# Loss benchmark: {meta['device']}",
        "",
        f"`{meta['command']}` on {meta['date']}; torch {meta['torch']}, {meta['threads']} intra-op thread(s), "
        f"load average {meta['load_before']} before and {meta['load_after']} after; "
        f"features {meta['layout']}, C = {meta['channels']}, margin {MARGIN}; run time {meta.get('run_s', 0):.0f} s.",
        "",
        _load_note(meta),
        "",
        "Forward + backward to leaf features, median wall time. `speed-up` = median over interleaved rounds of "
        "upstream time / this time, with the quartiles of the per-round ratios; `x floor` = median of this time / "
        "the bare matrix products' time (max-MIL: 1 product, eq. 1: 3) on pre-laid-out operands; `peak` = most bytes "
        "allocated at once above the inputs, gradients included; `loss` = peak less the two gradients (the loss's own "
        f"memory) ({meta['memory_measure']}).",
        "",
    ]
    for formulation, title in FORMULATIONS.items():
        sub = [r for r in rows if r["formulation"] == formulation]
        if not sub:
            continue
        lines += [
            f"## {title}",
            "",
            "| B | H x W | variant | median ms | speed-up (quartiles) | x floor | peak MiB | loss MiB |",
            "|---:|:---:|:---|---:|---:|---:|---:|---:|",
        ]
        for r in sub:
            peak = "" if r["peak_MB"] is None else f"{r['peak_MB']:.1f}"
            loss = "" if r.get("loss_MB") is None else f"{r['loss_MB']:.1f}"
            q = r.get("speedup_quartiles") or [float("nan")] * 2
            speed = "" if r["variant"] == "upstream" else f"{r['speedup_vs_upstream']:.2f}x ({q[0]:.2f}-{q[1]:.2f})"
            lines.append(
                f"| {r['B']} | {r['H']}x{r['W']} | {r['variant']} | {r['median_ms']:.2f} | {speed} | "
                f"{r['x_floor']:.2f} | {peak} | {loss} |"
            )
        lines.append("")
    if scale:
        lines += [
            "## Scale: large batches, the default backend",
            "",
            "One measured call for peak memory (it is also the warm-up), then up to 3 timed calls (median). "
            f"Upstream runs only where its memory model predicts at most {scale['upstream_cap_GiB']:g} GiB; "
            "elsewhere its "
            "row is the model's prediction (`model`: bytes per response-map element measured at the largest B it "
            "ran at, times B^2 HW; that B per case is in the last table).",
            "",
            "| formulation | B | H x W | variant | source | median ms | peak MiB | loss MiB "
            "| upstream / ours loss memory |",
            "|:---|---:|:---:|:---|:---|---:|---:|---:|---:|",
        ]
        for r in scale["rows"]:
            ms = "" if r["median_ms"] is None else f"{r['median_ms']:.0f}"
            mem = f"{r['memory_vs_upstream']:.1f}" if r.get("memory_vs_upstream") else ""
            lines.append(
                f"| {r['formulation']} | {r['B']} | {r['H']}x{r['W']} | {r['variant']} | {r['source']} | {ms} | "
                f"{r['peak_MB']:.0f} | {r['loss_MB']:.0f} | {mem} |"
            )
        lines += [
            "",
            "Largest B whose inputs, gradients and loss memory fit the budget (both from memory models: upstream's "
            "`bytes per map element x B^2 HW`, ours a least-squares `c2 B^2 + c1 B` through its measured points from "
            "the median size up; `fit residual` = its largest relative error there):",
            "",
            "| formulation | H x W | budget | upstream B | ours B | upstream model measured at B | ours fit points "
            "| fit residual |",
            "|:---|:---:|---:|---:|---:|---:|:---|---:|",
        ]
        for r in scale["largest_batch"]:
            lines.append(
                f"| {r['formulation']} | {r['H']}x{r['W']} | {r['budget_GiB']:g} GiB | {r['upstream_B']} | "
                f"{r['ours_B']} | {r['calibration_B']} | {', '.join(map(str, r['ours_fit_points']))} | "
                f"{100 * r['ours_fit_max_rel_residual']:.1f}% |"
            )
        lines.append("")
    if prof:
        lines += [
            f"## Profile: {prof['formulation']}, B = {prof['B']}, {prof['H']}x{prof['W']} "
            "(torch.profiler, self CPU time per step)",
            "",
        ]
        for name, v in prof["variants"].items():
            lines += [
                f"{name}: {v['total_ms_per_step']:.2f} ms per step",
                "",
                "| op | calls/step | self ms/step |",
                "|:---|---:|---:|",
            ]
            lines += [f"| `{o['op']}` | {o['calls_per_step']:g} | {o['self_ms_per_step']:.2f} |" for o in v["ops"]]
            lines.append("")
    if train:
        t = train[0]
        lines += [
            f"## Loss share of a reference-model training step (batch {t['batch']}, features {t['feature_map']})",
            "",
            "| loss | step ms | loss fwd+bwd ms | share |",
            "|:---|---:|---:|---:|",
        ]
        for t in train:
            lines.append(f"| {t['variant']} | {t['step_ms']:.0f} | {t['loss_ms']:.2f} | {100 * t['loss_share']:.2f}% |")
        lines.append("")
    return "\n".join(lines)
