"""The study runner: the smoke preset end to end (the CI integration test), and its table logic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from marginnce_kit import table5 as T5
from marginnce_kit.cli import UsageError
from marginnce_kit.studies.figures import plot_study_curves
from marginnce_kit.studies.paper import LOGIT_MATCHED_MARGIN
from marginnce_kit.studies.presets import PRESETS, StudyPreset, all_seeds, seeds_of
from marginnce_kit.studies.runner import figure_seed
from marginnce_kit.studies.tables import add_margin_effects, seeds_text, table_row
from marginnce_kit.table5 import PAPER, StudyData, markdown_table, plan_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("results")
    old = os.environ.get("MARGINNCE_CACHE")
    os.environ["MARGINNCE_CACHE"] = str(cache)
    try:
        t0 = time.time()
        assert T5.main(["--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
        seconds = time.time() - t0
    finally:
        if old is None:
            os.environ.pop("MARGINNCE_CACHE", None)
        else:
            os.environ["MARGINNCE_CACHE"] = old
    return out, seconds, cache


@pytest.mark.slow
def test_smoke_preset_writes_table5(smoke):
    out, _, cache = smoke
    payload = json.loads((out / "table5.json").read_text())
    rows = payload["rows"]
    methods = [(r["method"], r["margin"]) for r in rows]
    assert methods == [("LVS", 0.0), ("LVS", -0.2), ("LVS", -0.3), ("EZ-VSL (w/o OGL)", 0.0), ("EZ-VSL (w/o OGL)", -0.2),
                       ("Ours", 0.0), ("Ours", -0.2), ("EZ-VSL (w/o OGL), logit-matched", LOGIT_MATCHED_MARGIN),
                       ("center prior", None), ("ceiling", None)]
    for r in rows:
        for key in ("method", "margin", "ciou", "auc", "paper_ciou", "paper_auc", "mean_ciou", "n_test"):
            assert key in r
        assert 0.0 <= r["ciou"] <= 100.0 and 0.0 <= r["auc"] <= 100.0
        assert r["n_test"] == r["n"] == 150  # every row on the same clips
    assert payload["excluded"] == [] and payload["n_test"] == 150
    for r in rows[:-2]:
        if r["margin"] != 0.0:  # the margin's effect with its paired interval (one seed: clips only)
            for key in ("ciou", "auc", "mean_ciou"):
                lo, hi = r[f"delta_{key}_ci95"]
                assert lo <= r[f"delta_{key}"] <= hi
            c_lo, c_hi = r["delta_ciou_ci95"]
            assert r["resolved"] == (c_lo > 0 or c_hi < 0)
        else:
            assert "delta_ciou" not in r
    # the paper's numbers beside ours (its Table 5)
    by = {(r["method"], r["margin"]): r for r in rows}
    assert (by[("LVS", -0.3)]["paper_ciou"], by[("LVS", -0.3)]["paper_auc"]) == (35.73, 38.52)
    assert (by[("Ours", -0.2)]["paper_ciou"], by[("Ours", -0.2)]["paper_auc"]) == (38.25, 39.06)
    # no tie-free map beats the protocol's ceiling on the same clips
    ceiling = by[("ceiling", None)]
    for r in rows[:-2]:
        assert r["ciou"] <= ceiling["ciou"] + 1e-9 and r["mean_ciou"] <= ceiling["mean_ciou"] + 1e-9
    md = (out / "table5.md").read_text()
    assert "| center prior |" in md and "| ceiling |" in md and "38.25" in md and "Δ [lo, hi]:" in md
    assert payload["data"]["source"].startswith("embedded:smoke:")
    assert payload["overrides"] == {} and payload["train"] == T5.PRESETS["smoke"].train
    assert any(cache.iterdir())  # the dataset went to MARGINNCE_CACHE
    # the study-level curves (every Table 5 run's loss) beside each run's own curves
    assert (out / "curves.png").stat().st_size > 10_000
    for model, margin in T5.TABLE5_ROWS:
        run = out / "runs" / T5.run_name(model, margin, 0)
        assert (run / "curves.png").exists() and (run / "metrics.jsonl").exists()


@pytest.mark.slow
def test_smoke_preset_resumes_from_cache(smoke, capsys):
    out, seconds, cache = smoke
    print(f"smoke preset took {seconds:.0f} s")  # reported, never asserted (speed lives in benchmarks)
    import os

    os.environ["MARGINNCE_CACHE"] = str(cache)
    try:
        before = json.loads((out / "table5.json").read_text())["rows"]
        assert T5.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
        after = json.loads((out / "table5.json").read_text())["rows"]
    finally:
        os.environ.pop("MARGINNCE_CACHE", None)
    assert after == before
    assert "training runs to do" not in capsys.readouterr().out  # every run came from its cache


def test_noise_smoke_preset(smoke):
    """The noisy-correspondence study's smoke preset (rates 0 and 0.4, margins 0 and -0.2), as CI runs it."""
    import os

    out, _, cache = smoke
    os.environ["MARGINNCE_CACHE"] = str(cache)
    try:
        assert T5.main(["--preset", "smoke", "--studies", "noise", "--out", str(out), "--no-progress"]) == 0
    finally:
        os.environ.pop("MARGINNCE_CACHE", None)
    payload = json.loads((out / "noise.json").read_text())
    rows = [r for r in payload["rows"] if r["margin"] is not None]
    assert sorted((r["method"], r["faulty_positive_rate"], r["margin"]) for r in rows) == sorted(
        (m, rate, mg) for m in ("Ours", "EZ-VSL (w/o OGL)") for rate in (0.0, 0.4) for mg in (0.0, -0.2))
    assert {r["n"] for r in payload["rows"]} == {150}  # every rate scored on the same clean test clips
    for r in rows:
        assert ("delta_ciou_ci95" in r) == (r["margin"] != 0.0)
    assert (out / "noise.png").stat().st_size > 0
    assert "faulty-positive rate" in (out / "noise.md").read_text()


def _eval(ciou_values, ids=None):
    ids = ids or [f"c{k}" for k in range(len(ciou_values))]
    return {"per_clip": {"id": list(ids), "ciou": list(ciou_values)}, "failed": {}}


def test_margin_effects_carry_paired_intervals_and_paper_delta():
    rng = np.random.default_rng(0)
    n = 400
    ids = [f"c{k}" for k in range(n)]
    base = [rng.random(n) for _ in range(3)]  # 3 seeds
    better = [np.clip(b + 0.2 * (rng.random(n) < 0.5), 0, 1) for b in base]  # lifts about half the clips
    same = [b.copy() for b in base]
    evals = [[_eval(b) for b in base], [_eval(b) for b in better], [_eval(b) for b in same]]
    rows = [table_row("Ours", m, ev, PAPER["table6"][("reference", m)], (0, 1, 2), ids, method_key="reference")
            for m, ev in zip((0.0, -0.2, -0.1), evals)]
    add_margin_effects(rows, evals, ids)
    assert "delta_ciou" not in rows[0]
    r = rows[1]
    for key in ("ciou", "auc", "mean_ciou"):
        lo, hi = r[f"delta_{key}_ci95"]
        assert lo <= r[f"delta_{key}"] <= hi
    assert r["delta_ciou"] == pytest.approx(rows[1]["ciou"] - rows[0]["ciou"], abs=0.011)
    assert r["resolved"] is True and r["delta_ciou_ci95"][0] > 0
    assert rows[2]["delta_ciou"] == 0.0 and rows[2]["delta_ciou_ci95"] == [0.0, 0.0] and rows[2]["resolved"] is False
    assert r["paper_delta_ciou"] == pytest.approx(38.25 - 36.93)
    md = markdown_table("t", rows, "note")
    lo, hi = r["delta_ciou_ci95"]
    assert f"{r['delta_ciou']:+.2f} [{lo:+.2f}, {hi:+.2f}]" in md and "Δ [lo, hi]" in md


def test_rows_are_scored_on_the_given_clips_only():
    ids = ["a", "b", "c", "d"]
    ev = _eval([0.9, 0.1, 0.8, 0.0], ids)
    row = table_row("Ours", 0.0, [ev], None, (0,), ["a", "c"])
    assert row["ciou"] == 100.0 and row["n"] == row["n_test"] == 2


def test_plan_runs_shares_runs_between_studies():
    data = StudyData("r", "train.txt", "r", "test.csv", "a.json", heard_train_list="h.txt",
                     heard_test_list="ht.csv", unheard_test_list="ut.csv")
    runs = plan_runs(["table5", "table6", "table4"], data, (0, 1))
    assert len(runs) == len(set(runs))
    main = {(m, mg) for m, mg, s, *_ in runs if _[0] == "train.txt"}
    assert main == set(T5.TABLE5_ROWS) | set(PAPER["table6"])  # reference 0 / -0.2 once; the secondary rows too
    assert len([r for r in runs if r[3] == "train.txt"]) == 2 * len(main)
    heard = [r for r in runs if r[3] == "h.txt"]
    assert len(heard) == 2 * 5 and all(r[4] == ("ht.csv", "ut.csv") and r[5] == "heard_" for r in heard)


def test_table5_seeds_per_method():
    """The reference model can run more seeds in Table 5 than the baselines; Tables 6 and 4 keep ``seeds``."""
    data = StudyData("r", "train.txt", "r", "test.csv", "a.json", heard_train_list="h.txt",
                     heard_test_list="ht.csv", unheard_test_list="ut.csv")
    plan = {"lvs": (0, 1), "ezvsl": (0, 1), "reference": (0, 1, 2, 3)}
    runs = plan_runs(["table5", "table6", "table4"], data, (0, 1), plan)
    seeds5 = {(m, mg): sorted(s for mm, gg, s, tl, *_ in runs if (mm, gg) == (m, mg) and tl == "train.txt")
              for m, mg in PAPER["table5"]}
    assert seeds5[("lvs", -0.3)] == [0, 1] and seeds5[("ezvsl", 0.0)] == [0, 1]
    assert seeds5[("reference", 0.0)] == seeds5[("reference", -0.2)] == [0, 1, 2, 3]
    assert sorted(s for m, mg, s, tl, *_ in runs if (m, mg) == ("reference", -0.1)) == [0, 1]  # Table 6
    assert sorted(s for m, mg, s, tl, *_ in runs if tl == "h.txt" and m == "reference" and mg == 0.0) == [0, 1]
    # figures alone: one run per Table 5 row at the first seed every method ran
    figs = plan_runs(["figures"], data, (0, 1), {"lvs": (3, 4), "ezvsl": (4, 3), "reference": (2, 3, 4)})
    assert {r[2] for r in figs} == {3} and len(figs) == len(T5.TABLE5_ROWS)
    assert figure_seed({"lvs": (3, 4), "ezvsl": (4, 3), "reference": (2, 3, 4)}) == 3
    with pytest.raises(ValueError, match="expected a seed that every Table 5 method runs"):
        figure_seed({"lvs": (0,), "ezvsl": (1,), "reference": (2,)})
    assert seeds_of(plan, "reference") == (0, 1, 2, 3) and seeds_of((5, 6), "lvs") == (5, 6)
    assert all_seeds(plan) == (0, 1, 2, 3)
    assert seeds_text((0, 1)) == "seeds [0, 1]"
    assert seeds_text({"lvs": [0, 1], "reference": [0, 1]}) == "seeds [0, 1]"
    assert seeds_text(plan) == "seeds: LVS, EZ-VSL (w/o OGL) [0, 1]; Ours [0, 1, 2, 3]"
    assert PRESETS["default"].seed_plan(("lvs", "reference")) == {"lvs": (0, 1), "reference": tuple(range(8))}


def test_seed_plans_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"method_seeds: expected keys among \['ezvsl', 'lvs', 'reference'\], got \['ours'\]"):
        StudyPreset("default", (0,), ("table5",), method_seeds={"ours": (0, 1)})
    with pytest.raises(UsageError, match=r"--seeds expects distinct seeds, got \[0, 1, 0\] \(repeated: \[0\]\)"):
        T5.main(["--seeds", "0", "1", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "runs").exists()


def test_real_data_needs_every_path(tmp_path):
    with pytest.raises(UsageError, match="real data needs all of"):
        T5.main(["--train-root", str(tmp_path), "--out", str(tmp_path)])


# --------------------------------------------------------------------------- the embedded recipe's schedule


def test_lr_schedule_warm_up_and_cosine():
    import math

    from marginnce_kit.train import TrainConfig, lr_at_step

    c = TrainConfig(train_root="r", train_list="l", lr=1e-3)
    assert [lr_at_step(c, t, 100) for t in (0, 50, 99)] == [1e-3] * 3  # the default: constant, as before
    w = TrainConfig(train_root="r", train_list="l", lr=1e-3, lr_schedule="cosine", warmup_steps=10)
    assert lr_at_step(w, 0, 100) == pytest.approx(1e-3 * 0.1 * 1.0)
    assert lr_at_step(w, 9, 100) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert lr_at_step(w, 50, 100) == pytest.approx(0.5e-3)
    assert lr_at_step(w, 99, 100) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    with pytest.raises(ValueError, match="lr_schedule: expected one of"):
        TrainConfig(train_root="r", train_list="l", lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_steps: expected an int >= 0"):
        TrainConfig(train_root="r", train_list="l", warmup_steps=-1)


# --------------------------------------------------------------------------- figures


def _effect_row(method, margin, d, rate=None, paper=None, base_paper=None):
    r = {"method": method, "margin": margin, "ciou": 30.0 + d, "auc": 35.0 + d, "n_seeds": 3, "n": 100,
         "paper_ciou": paper, "paper_auc": paper}
    if margin not in (0.0, None):
        r.update(delta_ciou=d, delta_auc=d / 2, delta_ciou_ci95=[d - 1, d + 1], delta_auc_ci95=[d / 2 - 1, d / 2 + 1])
    if rate is not None:
        r["faulty_positive_rate"] = rate
    return r


def test_margin_sweep_and_noise_figures_render(tmp_path):
    from marginnce_kit.studies.figures import plot_margin_sweep, plot_noise

    rows = [_effect_row("Ours", m, d, paper=p) for m, d, p in ((0.2, 0.5, 37.05), (0.0, 0.0, 36.93), (-0.2, -1.0, 38.25))]
    rows += [dict(_effect_row("center prior", None, 0.0), ciou=20.0, auc=25.0),
             dict(_effect_row("ceiling", None, 0.0), ciou=50.0, auc=49.0)]
    plot_margin_sweep(rows, tmp_path / "table6.png")
    noise = [_effect_row(meth, m, d, rate=r) for meth in ("Ours", "EZ-VSL (w/o OGL)") for r in (0.0, 0.4)
             for m, d in ((0.0, 0.0), (-0.2, r))]
    plot_noise(noise, tmp_path / "noise.png")
    assert (tmp_path / "table6.png").stat().st_size > 10_000 and (tmp_path / "noise.png").stat().st_size > 10_000


def test_figure1_from_checkpoints(tmp_path, monkeypatch):
    """figure1: untrained checkpoints of the seven Table 5 models on the smoke data (the rendering path)."""
    import torch

    from marginnce_kit.models import build_model
    from marginnce_kit.studies.figures import FIGURE1_QUANTILES, study_figures
    from marginnce_kit.train import TrainConfig, atomic_save

    monkeypatch.setenv("MARGINNCE_CACHE", str(tmp_path / "cache"))
    data = T5.embedded_data("smoke", num_test=20)
    kwargs = dict(T5.PRESETS["smoke"].train)
    runner = T5.Runner(tmp_path / "out", data, kwargs, "cpu", 0, progress=False)
    test_ids = list(runner.test_set(data.test_list).ids)
    for model, margin in T5.TABLE5_ROWS:
        config = runner._config(model, margin, 0, data.train_list)
        d = tmp_path / "out" / "runs" / T5.run_name(model, margin, 0)
        d.mkdir(parents=True)
        torch.manual_seed(0)
        atomic_save({"model": build_model(config.model_config()).state_dict(), "config": asdict(config), "epoch": 1},
                    d / "checkpoint.pt")
        path, _, key = runner._cache_entry(model, margin, 0, data.train_list, (data.test_list,))
        ev = {"per_clip": {"id": test_ids, "ciou": [k / len(test_ids) for k in range(len(test_ids))]}, "failed": {}}
        path.write_text(json.dumps({"key": key, "results": {data.test_list: ev, "_seconds": {"train_and_eval": 0}}}))
    meta = {"data": asdict(data)}
    path = study_figures(runner, 0, meta)
    assert path.stat().st_size > 50_000 and len(FIGURE1_QUANTILES) == 5
    assert isinstance(TrainConfig.from_dict(torch.load(tmp_path / "out" / "runs" / "lvs_m+0.00_s0" / "checkpoint.pt",
                                                       weights_only=False)["config"]), TrainConfig)


def test_noise_grid_needs_margin_zero(tmp_path):
    with pytest.raises(UsageError, match="--noise-margins: expected 0 among the margins"):
        T5.main(["--studies", "noise", "--noise-margins", "-0.2", "-0.1", "--out", str(tmp_path)])
    with pytest.raises(UsageError, match=r"--noise-rates: expected rates in \[0, 1\)"):
        T5.main(["--studies", "noise", "--noise-rates", "0", "1.5", "--out", str(tmp_path)])


# --------------------------------------------------------------------------- the command: overrides, curves, one-line errors


def _table5(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "marginnce_kit.table5", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=300)


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m marginnce_kit.table5: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_overrides_reach_every_run_and_its_cache_key(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(T5, "run_studies", lambda *a, **k: seen.update(overrides=a[8]))
    argv = ["--out", str(tmp_path), "--batch-size", "8", "--backbone", "small", "--epochs", "1", "--limit-steps", "0",
            "--max-failures", "3"]
    assert T5.main(argv) == 0
    assert seen["overrides"] == {"batch_size": 8, "backbone": "small", "epochs": 1, "limit_steps": 0, "max_failures": 3}
    assert T5.main(["--out", str(tmp_path)]) == 0 and seen["overrides"] == {}  # nothing given: the preset's settings
    data = StudyData("r", "r/train.txt", "r", "r/test.csv", "r/vggss.json")
    keys = [T5.Runner(tmp_path, data, dict(T5.PRESETS["smoke"].train, **o), "cpu", 0, progress=False)
            ._cache_entry("reference", 0.0, 0, data.train_list, [data.test_list])[2] for o in ({}, {"limit_steps": 2})]
    assert keys[1]["config"]["limit_steps"] == 2 and keys[0] != keys[1]  # a cached run of other settings is not reused


def test_a_cached_result_from_before_a_config_field_existed_is_reused_at_its_default(tmp_path):
    """A result cached before a config field was added (its key lacks the field) is the run of the field's
    default, as a resumed checkpoint's config is (TrainConfig.from_dict); another value is another run."""
    data = StudyData("r", "r/train.txt", "r", "r/test.csv", "r/vggss.json")
    spec = ("reference", 0.0, 0, data.train_list, (data.test_list,), "")
    at_224 = {k: v for k, v in T5.PRESETS["smoke"].train.items() if k != "image_size"}  # the field's default
    runner = T5.Runner(tmp_path, data, at_224, "cpu", 0, progress=False)
    path, _, key = runner._cache_entry(*spec)
    old_key = {"config": {k: v for k, v in key["config"].items() if k != "image_size"}, "tests": key["tests"]}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": old_key, "results": {"marker": 1}}))
    assert runner._cached(*spec) == {"marker": 1}
    other = T5.Runner(tmp_path, data, dict(at_224, image_size=112), "cpu", 0, progress=False)
    assert other._cached(*spec) is None
    path.write_text(json.dumps({"key": {"config": dict(old_key["config"], no_such_field=1), "tests": key["tests"]},
                                "results": {"marker": 1}}))
    assert runner._cached(*spec) is None  # a key this code cannot read is not a cached result of this run
    path.write_text(json.dumps({"key": old_key, "results": {"marker": 1}})[:40])  # cut short
    assert runner._cached(*spec) is None  # trained again, not a JSONDecodeError


def test_help_shows_the_defaults_and_the_overrides():
    text = _table5("--help").stdout
    for flag in ("--batch-size", "--backbone", "--epochs", "--limit-steps", "--max-failures", "--train-root"):
        assert flag in text
    assert "(default: default)" in text and "(default: cpu)" in text


@pytest.mark.parametrize("argv, fragments", [
    (["--batch-size", "0"], ["batch_size", "got 0"]),
    (["--train-root", "somewhere"], ["real data needs all of"]),
    (["--studies", "noise", "--noise-margins", "-0.2"], ["--noise-margins: expected 0 among the margins"]),
])
def test_user_errors_are_one_line(tmp_path, argv, fragments):
    _assert_one_line_error(_table5(*argv, "--out", tmp_path / "out"), *fragments)
    assert not (tmp_path / "out").exists()  # nothing half-written


def _subset(tmp_path, bad_ids=(), n_train=8, n_test=4):
    """A real-data layout on a subset of the smoke data set (``n_train`` training, ``n_test`` test clips)."""
    root = Path(T5.embedded_data("smoke").train_root)
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{i}\n" for i in bad_ids) + "".join((root / "train.txt").read_text().splitlines(True)[:n_train]))
    test = tmp_path / "test.csv"
    test.write_text("".join((root / "test.csv").read_text().splitlines(True)[:n_test]))
    return ["--train-root", root, "--train-list", train, "--test-root", root, "--test-list", test,
            "--annotations", root / "vggss.json", "--seeds", "0", "--studies", "table5", "--no-progress"]


def test_a_worker_error_reaches_the_main_process_as_one_line(tmp_path):
    proc = _table5(*_subset(tmp_path, bad_ids=("nope1", "nope2", "nope3")), "--epochs", "1", "--limit-steps", "1",
                   "--batch-size", "4", "--backbone", "small", "--jobs", "2", "--out", tmp_path / "out")
    _assert_one_line_error(proc, "3 of 11 clips missing or broken", "nope1", "--write-clean", "--max-failures")


@pytest.mark.slow
def test_real_data_subset_smoke_run(tmp_path):
    """Issue 15's subset smoke run of the real-data study: the paper's protocol with every run shrunk by
    the overrides (recorded in the JSON), a curves figure per run and for the study."""
    out = tmp_path / "out"
    proc = _table5(*_subset(tmp_path), "--epochs", "1", "--limit-steps", "1", "--batch-size", "4",
                   "--backbone", "small", "--jobs", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads((out / "table5.json").read_text())
    assert payload["overrides"] == {"batch_size": 4, "backbone": "small", "epochs": 1, "limit_steps": 1}
    assert payload["train"] == dict(T5.REAL_TRAIN, batch_size=4, backbone="small", epochs=1, limit_steps=1)
    assert payload["data"]["source"].startswith("real:") and payload["n_test"] == 4
    assert len(payload["rows"]) == len(T5.TABLE5_ROWS) + 2
    assert (out / "curves.png").exists()
    for model, margin in T5.TABLE5_ROWS:
        config = json.loads((out / "runs" / T5.run_name(model, margin, 0) / "config.json").read_text())
        assert (config["limit_steps"], config["backbone"]) == (1, "small")


def test_study_curves_figure(tmp_path):
    runs = []
    for model, margin in T5.TABLE5_ROWS:
        d = tmp_path / T5.run_name(model, margin, 0)
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 5.0 / e}) + "\n" for e in (1, 2, 3)))
        runs.append((model, margin, 0, d))
    plot_study_curves(runs + [("lvs", 0.0, 1, tmp_path / "missing")], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="expected runs with a metrics.jsonl"):
        plot_study_curves([("lvs", 0.0, 1, tmp_path / "missing")], tmp_path / "none.png")


def test_negatives_scope_primary_runs_only_the_primary_contrast_cells():
    from marginnce_kit.studies import negatives as NG

    full = PRESETS["full"]
    primary = replace(full, negatives_scope="primary")
    cells = NG._cells(primary, primary.negatives_scope)
    ks = (min(full.negatives_classes), max(full.negatives_classes))
    assert sorted(cells) == sorted(("reference", k, r, m, "factorial") for k in ks for r in full.negatives_rates
                                   for m in (0.0, -0.2))
    assert set(cells) < set(NG._cells(full))
    with_controls = NG._cells(full, "primary+controls")
    assert set(with_controls) - set(cells) == {c for c in NG._cells(full) if c[0] == "reference" and c[4] != "factorial"}
    assert len(with_controls) == len(cells) + 4  # the default data set and twice the clips, at m = 0 and -0.2
    assert NG.plan_document(primary, 64) == NG.plan_document(full, 64)  # the committed plan does not change
    with pytest.raises(ValueError, match="negatives_scope: expected one of"):
        replace(full, negatives_scope="some")
    assert StudyPreset.from_dict(primary.to_dict()) == primary
