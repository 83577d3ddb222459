"""Margin effects with 95% confidence intervals: per-clip metric values, the seeds-and-clips t-interval, Holm.

Each summary metric of the protocol is a mean over clips of a per-clip value (``per_clip_values``):

* cIoU (AP50) = mean of ``100 * [IoU_k >= 0.5]``;
* AUC = mean of ``100 * auc_k``, ``auc_k = sum_i ([IoU_k >= x_i] + [IoU_k >= x_{i+1}]) / 2 * (x_{i+1} - x_i)``
  over the thresholds ``x_i = 0.05 i`` (the trapezoid rule is linear in the success curve, so the mean
  of ``auc_k`` is the protocol's AUC exactly);
* mean cIoU = mean of ``100 * IoU_k``.

So the effect of a margin ``m`` on a table row is ``Δ = mean_{s,k} d[s, k]``, ``d = v_m - v_0``, over the seeds
``s`` (the same seeds under ``m`` and ``m = 0``: the same initialisation and data order) and the test clips ``k``
(the same clips under both).

Its 95% interval (:func:`crossed_interval`) treats seeds and clips as two crossed random samples: every seed is
scored on every clip, so ``d[s, k] = Δ + a_s + b_k + e_sk`` (a seed's training luck, a clip's difficulty, their
interaction). The variance of the grand mean is estimated without bias by
``V = var(row means) / S + var(column means) / N - MSE / (S N)`` (``MSE`` the two-way residual mean square), and
the interval is ``Δ ± t_{0.975, ν} sqrt(V)`` with Satterthwaite's ``ν``: a t-interval at the seed level, which
stays honest with few seeds (the percentile bootstrap over ``S`` seeds it replaces is too narrow by the factor
``sqrt((S - 1) / S)`` and more, since it draws from ``S`` values only), plus the clips' own share of the
uncertainty. ``tests/test_stats_coverage.py`` checks by simulation that it covers a known effect 93-97% of the
time. With one seed (real data) the interval is clip-level only: ``scipy.stats.bootstrap`` (paired) over the clips
(``flat_paired_interval``). ``p_value`` is the two-sided test of ``Δ = 0`` with the same ``V`` and ``ν``, and
:func:`holm` adjusts the p-values of one table's comparisons (Holm 1979) for ``resolved_holm``.

:func:`hierarchical_interval` (seeds, then clips, resampled: the kit's earlier interval) stays for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evaluation import AUC_THRESHOLDS

__all__ = ["METRICS", "FEW_SEEDS", "LEVEL", "per_clip_values", "flat_paired_interval", "hierarchical_interval",
           "crossed_interval", "CrossedEstimate", "paired_effects", "holm", "difference_of_effects", "N_RESAMPLES"]

METRICS: tuple[str, ...] = ("ciou", "auc", "mean_ciou")
N_RESAMPLES = 4000
#: below this many seeds (and above one) an interval's seed level rests on few values: ``few_seeds`` (the
#: t-interval is then valid only as far as the per-seed effects are normal, and wide)
FEW_SEEDS = 5
#: the confidence level of every interval, and 1 - the significance level of ``resolved``
LEVEL = 0.95


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


@dataclass(frozen=True)
class CrossedEstimate:
    """The mean of ``d [S, N]`` with its crossed-design variance (:func:`crossed_interval`): ``mean``,
    ``variance`` (of the mean), ``df`` (Satterthwaite), ``seeds``, ``clips``."""

    mean: float
    variance: float
    df: float
    seeds: int
    clips: int

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """``mean ± t_{(1 + level) / 2, df} sqrt(variance)``."""
        from scipy.stats import t

        half = float(t.ppf(0.5 + level / 2.0, self.df)) * math.sqrt(self.variance)
        return self.mean - half, self.mean + half

    def p_value(self) -> float:
        """Two-sided p-value of ``mean = 0`` (1 when the variance is 0 and the mean is 0; 0 when only the mean)."""
        from scipy.stats import t

        if self.variance <= 0:
            return 1.0 if self.mean == 0 else 0.0
        return float(2.0 * t.sf(abs(self.mean) / math.sqrt(self.variance), self.df))


def crossed_interval(d: np.ndarray) -> CrossedEstimate:
    """The grand mean of ``d [S, N]`` (seeds x the same clips) and the variance of that mean when both the seeds
    and the clips are samples (module docstring): ``V = V_rows / S + V_cols / N - MSE / (S N)``, ``ν`` by
    Satterthwaite. With one seed (``S = 1``) the clips' part alone, ``var(d) / N`` with ``N - 1`` degrees of
    freedom: an interval conditional on that seed, which says nothing of the seed-to-seed spread.

    Raises:
        ValueError: ``d`` is not a finite ``[S, N]`` array with ``S >= 1`` and ``N >= 2``.
    """
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 2:
        raise ValueError(f"d: expected a [seeds >= 1, clips >= 2] array, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("d: expected finite values, got NaN or infinity")
    s, n = d.shape
    grand = float(d.mean())
    if s == 1:
        return CrossedEstimate(grand, float(d[0].var(ddof=1)) / n, float(n - 1), 1, n)
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    a = float(rows.var(ddof=1)) / s
    b = float(cols.var(ddof=1)) / n
    resid = d - rows[:, None] - cols[None, :] + grand
    mse = float(np.square(resid).sum()) / ((s - 1) * (n - 1))
    c = mse / (s * n)
    v = a + b - c
    if v <= 0:  # possible only in degenerate samples (e.g. constant rows): the seed term alone
        v = max(a, 0.0)
    terms = a * a / (s - 1) + b * b / (n - 1) + c * c / ((s - 1) * (n - 1))
    df = v * v / terms if terms > 0 else float(s - 1)
    return CrossedEstimate(grand, v, max(float(df), 1.0), s, n)


def difference_of_effects(x: np.ndarray, y: np.ndarray) -> CrossedEstimate:
    """``mean(x) - mean(y)`` of two independent crossed samples (e.g. a margin's effect on two data sets, each
    ``[S, N]`` on its own clips), the variances added and ``ν`` by Welch-Satterthwaite."""
    ex, ey = crossed_interval(x), crossed_interval(y)
    v = ex.variance + ey.variance
    terms = (ex.variance ** 2 / ex.df if ex.variance > 0 else 0.0) + (ey.variance ** 2 / ey.df if ey.variance > 0
                                                                       else 0.0)
    df = v * v / terms if terms > 0 else float(max(1, min(ex.seeds, ey.seeds) - 1))
    return CrossedEstimate(ex.mean - ey.mean, v, max(df, 1.0), ex.seeds + ey.seeds, ex.clips + ey.clips)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input's order: the ``i``-th smallest ``p_(i)`` of
    ``m`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; a comparison is resolved at level ``1 - LEVEL``
    when its adjusted p-value is below ``1 - LEVEL``. Controls the family-wise error rate over the ``m``.

    Raises:
        ValueError: a p-value outside [0, 1] or NaN.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p_values: expected a sequence of values in [0, 1], got {list(p_values)}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def paired_effects(treated: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Δ of every metric with its 95% interval, from per-clip values ``[S, N]`` (row ``s`` = seed ``s``
    of both, column ``k`` = clip ``k`` of both).

    Returns ``{"delta_ciou", "delta_auc", "delta_mean_ciou"}`` (points), the ``..._ci95`` ``[lo, hi]``,
    ``"p_value"`` (cIoU, two-sided), ``"resolved"``: the cIoU interval excludes 0; ``"interval"``: how the
    intervals were made (``"crossed-t"``: several seeds, :func:`crossed_interval`; ``"clip-bootstrap"``: one
    seed, scipy's paired bootstrap over the clips, and a paired t-test over the clips for the p-value);
    ``"n_seeds_paired"``; ``"few_seeds"``: 2 to ``FEW_SEEDS - 1`` seeds.

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
            p = _clip_p_value(t[0] - b[0])
        else:
            est = crossed_interval(t - b)
            lo, hi = est.interval()
            p = est.p_value()
        out[f"delta_{key}"] = round(delta, 2)
        out[f"delta_{key}_ci95"] = [round(lo, 2), round(hi, 2)]
        if key == "ciou":
            out["p_value"] = float(f"{p:.3g}")
    lo, hi = out["delta_ciou_ci95"]
    out["resolved"] = bool(lo > 0 or hi < 0)
    out["interval"] = "clip-bootstrap" if np.asarray(treated["ciou"]).shape[0] == 1 else "crossed-t"
    out["n_seeds_paired"] = n_seeds = int(np.asarray(treated["ciou"]).shape[0])
    out["few_seeds"] = 1 < n_seeds < FEW_SEEDS
    return out


def _clip_p_value(d: np.ndarray) -> float:
    """Two-sided one-sample t-test of ``mean(d) = 0`` over the clips (one seed)."""
    from scipy.stats import ttest_1samp

    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(ttest_1samp(d, 0.0).pvalue)


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
