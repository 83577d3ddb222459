"""The study statistics: the paired bootstrap over seeds and clips, the common clip set and few-seed flags."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marginnce_kit.evaluation import summarize_cious
from marginnce_kit.studies.stats import (
    common_clips,
    flat_paired_interval,
    hierarchical_interval,
    paired_effects,
    per_clip_values,
)
from marginnce_kit.table5 import markdown_table

# --------------------------------------------------------------------------- the paired bootstrap

@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60))
def test_per_clip_values_average_to_the_protocol_summary(cious):
    v = per_clip_values(cious)
    s = summarize_cious(cious)
    for key in ("ciou", "auc", "mean_ciou"):
        assert float(np.mean(v[key])) == pytest.approx(s[key], abs=1e-9)


def test_known_answers():
    # a constant paired difference: the interval is the point, flat and hierarchical
    x = np.full(50, 100.0)
    y = np.zeros(50)
    assert flat_paired_interval(x, y) == (100.0, 100.0)
    assert hierarchical_interval(np.full((3, 50), 2.5)) == pytest.approx((2.5, 2.5))
    # Bernoulli differences (p = 0.3 of 2,000 clips gain 100 points): the normal-theory interval
    rng = np.random.default_rng(1)
    d = 100.0 * (rng.permutation(2000) < 600)
    p, half = 30.0, 1.96 * 100.0 * np.sqrt(0.3 * 0.7 / 2000)
    lo, hi = flat_paired_interval(d, np.zeros(2000))
    assert lo == pytest.approx(p - half, abs=0.3) and hi == pytest.approx(p + half, abs=0.3)


def test_hierarchical_resampler_matches_scipy_on_the_flat_case():
    rng = np.random.default_rng(2)
    base = 100.0 * (rng.random(1500) < 0.4)
    treated = np.where(rng.random(1500) < 0.85, base, 100.0 - base)
    ours = hierarchical_interval((treated - base)[None, :], n_resamples=8000, seed=3)
    scipys = flat_paired_interval(treated, base, n_resamples=8000, seed=4)
    assert ours == pytest.approx(scipys, abs=0.2)


def test_pairing_narrows_the_interval():
    # clip difficulty shared by both sides, a 2-point gain on top: paired sees 2 +- small, unpaired is wide
    rng = np.random.default_rng(5)
    difficulty = 100.0 * rng.random((1, 1000))
    base = {k: difficulty for k in ("ciou", "auc", "mean_ciou")}
    treated = {k: difficulty + 2.0 + rng.normal(0, 1, (1, 1000)) for k in ("ciou", "auc", "mean_ciou")}
    paired = paired_effects(treated, base)
    shuffled = {k: v[:, rng.permutation(1000)] for k, v in base.items()}
    unpaired = paired_effects(treated, shuffled)
    w = paired["delta_mean_ciou_ci95"][1] - paired["delta_mean_ciou_ci95"][0]
    w_unpaired = unpaired["delta_mean_ciou_ci95"][1] - unpaired["delta_mean_ciou_ci95"][0]
    assert paired["delta_mean_ciou_ci95"][0] < 2.0 < paired["delta_mean_ciou_ci95"][1]
    assert paired["resolved"] and w < 0.25 * w_unpaired
    assert paired["n_seeds_paired"] == 1 and not paired["few_seeds"]


@pytest.mark.parametrize("n_seeds, few", [(1, False), (2, True), (4, True), (5, False)])
def test_few_seeds_are_flagged(n_seeds, few):
    """2-4 seeds: the seed level of the interval is too narrow to trust; the row says so (JSON and †)."""
    rng = np.random.default_rng(n_seeds)
    base = {k: rng.random((n_seeds, 50)) for k in ("ciou", "auc", "mean_ciou")}
    treated = {k: v + 1.0 for k, v in base.items()}
    effects = paired_effects(treated, base, n_resamples=200)
    assert effects["few_seeds"] is few and effects["resolved"]
    row = {"method": "m", "margin": -0.2, "n_seeds": n_seeds, "n": 50, "ciou": 1.0, "ciou_std": 0.0, "auc": 1.0,
           "auc_std": 0.0, "mean_ciou": 1.0, "paper_ciou": None, "paper_auc": None, **effects}
    line = [x for x in markdown_table("t", [row], "note").splitlines() if x.startswith("| m |")][0]
    assert ("| yes† |" in line) is few and ("| yes |" in line) is not few


def test_seed_level_is_resampled():
    # differences constant within a seed, different between seeds: only the seed level varies, so the
    # interval is the percentile bootstrap of the seed means, far wider than a clips-only interval
    seed_means = np.array([-2.0, 0.0, 2.0, 4.0, 6.0])
    d = np.repeat(seed_means[:, None], 300, axis=1)
    (lo, hi), samples = hierarchical_interval(d, n_resamples=8000, seed=6, return_samples=True)
    rng = np.random.default_rng(7)
    ref = rng.choice(seed_means, size=(8000, 5)).mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])), abs=0.25)
    assert samples.mean() == pytest.approx(seed_means.mean(), abs=0.1)
    flat = hierarchical_interval(d.reshape(1, -1), n_resamples=2000)
    assert (flat[1] - flat[0]) < 0.1 * (hi - lo)


def test_one_draw_of_clips_serves_every_seed():
    # two seeds with the same per-clip differences: resampling clips per seed independently would
    # shrink the clip-level variance by 1/2; one shared draw keeps the single-seed interval
    rng = np.random.default_rng(8)
    row = 100.0 * (rng.random(800) < 0.5) - 50.0
    one = hierarchical_interval(row[None, :], n_resamples=6000, seed=9)
    two = hierarchical_interval(np.stack([row, row]), n_resamples=6000, seed=9)
    assert (two[1] - two[0]) == pytest.approx(one[1] - one[0], rel=0.1)


def test_paired_effects_reject_unpaired_shapes():
    a = {k: np.zeros((2, 10)) for k in ("ciou", "auc", "mean_ciou")}
    b = {k: np.zeros((3, 10)) for k in ("ciou", "auc", "mean_ciou")}
    with pytest.raises(ValueError, match=r"ciou: expected two \[seeds, clips\] arrays"):
        paired_effects(a, b)


def test_common_clips_lists_the_excluded_with_reasons():
    e1 = {"per_clip": {"id": ["a", "b", "c"], "ciou": [0.1, 0.2, 0.3]}, "failed": {}}
    e2 = {"per_clip": {"id": ["a", "c"], "ciou": [0.1, 0.3]}, "failed": {"b": "truncated JPEG"}}
    e3 = {"per_clip": {"id": ["a", "b"], "ciou": [0.1, 0.2]}, "failed": {}}
    keep, excluded = common_clips([e1, e2, e3], ["a", "b", "c"])
    assert keep == ["a"]
    assert excluded == [{"id": "b", "reason": "truncated JPEG"}, {"id": "c", "reason": "not scored by every run"}]
