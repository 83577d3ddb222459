"""The benchmark suite runs end to end on tiny sizes, and its upstream-style formulations are the
same losses as the package's (so the speed-ups compare like with like)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import run, upstream_style
from marginnce_loss import LocalizationMarginNCE

from .oracles import normalized_features, trained_like_features


@pytest.mark.parametrize("margin", [0.0, -0.2])
def test_upstream_style_losses_equal_the_package(margin):
    img, aud = trained_like_features(6, 16, 5, 5, 3, dtype=torch.float64)
    ours = LocalizationMarginNCE("max", margin=margin, tau=0.03, symmetric=True, backend="eager")(img, aud)
    torch.testing.assert_close(upstream_style.ezvsl_loss(img, aud, 0.03, margin), ours, rtol=1e-10, atol=1e-12)
    img, aud = normalized_features(6, 16, 5, 5, 4)
    ours = LocalizationMarginNCE("thresholded", margin=margin, tau=0.07, backend="eager")(img, aud)
    torch.testing.assert_close(upstream_style.eq1_loss(img, aud, 0.65, 0.03, 0.07, margin), ours, rtol=1e-10, atol=1e-12)


def test_floor_products_have_the_formulation_shapes():
    one = run.floor_function("max-MIL", 4, 8, 9, torch.device("cpu"))()
    assert one.shape == (36, 4)
    three = run.floor_function("eq1", 4, 8, 9, torch.device("cpu"))()
    assert [t.shape for t in three] == [(36, 4), (36, 8), (4, 8)]  # alpha, grad X, grad A


def test_peak_bytes_counts_what_is_alive_at_once():
    n = 1 << 18  # float32: 1 MiB

    def two_at_once():
        a = torch.ones(n)
        b = torch.ones(n)
        return float((a + b).sum())  # a, b and a + b alive together

    peak = run.peak_bytes(two_at_once, torch.device("cpu"))
    assert 3 * 4 * n <= peak < 4 * 4 * n


def test_device_name():
    name = run.device_name(torch.device("cpu"))
    assert name.startswith("cpu-") and name == name.lower() and " " not in name


@pytest.mark.slow
def test_run_writes_tables_and_numbers(tmp_path):
    pytest.importorskip("torchvision")
    argv = [
        "--batch-sizes", "4", "6", "--spatial", "3", "--channels", "16", "--repeats", "3", "--no-compiled",
        "--train-batch", "2", "--train-image", "32", "--train-spec", "32", "24", "--train-repeats", "1",
        "--threads", "1", "--out", str(tmp_path), "--name", "smoke",
        "--scale-sizes", "3:8,12,16", "--calibration-batch", "6", "--upstream-cap-gib", "1e-5", "--scale-budget", "0",
        "--memory-budget-gib", "0.01", "--profile-case", "max-MIL:6:3",
    ]
    threads = torch.get_num_threads()
    result = run.main(argv)
    assert torch.get_num_threads() == threads  # restored
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["meta"]["device"] == run.device_name(torch.device("cpu"))
    rows = saved["losses"]
    assert {(r["formulation"], r["B"], r["variant"]) for r in rows} == {
        (f, b, v) for f in ("max-MIL", "eq1") for b in (4, 6) for v in ("upstream", "eager", "floor")
    } | {("eq1", b, "eager-rows") for b in (4, 6)}  # one thread: eq. 1's other product choice too
    for r in rows:
        assert r["median_ms"] > 0 and len(r["times_ms"]) == r["repeats"] >= 3
        if r["variant"].startswith("eager"):
            assert r["matches_upstream"] is True
        if r["variant"] != "floor":  # at least the two gradients are allocated during the call
            grads = 4 * (r["B"] * r["C"] * r["H"] * r["W"] + r["B"] * r["C"])
            assert r["peak_MB"] * 2**20 >= grads
    for r in rows:
        if r["variant"] in ("eager", "upstream"):  # the loss's own memory: the peak less the gradients
            grads = 4 * (r["B"] * r["C"] * r["H"] * r["W"] + r["B"] * r["C"])
            assert r["loss_MB"] * 2**20 == pytest.approx(r["peak_MB"] * 2**20 - grads)
        if r["variant"] == "eager":
            q1, q3 = r["speedup_quartiles"]
            assert q1 <= r["speedup_vs_upstream"] <= q3
    scale = saved["scale"]
    assert {(r["formulation"], r["B"], r["variant"]) for r in scale["rows"]} == {
        (f, b, v) for f in ("max-MIL", "eq1") for b in (8, 12, 16) for v in ("upstream", "ours (default)")
    }
    for r in scale["rows"]:
        if r["variant"] == "upstream":  # the cap is below every size: upstream's rows are its model's
            assert r["source"] == "model" and r["median_ms"] is None and r["loss_MB"] > 0
        else:
            assert r["source"] == "measured" and r["median_ms"] > 0 and r["peak_MB"] > r["loss_MB"]
    for r in scale["largest_batch"]:
        assert r["upstream_B"] > 16 and r["ours_B"] > 16 and r["ours_fit_points"] == [12, 16]
        budget = 0.01 * 2**30  # the estimate is the largest B whose modelled total fits the budget
        per_b = 8 * (9 * 16 + 16)
        up = lambda b, r=r, per_b=per_b: r["upstream_bytes_per_map_element"] * b * b * 9 + per_b * b  # noqa: E731
        assert up(r["upstream_B"]) <= budget < up(r["upstream_B"] + 1)
    prof = saved["profile"]
    assert set(prof["variants"]) == {"upstream", "ours (default)"}
    assert all(v["ops"] and v["total_ms_per_step"] > 0 for v in prof["variants"].values())
    assert [t["variant"] for t in saved["train_step"]] == ["upstream", "eager"]
    assert all(0 < t["loss_share"] < 1 for t in saved["train_step"])
    table = (tmp_path / "smoke.md").read_text()
    assert "| 6 | 3x3 | eager |" in table and "Loss share" in table and "## Scale" in table and "## Profile" in table
    assert result["meta"]["command"].startswith("python -m benchmarks.run --batch-sizes 4 6")
