"""The studies' figures: the margin sweep as Δ against m = 0 (``table6.png``), the noisy-correspondence
study (``noise.png``), the faulty-negative study and its mechanism (``negatives.png``), the Fig. 1-style
qualitative figure (``figure1.png``) and the training loss of every run of Table 5 (``curves.png``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import collate_batch, load_annotations
from ..data.frames import IMAGENET_MEAN, IMAGENET_STD
from ..evaluation import ciou_per_sample, median_threshold_mask, normalize_map, upsample_map
from ..io import atomic_write, read_jsonl
from ..layout import RunLayout
from ..protocol import MAP_SIZE
from ..training.checkpoint import load_model
from .paper import METHOD_NAMES, PAPER_TABLE5_ROWS
from .runner import run_name

__all__ = ["plot_margin_sweep", "plot_noise", "plot_negatives", "plot_study_curves", "study_figures",
           "FIGURE1_QUANTILES", "METHOD_COLORS"]

#: figure1 shows the test clips at these quantiles of the reference model's (m = 0) per-clip IoU
FIGURE1_QUANTILES: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
                         "xtick.labelsize": 11, "ytick.labelsize": 11})
    return plt


def _err(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[list[float]]]:
    y = [r[f"delta_{key}"] for r in rows]
    lo = [r[f"delta_{key}"] - r[f"delta_{key}_ci95"][0] for r in rows]
    hi = [r[f"delta_{key}_ci95"][1] - r[f"delta_{key}"] for r in rows]
    return y, [lo, hi]


def plot_margin_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    """Δ cIoU and Δ AUC against the margin, each on one axis: ours with 95% intervals, the paper's Δ
    beside it, and the centre prior and the ceiling as horizontal lines at their distance from m = 0."""
    plt = _plt()
    model = [r for r in rows if r["margin"] is not None]
    base = next(r for r in model if r["margin"] == 0.0)
    pts = sorted((r for r in model if "delta_ciou" in r), key=lambda r: r["margin"])
    refs = {r["method"]: r for r in rows if r["margin"] is None}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    for ax, key, label in ((axes[0], "ciou", "cIoU (AP50)"), (axes[1], "auc", "AUC")):
        ms = [r["margin"] for r in pts]
        y, err = _err(pts, key)
        ax.errorbar([m - 0.008 for m in ms], y, yerr=err, fmt="o", capsize=4, color="tab:blue", ms=7,
                    label=f"ours: Δ vs m=0, 95% CI ({base['n_seeds']} seeds, {base['n']} clips)")
        paper = [(r["margin"], r[f"paper_{key}"] - base[f"paper_{key}"]) for r in model
                 if r.get(f"paper_{key}") is not None and base.get(f"paper_{key}") is not None]
        if paper:
            ax.plot([m + 0.008 for m, _ in paper], [d for _, d in paper], "s", color="tab:red", ms=7,
                    label="paper (VGG-SS): Δ vs m=0")
        ax.axhline(0.0, color="0.3", lw=1)
        for name, style in (("center prior", ":"), ("ceiling", "--")):
            if name in refs:
                d = refs[name][key] - base[key]
                ax.axhline(d, color="0.45", ls=style, lw=1.3)
                ax.text(0.99, d, f" {name} ({d:+.1f})", transform=ax.get_yaxis_transform(), ha="right",
                        va="bottom", fontsize=10, color="0.3")
        ax.set_xlabel("margin m")
        ax.set_ylabel(f"Δ {label} vs m = 0 (points)")
        ax.set_title(f"{label}: effect of the margin")
        ax.invert_xaxis()
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)  # below: hides no marker
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_noise(rows: list[dict[str, Any]], path: Path) -> None:
    """Δ cIoU against the faulty-positive rate with 95% intervals, a line per margin, a panel per method."""
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in rows if "delta_ciou" in r))
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(6.2 * max(1, len(methods)), 4.8), squeeze=False)
    margins = sorted({r["margin"] for r in rows if "delta_ciou" in r}, reverse=True)
    colors = plt.get_cmap("viridis")
    for ax, method in zip(axes[0], methods):
        for j, m in enumerate(margins):
            pts = sorted((r for r in rows if r["method"] == method and r["margin"] == m and "delta_ciou" in r),
                         key=lambda r: r["faulty_positive_rate"])
            x = [r["faulty_positive_rate"] + 0.008 * (j - (len(margins) - 1) / 2) for r in pts]
            y, err = _err(pts, "ciou")
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colors(j / max(1, len(margins) - 1) * 0.85),
                        label=f"m = {m:+.1f}")
        ax.axhline(0.0, color="0.3", lw=1)
        ax.set_xlabel("faulty-positive rate of the training split")
        ax.set_ylabel("Δ cIoU vs m = 0 at that rate (points)")
        ax.set_title(method)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(margins), frameon=False)
    first = next(r for r in rows if "delta_ciou" in r)
    scope = ("seeds and clips" if first["n_seeds"] > 1 else "clips only: 1 seed, the seed-to-seed spread is "
             "not in these intervals")
    fig.suptitle(f"Exploratory: does a negative margin help more with more noisy correspondences?\n95% intervals "
                 f"({first['n_seeds']} seed(s) x {first['n']} test clips; {scope})", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_negatives(rows: list[dict[str, Any]], epochs: list[list[list[dict[str, Any]]]], path: Path) -> None:
    """The faulty-negative study: (a) Δ cIoU of m = -0.2 against the number of classes K (log scale), a line per
    method and faulty-positive rate, 95% intervals; (b) the faulty anchors' share of gradient weight over their
    share of anchors at the last epoch, against K, for m = 0 and -0.2; (c) the medians of S_ii, same-class and
    other-class S_ij (reference model); (d) (b) per epoch at the largest K and rate. ``epochs[i][s]``: row ``i``'s
    seed ``s``'s epoch records (``_epochs`` of its run result)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(24, 5.4))
    fact = [(i, r) for i, r in enumerate(rows) if r.get("variant") == "factorial"]
    rates = sorted({r["faulty_positive_rate"] for _, r in fact})
    models = list(dict.fromkeys(r["model"] for _, r in fact))
    ks = sorted({r["num_classes"] for _, r in fact})
    colors = {"reference": "tab:blue", "ezvsl": "tab:orange"}
    ax = axes[0]
    for model in models:
        for j, rate in enumerate(rates):
            pts = sorted((r for _, r in fact if r["model"] == model and r["faulty_positive_rate"] == rate
                          and r["margin"] == -0.2 and "delta_ciou" in r), key=lambda r: r["num_classes"])
            if not pts:
                continue
            y, err = _err(pts, "ciou")
            x = [r["num_classes"] * (1.0 + 0.04 * (j - 0.5)) for r in pts]
            ax.errorbar(x, y, yerr=err, marker="o" if rate == rates[0] else "s", capsize=3, color=colors.get(model),
                        ls="-" if rate == rates[0] else "--", label=f"{pts[0]['method']}, faulty rate {rate:g}")
    ax.axhline(0.0, color="0.3", lw=1)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("classes K (same-class negatives per anchor fall as 1/K)")
    ax.set_ylabel("Δ cIoU, m = -0.2 vs 0 (points)")
    ax.set_title("(a) the margin's effect against K")
    ax.legend(frameon=False, fontsize=9)
    ax = axes[1]
    for model in models:
        for margin, style in ((0.0, ":"), (-0.2, "-")):
            pts = sorted((r for _, r in fact if r["model"] == model and r["margin"] == margin
                          and r["faulty_positive_rate"] == max(rates)), key=lambda r: r["num_classes"])
            pts = [r for r in pts if r["mechanism"].get("faulty_weight_ratio") is not None]
            if pts:
                ax.plot([r["num_classes"] for r in pts], [r["mechanism"]["faulty_weight_ratio"] for r in pts],
                        marker="o", ls=style, color=colors.get(model), label=f"{pts[0]['method']}, m = {margin:+.1f}")
    ax.axhline(1.0, color="0.3", lw=1)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("classes K")
    ax.set_ylabel("faulty anchors' weight share / anchor share")
    ax.set_title(f"(b) gradient weight of faulty positives (rate {max(rates):g}, last epoch)")
    ax.legend(frameon=False, fontsize=9)
    ax = axes[2]
    for key, color in (("median_s_pos", "tab:green"), ("median_s_same_class", "tab:red"),
                       ("median_s_other_class", "0.4")):
        for margin, style in ((0.0, ":"), (-0.2, "-")):
            pts = sorted((r for _, r in fact if r["model"] == "reference" and r["margin"] == margin
                          and r["faulty_positive_rate"] == max(rates)), key=lambda r: r["num_classes"])
            pts = [r for r in pts if r["mechanism"].get(key) is not None]
            if pts:
                ax.plot([r["num_classes"] for r in pts], [r["mechanism"][key] for r in pts], marker="o", ls=style,
                        color=color, label=f"{key.replace('median_s_', 'S ').replace('_', '-')}, m = {margin:+.1f}")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("classes K")
    ax.set_ylabel("median similarity (eq. 1)")
    ax.set_title("(c) Ours: positives, same-class and other-class negatives")
    ax.legend(frameon=False, fontsize=8)
    ax = axes[3]
    for i, r in fact:
        if r["model"] != "reference" or r["faulty_positive_rate"] != max(rates) or r["margin"] not in (0.0, -0.2):
            continue
        curves = [[e.get("mechanism", {}).get("faulty_weight_ratio") for e in seed] for seed in epochs[i] if seed]
        curves = [c for c in curves if c and None not in c]
        if curves:
            mean = np.mean(np.asarray(curves, dtype=float), axis=0)
            ax.plot(range(1, mean.size + 1), mean, ls="-" if r["margin"] else ":",
                    color=plt.get_cmap("viridis")(ks.index(r["num_classes"]) / max(1, len(ks) - 1) * 0.85),
                    label=f"K = {r['num_classes']}, m = {r['margin']:+.1f}")
    ax.axhline(1.0, color="0.3", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("faulty anchors' weight share / anchor share")
    ax.set_title(f"(d) Ours, per epoch (rate {max(rates):g}; mean over seeds)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def study_figures(runner: Any, seed: int, meta: dict[str, Any]) -> Path:
    """Fig. 1-style: each chosen test clip with its ground-truth box, then each Table 5 model's response
    map (viridis, min-max normalised, colour bar), the outline of the median-thresholded mask the
    protocol scores, and the clip's IoU. The clips: those at :data:`FIGURE1_QUANTILES` of the per-clip
    IoU of the reference model at m = 0 (seed ``seed``), from its hardest to its easiest."""
    plt = _plt()
    test = runner.data.test_list
    test_set = runner.test_set(test)
    ref = runner.run("reference", 0.0, seed, runner.data.train_list, [test])[test]["per_clip"]
    order = np.argsort(np.asarray(ref["ciou"]), kind="stable")
    picks = [ref["id"][order[min(len(order) - 1, int(q * len(order)))]] for q in FIGURE1_QUANTILES]
    pos = {c: k for k, c in enumerate(test_set.ids)}
    batch = collate_batch([test_set[pos[c]] for c in picks])
    if batch is None or batch["id"] != picks:  # every run scored these clips, so they decode
        raise RuntimeError(f"figures: clips {picks} no longer decode ({[] if batch is None else batch['failures']})")
    image, spec, gt = batch["image"], batch["spectrogram"], batch["gt_map"]
    boxes = load_annotations(runner.data.annotations, runner.data.annotation_format, picks)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    shown = [(x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() for x in image]
    runs: list[tuple[str, float]] = list(PAPER_TABLE5_ROWS)
    columns: list[tuple[str, tuple[str, float] | None]] = [("frame + ground truth", None)]
    columns += [(f"{METHOD_NAMES[m]}\nm = {mg:+.1f}", (m, mg)) for m, mg in runs]
    maps, masks, ious = {}, {}, {}
    for model, margin in runs:
        net, _, _ = load_model(RunLayout(runner.out / "runs" / run_name(model, margin, seed)).checkpoint)
        net.eval()
        with torch.no_grad():
            raw = upsample_map(net.localize(image, spec).float())
        maps[(model, margin)] = normalize_map(raw).numpy()
        masks[(model, margin)] = median_threshold_mask(raw).numpy()
        ious[(model, margin)] = ciou_per_sample(raw, gt).numpy()
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(2.3 * len(columns) + 0.8, 2.5 * len(picks)),
                             squeeze=False)
    im = None
    for r, clip in enumerate(picks):
        for c, (title, key) in enumerate(columns):
            ax = axes[r, c]
            # the frame (image_size pixels) in the 224 x 224 frame of the maps, masks and boxes it is scored in
            ax.imshow(shown[r], extent=(-0.5, MAP_SIZE - 0.5, MAP_SIZE - 0.5, -0.5))
            if key is not None:
                im = ax.imshow(maps[key][r], cmap="viridis", alpha=0.6, vmin=0, vmax=1)
                ax.contour(masks[key][r].astype(float), levels=[0.5], colors="white", linewidths=1.2)
                ax.text(4, 218, f"IoU {ious[key][r]:.2f}", color="white", fontsize=11, va="bottom",
                        bbox=dict(facecolor="black", alpha=0.6, pad=1.5, lw=0))
            for x0, y0, x1, y1 in boxes[clip]:
                s = MAP_SIZE
                ax.add_patch(plt.Rectangle((x0 * s, y0 * s), (x1 - x0) * s, (y1 - y0) * s, fill=False, lw=2,
                                           ec="#ff4fd8"))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=12)
            if c == 0:
                ax.set_ylabel(f"{clip}\nq = {FIGURE1_QUANTILES[r]:.1f}", fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.9, top=0.9, bottom=0.02, wspace=0.05, hspace=0.08)
    cax = fig.add_axes([0.915, 0.1, 0.012, 0.75])
    fig.colorbar(im, cax=cax, label="response map (min-max normalised)")
    fig.suptitle(f"Response maps on {meta['data']['source']} (seed {seed}). Magenta: ground-truth box; white: "
                 f"the median-thresholded mask the protocol scores; IoU: the clip's cIoU.\nRows: the test clips at "
                 f"the {', '.join(f'{q:.0%}' for q in FIGURE1_QUANTILES)} quantiles of Ours (m = 0)'s per-clip IoU.",
                 fontsize=12)
    path = runner.out / "figure1.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


#: the line colour of each method in the study-level curves
METHOD_COLORS = {"lvs": "tab:blue", "ezvsl": "tab:orange", "reference": "tab:green"}


def plot_study_curves(runs: Sequence[tuple[str, float, int, Path]], path: Path, title: str = "") -> None:
    """The training loss (epoch mean, from each run's ``metrics.jsonl``) of every run of a study against
    the epoch: a line per run, coloured by method, its line style by margin (solid: m = 0).

    Args:
        runs: ``(model, margin, seed, run folder)`` for each run; a run without ``metrics.jsonl`` is skipped.
        path: the PNG to write.

    Raises:
        ValueError: no run has a ``metrics.jsonl`` with a loss.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles: dict[float, str] = {}
    drawn, labelled = 0, set()
    for model, margin, _seed, folder in runs:
        log = RunLayout(Path(folder)).metrics
        if not log.exists():
            continue
        records = read_jsonl(log, "metrics log")
        points = [(r["epoch"], r["loss"]) for r in records if r.get("loss") is not None]
        if not points:
            continue
        style = styles.setdefault(margin, ["-", "--", ":", "-."][len(styles) % 4] if margin != 0.0 else "-")
        label = f"{METHOD_NAMES.get(model, model)}, m = {margin:+.1f}"
        ax.plot(*zip(*points), color=METHOD_COLORS.get(model, "tab:gray"), ls=style, marker="o", ms=3, alpha=0.8,
                label=None if label in labelled else label)
        labelled.add(label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"{path.name}: expected runs with a metrics.jsonl holding losses, got none of {len(runs)}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(title="a line per run (seed)", fontsize=9)
    ax.set_title(title or f"training loss of {drawn} runs")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=".png")
    finally:
        plt.close(fig)
