"""Margin effects with 95% confidence intervals: per-clip metric values and the paired bootstrap.

Each summary metric of the protocol is a mean over clips of a per-clip value (``per_clip_values``):

* cIoU (AP50) = mean of ``100 * [IoU_k >= 0.5]``;
* AUC = mean of ``100 * auc_k``, ``auc_k = sum_i ([IoU_k >= x_i] + [IoU_k >= x_{i+1}]) / 2 * (x_{i+1} - x_i)``
  over the thresholds ``x_i = 0.05 i`` (the trapezoid rule is linear in the success curve, so the mean
  of ``auc_k`` is the protocol's AUC exactly);
* mean cIoU = mean of ``100 * IoU_k``.

So the effect of a margin ``m`` on a table row is ``Δ = mean_{s,k} (v_m[s, k] - v_0[s, k])`` over the
seeds ``s`` (the same seeds under ``m`` and ``m = 0``: the same initialisation and data order) and the
test clips ``k`` (the same clips under both), i.e. the difference of the two rows' means.

Its 95% interval is a percentile bootstrap of that paired difference ``d[s, k]``:

* one seed (``S = 1``, e.g. real data): ``scipy.stats.bootstrap`` with ``paired=True`` resamples the
  clips (``flat_paired_interval``);
* several seeds: ``hierarchical_interval`` resamples the seeds with replacement, then the clips with
  replacement, and averages ``d`` over the drawn seeds and drawn clips. One draw of clips serves every
  drawn seed, because every seed was scored on the same test clips: a clip that is hard under ``m`` for
  every seed is one unit of evidence, not ``S``. With ``S = 1`` this is the flat paired bootstrap (the
  tests check it against scipy).

The seeds resampled are those of the experiment, so with few seeds the seed level of the interval is
itself uncertain (a bootstrap over ``S`` values has variance factor ``(S - 1) / S``); tables state ``S``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..evaluation import AUC_THRESHOLDS

__all__ = ["METRICS", "FEW_SEEDS", "per_clip_values", "flat_paired_interval", "hierarchical_interval", "paired_effects",
           "N_RESAMPLES"]

METRICS: tuple[str, ...] = ("ciou", "auc", "mean_ciou")
N_RESAMPLES = 4000
#: below this many seeds (and above one) an interval's seed level rests on too few values: ``few_seeds``
FEW_SEEDS = 5


def per_clip_values(cious: Sequence[float] | np.ndarray) -> dict[str, np.ndarray]:
    """Per-clip contributions (percent) whose means are the protocol's ``ciou``, ``auc`` and ``mean_ciou``.

    Args:
        cious: per-clip IoU of the median-thresholded map with the ground truth, ``[N]`` in [0, 1].

    Returns:
        ``{"ciou": [N], "auc": [N], "mean_ciou": [N]}`` float64 arrays.

    Raises:
        ValueError: ``cious`` is not 1-D, empty or not finite.
    """
    c = np.asarray(cious, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"cious: expected a non-empty 1-D sequence, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("cious: expected finite values, got NaN or infinity")
    x = np.asarray(AUC_THRESHOLDS, dtype=np.float64)
    y = (c[:, None] >= x[None, :]).astype(np.float64)  # [N, T] success indicator per threshold
    auc = ((y[:, 1:] + y[:, :-1]) * np.diff(x)[None, :]).sum(axis=1) / 2.0
    return {"ciou": 100.0 * (c >= 0.5), "auc": 100.0 * auc, "mean_ciou": 100.0 * c}


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def flat_paired_interval(x: np.ndarray, y: np.ndarray, n_resamples: int = N_RESAMPLES, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``mean(x - y)`` over paired clips by ``scipy.stats.bootstrap(paired=True)``.

    ``x``, ``y``: ``[N]`` per-clip values of the same clips. A constant difference gives ``(d, d)``.
    """
    from scipy.stats import bootstrap

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x, y: expected two [N] arrays of one shape, got {x.shape} and {y.shape}")
    d = x - y
    if np.all(d == d[0]):  # scipy warns on a degenerate distribution; the interval is the point
        return float(d[0]), float(d[0])
    res = bootstrap((x, y), lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis), paired=True,
                    vectorized=True, n_resamples=n_resamples, confidence_level=level, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def hierarchical_interval(d: np.ndarray, n_resamples: int = N_RESAMPLES, level: float = 0.95, seed: int = 0,
                          return_samples: bool = False) -> Any:
    """Percentile interval of ``mean(d)`` for paired differences ``d [S, N]`` (seeds x the same clips).

    Each resample draws ``S`` seeds and ``N`` clips with replacement (multinomial counts ``a_s``,
    ``b_k``) and takes ``sum_{s,k} a_s b_k d[s, k] / (S N)``: the drawn clips are the same for every
    drawn seed, as in the experiment. Returns ``(lo, hi)`` (and the ``[n_resamples]`` samples with
    ``return_samples``).
    """
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or 0 in d.shape:
        raise ValueError(f"d: expected a non-empty [seeds, clips] array, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("d: expected finite values, got NaN or infinity")
    s, n = d.shape
    rng = np.random.default_rng(seed)
    samples = np.empty(n_resamples)
    for start in range(0, n_resamples, 500):  # bounded memory: [500, N] counts at a time
        b = min(500, n_resamples - start)
        a = rng.multinomial(s, np.full(s, 1.0 / s), size=b).astype(np.float64)  # [b, S]
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)  # [b, N]
        samples[start:start + b] = np.einsum("bk,bk->b", a @ d, w) / (s * n)
    ci = _interval(samples, level)
    return (ci, samples) if return_samples else ci


def paired_effects(treated: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Δ of every metric with its 95% interval, from per-clip values ``[S, N]`` (row ``s`` = seed ``s``
    of both, column ``k`` = clip ``k`` of both).

    Returns ``{"delta_ciou", "delta_auc", "delta_mean_ciou"}`` (points), the ``..._ci95`` ``[lo, hi]``
    and ``"resolved"``: the cIoU interval excludes 0; ``"n_seeds_paired"``; ``"few_seeds"``: 2 to
    ``FEW_SEEDS - 1`` seeds, whose seed level is too narrow to trust (a bootstrap over ``S`` values has
    variance factor ``(S - 1) / S``, half with 2 seeds). One seed uses scipy's paired bootstrap, several
    the seeds-then-clips resampler, with the same draws for the three metrics.

    Raises:
        ValueError: the two sides' shapes differ.
    """
    out: dict[str, Any] = {}
    for key in METRICS:
        t, b = np.asarray(treated[key], dtype=np.float64), np.asarray(base[key], dtype=np.float64)
        if t.shape != b.shape or t.ndim != 2:
            raise ValueError(f"{key}: expected two [seeds, clips] arrays of one shape, got {t.shape} and {b.shape}")
        delta = float(np.mean(t - b))
        if t.shape[0] == 1:
            lo, hi = flat_paired_interval(t[0], b[0], n_resamples, seed=seed)
        else:
            lo, hi = hierarchical_interval(t - b, n_resamples, seed=seed)
        out[f"delta_{key}"] = round(delta, 2)
        out[f"delta_{key}_ci95"] = [round(lo, 2), round(hi, 2)]
    lo, hi = out["delta_ciou_ci95"]
    out["resolved"] = bool(lo > 0 or hi < 0)
    out["n_seeds_paired"] = n_seeds = int(np.asarray(treated["ciou"]).shape[0])
    out["few_seeds"] = 1 < n_seeds < FEW_SEEDS
    return out


def stack_per_clip(evals: Sequence[Mapping[str, Any]], ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``[S, N]`` per-clip values of the clips ``ids`` (in that order) from ``S`` evaluations with
    ``per_clip`` (``marginnce_kit.evaluate.evaluate_model``).

    Raises:
        KeyError: an evaluation did not score a clip of ``ids``.
    """
    rows = []
    for e in evals:
        pc = e["per_clip"]
        by_id = dict(zip(pc["id"], pc["ciou"]))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"per_clip: clips {missing[:5]} (of {len(missing)}) were not scored")
        rows.append(per_clip_values([by_id[i] for i in ids]))
    return {k: np.stack([r[k] for r in rows]) for k in METRICS}


def common_clips(evals: Sequence[Mapping[str, Any]], all_ids: Sequence[str],
                 reasons: Mapping[str, str] | None = None) -> tuple[list, list]:
    """The clips of ``all_ids`` scored by every evaluation (in ``all_ids`` order), and the excluded
    ones as ``[{"id", "reason"}]`` (the reason a run recorded for it, else "not scored by every run")."""
    scored = [set(e["per_clip"]["id"]) for e in evals]
    failed: dict[str, str] = dict(reasons or {})
    for e in evals:
        failed.update(e.get("failed", {}))
    keep = [i for i in all_ids if all(i in s for s in scored)]
    kept = set(keep)
    excluded = [{"id": i, "reason": failed.get(i, "not scored by every run")} for i in all_ids if i not in kept]
    return keep, excluded
