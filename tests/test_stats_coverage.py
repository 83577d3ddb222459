"""The studies' statistics (marginnce_kit/studies/stats.py): the seeds-and-clips t-interval covers a known effect
93-97% of the time in simulated two-level data (seeds crossed with clips), Holm's adjustment, and the interval's
algebra. The simulations use fixed generator seeds, so each test is deterministic; the bounds are the issue's
(a 95% interval that covers 93-97% of 1,000 simulations), which a too-narrow interval fails (the percentile
bootstrap over seeds, then clips, that the crossed interval replaced: 88% at 3 seeds here, 92.5% at 4, 96% at 8)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("scipy")
from scipy.stats import norm  # noqa: E402

from marginnce_kit.studies.stats import (  # noqa: E402
    crossed_interval,
    difference_of_effects,
    hierarchical_interval,
    holm,
    paired_effects,
)

SIMULATIONS = 1000


def _gaussian(rng: np.random.Generator, seeds: int, clips: int, effect: float) -> np.ndarray:
    """``d[s, k] = effect + a_s + b_k + e_sk``: seed luck (SD 2.5 points), clip difficulty (SD 3), interaction (SD 20)."""
    return (effect + rng.normal(0, 2.5, (seeds, 1)) + rng.normal(0, 3.0, (1, clips))
            + rng.normal(0, 20.0, (seeds, clips)))


def _binary(rng: np.random.Generator, seeds: int, clips: int, mu: float, delta: float, sd_run: float,
            sd_clip: float) -> np.ndarray:
    """The protocol's per-clip cIoU indicators (x100) of two arms per seed: run ``(s, arm)`` succeeds on clip ``k``
    when ``mu + delta * arm + u_{s,arm} + b_k + eps > 0`` (run skill ``u``, clip difficulty ``b``, noise ``eps``,
    all normal; the arms share the clips, and each seed's two runs share half their skill: paired seeds)."""
    b = rng.normal(0, sd_clip, (1, clips))
    shared = rng.normal(0, sd_run / math.sqrt(2), (seeds, 1))
    arms = []
    for arm in (0, 1):
        u = shared + rng.normal(0, sd_run / math.sqrt(2), (seeds, 1))
        arms.append(100.0 * (mu + delta * arm + u + b + rng.normal(0, 1.0, (seeds, clips)) > 0))
    return arms[1] - arms[0]


def _coverage(draw, truth: float) -> float:
    hits = 0
    for _ in range(SIMULATIONS):
        lo, hi = crossed_interval(draw()).interval()
        hits += lo <= truth <= hi
    return hits / SIMULATIONS


@pytest.mark.parametrize("seeds", [3, 12])
def test_crossed_interval_covers_a_known_gaussian_effect(seeds: int) -> None:
    rng = np.random.default_rng(1234 + seeds)
    assert 0.93 <= _coverage(lambda: _gaussian(rng, seeds, 300, effect=1.0), 1.0) <= 0.97


def test_crossed_interval_covers_a_known_binary_effect() -> None:
    """Two-level binary data like a study's: 8 seeds x 400 clips; the known effect is the population difference
    of success rates, ``Phi((mu + delta) / s) - Phi(mu / s)`` with ``s`` the total SD of the latent."""
    mu, delta, sd_run, sd_clip = -0.3, -0.05, 0.15, 1.2
    total = math.sqrt(1.0 + sd_run ** 2 + sd_clip ** 2)
    truth = 100.0 * (norm.cdf((mu + delta) / total) - norm.cdf(mu / total))
    rng = np.random.default_rng(77)
    assert 0.93 <= _coverage(lambda: _binary(rng, 8, 400, mu, delta, sd_run, sd_clip), truth) <= 0.97


def test_the_percentile_bootstrap_it_replaces_undercovers_with_few_seeds() -> None:
    """Why the interval changed: the seeds-then-clips percentile bootstrap over 3 seeds covers well under 95% of the
    same simulations the crossed interval passes (the seed level's variance factor (S - 1) / S, and no t quantile)."""
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(400):
        lo, hi = hierarchical_interval(_gaussian(rng, 3, 300, 1.0), n_resamples=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= 1.0 <= hi
    assert hits / 400 < 0.92


def test_crossed_interval_algebra() -> None:
    rng = np.random.default_rng(0)
    d = _gaussian(rng, 6, 200, 0.5)
    est = crossed_interval(d)
    assert est.mean == pytest.approx(d.mean())
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    resid = d - rows[:, None] - cols[None, :] + d.mean()
    expected = rows.var(ddof=1) / 6 + cols.var(ddof=1) / 200 - (resid ** 2).sum() / (5 * 199) / (6 * 200)
    assert est.variance == pytest.approx(expected)
    assert est.df >= 5  # at least the seeds' degrees of freedom
    lo, hi = est.interval()
    assert lo < est.mean < hi and hi - est.mean == pytest.approx(est.mean - lo)
    # a constant column shift (every seed scored higher on a clip) moves the mean, not the seed term
    shifted = d + np.linspace(-5, 5, 200)[None, :]
    assert crossed_interval(shifted).variance > est.variance
    # differences of independent effects add their variances
    other = _gaussian(rng, 6, 200, -1.0)
    diff = difference_of_effects(d, other)
    assert diff.mean == pytest.approx(d.mean() - other.mean())
    assert diff.variance == pytest.approx(est.variance + crossed_interval(other).variance)
    for bad in (np.zeros((0, 5)), np.zeros((3, 1)), np.full((3, 4), np.nan), np.zeros(5)):
        with pytest.raises(ValueError, match="d: expected"):
            crossed_interval(bad)
    # one seed: the clips' part alone (a one-sample t over the clips, conditional on that seed)
    one = crossed_interval(d[:1])
    assert one.variance == pytest.approx(d[0].var(ddof=1) / 200) and one.df == 199


def test_paired_effects_reports_the_crossed_interval_and_p() -> None:
    rng = np.random.default_rng(3)
    base = (rng.random((5, 300)) < 0.4) * 100.0
    treated = np.where(rng.random((5, 300)) < 0.1, 100.0 - base, base)
    per = {"ciou": treated, "auc": treated / 2, "mean_ciou": treated / 3}
    ref = {"ciou": base, "auc": base / 2, "mean_ciou": base / 3}
    out = paired_effects(per, ref)
    est = crossed_interval(treated - base)
    assert out["interval"] == "crossed-t"
    assert out["delta_ciou_ci95"] == [round(v, 2) for v in est.interval()]
    assert out["p_value"] == pytest.approx(est.p_value(), rel=1e-2)
    assert out["resolved"] == (out["delta_ciou_ci95"][0] > 0 or out["delta_ciou_ci95"][1] < 0)
    one = paired_effects({k: v[:1] for k, v in per.items()}, {k: v[:1] for k, v in ref.items()})
    assert one["interval"] == "clip-bootstrap" and 0 <= one["p_value"] <= 1


def test_holm_adjusts_in_step_down_order() -> None:
    # sorted p: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, but never below 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]
    assert holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])  # capped at 1, monotone
    assert holm([]) == []
    with pytest.raises(ValueError, match="p_values: expected"):
        holm([0.1, 1.5])
